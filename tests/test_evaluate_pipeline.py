"""Evaluation stages on a small SynthFundus set: extractor, cached features, quality, semantic, measure."""

import json
import logging

import numpy as np
import pandas as pd
import pytest
import torch

from fairdiffusion import models
from fairdiffusion.cli import main
from fairdiffusion.data import synthetic
from fairdiffusion.errors import FairDiffError
from fairdiffusion.evaluate import equity, extractor, features, images, quality

ATTRIBUTES = {"race": ["Asian", "Black", "White"], "gender": ["Female", "Male"],
              "ethnicity": ["Non-Hispanic", "Hispanic"]}
LABELS = {k: list(v) for k, v in synthetic.LABELS.items()}
DATASET = {"source": "synthetic", "resolution": 32, "attributes": ATTRIBUTES, "labels": LABELS,
           "synthetic": {"n_train": 240, "n_val": 20, "n_test": 120, "seed": 0, "difficulty": 1.0}}
EVALUATE = {"extractor": "domain", "inception_weights": None, "alpha": 1.0, "kid_subset_size": 100,
            "is_label": None, "bootstrap": 50, "matched_n": None, "matched_draws": 4,
            "image_format": "png",
            "classifier": {"epochs": 2, "batch_size": 32, "learning_rate": 0.003}}


def write_samples(folder, n, seed):
    """A stand-in for a run's samples folder: SynthFundus images + prompts.csv."""
    from PIL import Image

    meta, imgs = synthetic.generate(n, 32, seed)
    rows = meta[[*ATTRIBUTES, *LABELS, "prompt"]].copy()
    rows.insert(0, "id", [f"s{i}" for i in range(n)])
    rows.insert(1, "image", [f"{i:04d}.png" for i in range(n)])
    folder.mkdir(parents=True)
    for name, img in zip(rows["image"], imgs):
        Image.fromarray(img).save(folder / name)
    rows.to_csv(folder / "prompts.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("evaluate")
    data = root / "data"
    frame = synthetic.build("toy", DATASET, data)
    frame.to_csv(data / "manifest.csv", index=False)
    ds, ev = json.dumps(DATASET), json.dumps(EVALUATE)
    assert main(["extractor", "--manifest", str(data / "manifest.csv"), "--dataset", ds,
                 "--evaluate", ev, "--threads", "1", "--out", str(root / "ext")]) == 0
    samples = write_samples(root / "samples" / "test", 120, seed=5)
    for name, table, split in (("real", data / "manifest.csv", "test"),
                               ("train", data / "manifest.csv", "train"), ("gen", samples, None)):
        args = ["features", "--table", str(table), "--dataset", ds, "--evaluate", ev,
                "--extractor-dir", str(root / "ext"), "--out", str(root / f"{name}.safetensors")]
        assert main(args + (["--split", split] if split else [])) == 0
    return {"root": root, "manifest": data / "manifest.csv", "samples": samples, "ds": ds, "ev": ev}


def rows_and_images(env, which):
    if which == "real":
        rows = images.read_table(env["manifest"], "test", ATTRIBUTES, LABELS)
    else:
        rows = images.read_table(env["samples"], None, ATTRIBUTES, LABELS)
    return rows, models.read_images(rows.attrs["source"], rows)


def test_non_rgb_sample_is_refused_not_converted(env, tmp_path, capsys):
    """Evaluation reads images with the training stages' loader: a grey image in a samples
    folder is an error naming it, as in a manifest, not silently converted to RGB."""
    import shutil

    from PIL import Image

    samples = tmp_path / "samples"
    shutil.copytree(env["samples"], samples)
    Image.open(samples / "0001.png").convert("L").save(samples / "0001.png")
    out = tmp_path / "gen.safetensors"
    assert main(["features", "--table", str(samples), "--dataset", env["ds"], "--evaluate",
                 env["ev"], "--extractor-dir", str(env["root"] / "ext"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "0001.png: image is L 32x32, expected RGB" in err and "\n" not in err
    assert not out.exists()


def test_extractor_and_classifier_are_identical_in_a_new_process(env, tmp_path):
    """torch seeds every process at random: the initial weights must come from the job's seed,
    or a rerun of the same job (a resumed workflow) gives another extractor and other tables."""
    import subprocess
    import sys

    cli = [sys.executable, "-m", "fairdiffusion.cli"]
    again = subprocess.run([*cli, "extractor", "--manifest", str(env["manifest"]), "--dataset",
                            env["ds"], "--evaluate", env["ev"], "--threads", "1", "--out",
                            str(tmp_path / "ext")], capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert ((tmp_path / "ext" / "model.safetensors").read_bytes()
            == (env["root"] / "ext" / "model.safetensors").read_bytes())
    outs = []
    for run in ("a", "b"):
        out = tmp_path / run / "semantic.csv"
        done = subprocess.run([*cli, "semantic", "--train", str(env["samples"]), "--manifest",
                               str(env["manifest"]), "--dataset", env["ds"], "--evaluate",
                               env["ev"], "--name", "toy", "--method", "m", "--seed", "0",
                               "--threads", "1", "--predictions",
                               str(tmp_path / run / "predictions.csv"), "--out", str(out)],
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_extractor_folder_records_standardisation_and_is_head(env):
    config = json.loads((env["root"] / "ext" / "config.json").read_text())
    assert config["is_label"] == "vision_loss"  # the label with the most classes
    assert len(config["feature_mean"]) == len(config["feature_std"]) == 64
    feats, ids, tag, layers = features.load(env["root"] / "real.safetensors")
    assert tag.startswith("domain@") and len(tag) == len("domain@") + 8
    assert ids == rows_and_images(env, "real")[0]["id"].tolist()
    assert layers["isc"] == "logits" and feats["logits"].shape == (120, 4)


def test_cached_metrics_equal_torch_fidelity_end_to_end(env):
    from torch_fidelity import calculate_metrics

    extractor.register()
    extractor.register()  # guarded: a second registration is harmless
    gen_rows, gen = rows_and_images(env, "gen")
    real_rows, real = rows_and_images(env, "real")
    kw = quality.fidelity_kwargs(len(gen), len(real), EVALUATE["kid_subset_size"])
    reference = calculate_metrics(
        input1=images.UInt8Images(gen), input2=images.UInt8Images(real), fid=True, kid=True,
        isc=True, prc=True, feature_extractor=extractor.DOMAIN,
        feature_extractor_weights_path=str(env["root"] / "ext"), cuda=False, cache=False,
        verbose=False, save_cpu_ram=True, kid_subset_size=kw["kid_subset_size"])
    g, _, _, layers = features.load(env["root"] / "gen.safetensors")
    r, _, _, _ = features.load(env["root"] / "real.safetensors")
    ours = quality.compute(g, r, layers, EVALUATE["kid_subset_size"])
    pairs = {"FID": "frechet_inception_distance", "KID": "kernel_inception_distance_mean",
             "IS": "inception_score_mean", "precision": "precision", "recall": "recall"}
    for metric, key in pairs.items():
        # KID: the same float32 kernels summed in another order (in float64 they agree to 1e-10,
        # test_kid_of_all_subsets_at_once_equals_torch_fidelitys_kid)
        rel = 1e-5 if metric == "KID" else 1e-6
        assert ours[metric][0] == pytest.approx(reference[key], rel=rel, abs=1e-9), metric


@pytest.mark.parametrize("kernel", ["poly", "rbf"])
def test_kid_of_all_subsets_at_once_equals_torch_fidelitys_kid(kernel):
    from torch_fidelity.metric_kid import kid_features_to_metric

    gen = torch.randn(230, 16, generator=torch.Generator().manual_seed(0)) + 0.3
    real = torch.randn(170, 16, generator=torch.Generator().manual_seed(1))
    kw = {**quality.fidelity_kwargs(len(gen), len(real), 60), "kid_kernel": kernel}
    for dtype, tolerance in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        reference = kid_features_to_metric(gen.to(dtype), real.to(dtype), **kw)
        for chunk in (1024, 7):  # one block, and row chunks that do not divide the sets
            mean, std = quality.kid(gen.to(dtype), real.to(dtype), kw, chunk=chunk)
            assert mean == pytest.approx(reference["kernel_inception_distance_mean"], rel=tolerance)
            assert std == pytest.approx(reference["kernel_inception_distance_std"], rel=tolerance)
    with pytest.raises(FairDiffError, match="KID subset size 200 exceeds the smaller set"):
        quality.kid(gen, real, {**kw, "kid_subset_size": 200})


def test_bootstrap_fid_is_torch_fidelitys_fid_of_each_resample(env):
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric

    g, _, _, layers = features.load(env["root"] / "gen.safetensors")
    r, _, _, _ = features.load(env["root"] / "real.safetensors")
    gen, real = g[layers["fid"]], r[layers["fid"]]
    rng = np.random.default_rng(0)
    gi, ri = rng.integers(0, len(gen), (3, len(gen))), rng.integers(0, len(real), (3, len(real)))
    ident = np.arange(len(gen))[None], np.arange(len(real))[None]
    batched = quality.fid_batch(gen, real, np.concatenate([ident[0], gi]),
                                np.concatenate([ident[1], ri]))
    for b, (a, c) in enumerate([(ident[0][0], ident[1][0]), *zip(gi, ri)]):
        one = fid_statistics_to_metric(
            fid_featuresdict_to_statistics({"f": gen[torch.from_numpy(a)]}, "f"),
            fid_featuresdict_to_statistics({"f": real[torch.from_numpy(c)]}, "f"), verbose=False)
        assert batched[b] == pytest.approx(one["frechet_inception_distance"], rel=1e-6), b
    lower, upper = quality.fid_ci(gen, real, 200, seed=3)
    assert (lower, upper) == quality.fid_ci(gen, real, 200, seed=3)   # seeded
    assert lower < upper and lower < quality.compute(g, r, layers, 100, ("FID",))["FID"][0] * 2
    context = {"dataset": "toy", "method": "m", "seed": 0, "extractor": "domain"}
    rows_g, _ = rows_and_images(env, "gen")
    rows_r, _ = rows_and_images(env, "real")
    out = pd.DataFrame(quality.evaluate(g, rows_g, r, rows_r, ATTRIBUTES, layers, EVALUATE,
                                        context))
    fid = out[out.metric == "FID-raw"]
    assert (fid["lower"] < fid["upper"]).all() and out[out.metric == "KID-raw"]["lower"].isna().all()


def test_group_metrics_equal_metrics_of_the_group_alone(env, tmp_path):
    gen_rows, gen = rows_and_images(env, "gen")
    real_rows, real = rows_and_images(env, "real")
    g, _, tag, layers = features.load(env["root"] / "gen.safetensors")
    r, _, _, _ = features.load(env["root"] / "real.safetensors")
    context = {"dataset": "toy", "method": "m", "seed": 0, "extractor": tag}
    out = pd.DataFrame(quality.evaluate(g, gen_rows, r, real_rows, ATTRIBUTES, layers,
                                        {**EVALUATE, "bootstrap": 0}, context))
    fe, _, _ = extractor.open_extractor("domain", EVALUATE, env["root"] / "ext", cuda=False)
    # the group's images alone, through the network again
    gm, rm = gen_rows["gender"].to_numpy() == "Male", real_rows["gender"].to_numpy() == "Male"
    alone = quality.compute(features.extract(gen[gm], fe), features.extract(real[rm], fe), layers, 100)
    for metric, (value, _) in alone.items():
        got = out[(out.metric == metric + "-raw") & (out.attribute == "gender")
                  & (out.group == "Male")]["value"]
        assert got.item() == pytest.approx(value, rel=1e-5, abs=1e-7), metric
    # ES-FID per attribute is the documented formula over the group rows, matched and raw
    for fid in ("FID", "FID-raw"):
        groups = out[(out.metric == fid) & (out.attribute == "race")]["value"].to_list()
        overall = out[(out.metric == fid) & (out.attribute == "all")]["value"].item()
        es = out[(out.metric == f"ES-{fid}") & (out.attribute == "race")]["value"].item()
        assert es == pytest.approx(equity.equity_scaled(overall, groups, 1.0, higher_is_better=False))
        assert es >= overall


def test_small_groups_are_skipped_with_a_warning(env, caplog):
    gen_rows, _ = rows_and_images(env, "gen")
    real_rows, _ = rows_and_images(env, "real")
    g, _, tag, layers = features.load(env["root"] / "gen.safetensors")
    r, _, _, _ = features.load(env["root"] / "real.safetensors")
    gen_rows = gen_rows.copy()
    gen_rows.loc[gen_rows.index[:200], "ethnicity"] = "Non-Hispanic"  # no generated Hispanic image
    with caplog.at_level(logging.WARNING):
        out = pd.DataFrame(quality.evaluate(g, gen_rows, r, real_rows, ATTRIBUTES, layers,
                                            EVALUATE, {"extractor": tag}))
    assert "Hispanic" not in set(out["group"])
    assert "ethnicity=Hispanic" in caplog.text
    assert not out["value"].isna().any()


def test_ids_out_of_order_and_missing_inception_weights_are_errors(env, tmp_path):
    gen_rows, _ = rows_and_images(env, "gen")
    with pytest.raises(FairDiffError, match="do not match"):
        quality.aligned(str(env["root"] / "gen.safetensors"), gen_rows.iloc[::-1].reset_index(drop=True), "x")
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(FairDiffError, match="evaluate.inception_weights.*nowhere.pth"):
        extractor.open_extractor("inception-v3-compat", {"inception_weights": str(missing)}, None, False)


def test_quality_semantic_measure_commands_write_tidy_csvs(env):
    root, ds, ev = env["root"], env["ds"], env["ev"]
    assert main(["quality", "--generated", str(root / "gen.safetensors"), "--generated-table",
                 str(env["samples"]), "--real", str(root / "real.safetensors"), "--reference",
                 str(root / "train.safetensors"), "--manifest",
                 str(env["manifest"]), "--dataset", ds, "--evaluate", ev, "--name", "toy",
                 "--method", "baseline", "--seed", "0", "--out", str(root / "quality.csv")]) == 0
    train = write_samples(root / "samples" / "train", 200, seed=6)
    assert main(["semantic", "--train", str(train), "--manifest", str(env["manifest"]),
                 "--dataset", ds, "--evaluate", ev, "--name", "toy", "--method", "baseline",
                 "--seed", "0", "--threads", "1", "--out", str(root / "semantic.csv"),
                 "--predictions", str(root / "predictions.csv")]) == 0
    assert main(["measure", "--table", str(env["manifest"]), "--split", "test", "--dataset", ds,
                 "--evaluate", ev, "--name", "toy", "--method", "real", "--seed", "0",
                 "--out", str(root / "measured.csv"), "--per-image", str(root / "per_image.csv")]) == 0
    contract = ["dataset", "method", "seed", "metric", "task", "attribute", "group", "extractor", "value"]
    for name in ("quality", "semantic", "measured"):
        out = pd.read_csv(root / f"{name}.csv", keep_default_na=False)
        assert list(out.columns[:9]) == contract
        assert (out.loc[out.metric.str.startswith("ES-"), "group"] == "all").all()
    quality_rows = pd.read_csv(root / "quality.csv")
    g, _, _, layers = features.load(root / "gen.safetensors")
    r, _, _, _ = features.load(root / "real.safetensors")
    t, _, _, _ = features.load(root / "train.safetensors")
    mifid = quality_rows[quality_rows.metric == "MiFID"]
    assert mifid["value"].item() == pytest.approx(quality.mifid(g["features"], r["features"],
                                                                t["features"]))
    assert {"FID", "FID-raw", "FID-inf", "ES-FID", "ES-FID-raw"} <= set(quality_rows.metric)
    sem = pd.read_csv(root / "semantic.csv")
    auc = sem[(sem.metric == "AUC") & (sem.attribute == "all")]
    assert sorted(auc["task"]) == sorted(LABELS)
    assert ((auc["lower"] <= auc["value"]) & (auc["value"] <= auc["upper"])).all()
    predictions = pd.read_csv(root / "predictions.csv")
    assert len(predictions) == 120
    probs = predictions[[f"cup_disc:{c}" for c in LABELS["cup_disc"]]].to_numpy()
    assert np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    measured = pd.read_csv(root / "measured.csv")
    per_image = pd.read_csv(root / "per_image.csv")
    right = (per_image["cup_disc:measured"] == per_image["cup_disc:intended"]).mean()
    got = measured[(measured.task == "cup_disc") & (measured.attribute == "all") & (measured.metric == "accuracy")]
    assert got["value"].item() == pytest.approx(right)


def test_quality_of_the_real_training_images_is_the_perfect_generator_row(env, caplog):
    """--generated-split puts a manifest split in the generated role: the groups come from the
    manifest, the values equal evaluate() on those features, and there is no MiFID (the set
    would be its own memorization reference: distance 0)."""
    root = env["root"]
    out = root / "reference_quality.csv"
    with caplog.at_level("INFO"):
        assert main(["quality", "--generated", str(root / "train.safetensors"), "--generated-table",
                     str(env["manifest"]), "--generated-split", "train", "--real",
                     str(root / "real.safetensors"), "--reference", str(root / "train.safetensors"),
                     "--manifest", str(env["manifest"]), "--dataset", env["ds"], "--evaluate",
                     env["ev"], "--name", "toy", "--method", "real", "--seed", "0",
                     "--out", str(out)]) == 0
    assert "no MiFID" in caplog.text
    rows = pd.read_csv(out, keep_default_na=False)
    assert "MiFID" not in set(rows.metric) and set(rows.method) == {"real"}
    train_rows = images.read_table(env["manifest"], "train", ATTRIBUTES, LABELS)
    real_rows = images.read_table(env["manifest"], "test", ATTRIBUTES, LABELS)
    t, _, tag, layers = features.load(root / "train.safetensors")
    r, _, _, _ = features.load(root / "real.safetensors")
    expected = pd.DataFrame(quality.evaluate(t, train_rows, r, real_rows, ATTRIBUTES, layers,
                                             json.loads(env["ev"]), {"dataset": "toy"}, 0))
    for metric in ("FID", "FID-raw", "ES-FID"):
        got = rows[(rows.metric == metric) & (rows.attribute == "race")]["value"].to_numpy()
        want = expected[(expected.metric == metric) & (expected.attribute == "race")]["value"]
        assert got == pytest.approx(want.to_numpy())
    n_train = (train_rows["race"] == "Asian").sum()
    raw_asian = rows[(rows.metric == "FID-raw") & (rows.group == "Asian")]
    assert int(raw_asian["n"].item()) == n_train   # the training images' group, not the samples'


def _quality_inputs(env):
    gen_rows, _ = rows_and_images(env, "gen")
    real_rows, _ = rows_and_images(env, "real")
    g, _, tag, layers = features.load(env["root"] / "gen.safetensors")
    r, _, _, _ = features.load(env["root"] / "real.safetensors")
    return g, gen_rows, r, real_rows, layers, {"extractor": tag}


def test_quality_matched_rows_share_one_n_and_equal_raw_where_a_group_is_whole(env):
    g, gen_rows, r, real_rows, layers, context = _quality_inputs(env)
    # 11 real Asian test images: keep 11 generated ones too, so that group is whole on both sides
    n_real = int((real_rows["race"] == "Asian").sum())
    drop = np.flatnonzero(gen_rows["race"] == "Asian")[n_real:]
    keep = np.setdiff1d(np.arange(len(gen_rows)), drop)
    g, gen_rows = quality.take(g, keep), gen_rows.iloc[keep].reset_index(drop=True)
    out = pd.DataFrame(quality.evaluate(g, gen_rows, r, real_rows, ATTRIBUTES, layers,
                                        {**EVALUATE, "bootstrap": 0}, context, seed=1))
    raw = out[out.metric == "FID-raw"].set_index(["attribute", "group"])
    matched = out[out.metric.isin(["FID", "KID", "IS", "precision", "recall", "F-score"])]
    assert (matched["n"] == n_real).all() and len(matched) == 6 * len(raw)
    fid = out[out.metric == "FID"].set_index(["attribute", "group"])
    assert (fid["lower"] <= fid["value"]).all() and (fid["value"] <= fid["upper"]).all()
    # the overall set drawn down to the smallest group's size: FID's small-sample bias
    assert fid.loc[("all", "all"), "value"] > raw.loc[("all", "all"), "value"]
    # every draw of the whole group is the whole group: matched = raw, no spread over draws
    asian = fid.loc[("race", "Asian")]
    assert asian["value"] == pytest.approx(raw.loc[("race", "Asian"), "value"], rel=1e-6)
    assert asian["upper"] - asian["lower"] == pytest.approx(0, abs=1e-6)
    assert fid.loc[("race", "White"), "upper"] > fid.loc[("race", "White"), "lower"]
    # ES and gaps from the matched values; FID-inf for every comparison
    race = fid.loc["race"]["value"]
    es = out[(out.metric == "ES-FID") & (out.attribute == "race")]["value"].item()
    assert es == pytest.approx(equity.equity_scaled(fid.loc[("all", "all"), "value"], race, 1.0,
                                                    higher_is_better=False))
    gap = out[(out.metric == "FID-gap") & (out.attribute == "race")]["value"].item()
    assert gap == pytest.approx(race.max() - race.min())
    assert len(out[out.metric == "FID-inf"]) == len(raw)
    again = pd.DataFrame(quality.evaluate(g, gen_rows, r, real_rows, ATTRIBUTES, layers,
                                          {**EVALUATE, "bootstrap": 0}, context, seed=1))
    pd.testing.assert_frame_equal(out, again)  # seeded draws


def test_quality_matched_n_is_used_and_a_too_large_one_is_an_error(env):
    g, gen_rows, r, real_rows, layers, context = _quality_inputs(env)
    settings = {**EVALUATE, "bootstrap": 0, "matched_n": 10}
    out = pd.DataFrame(quality.evaluate(g, gen_rows, r, real_rows, ATTRIBUTES, layers, settings,
                                        context))
    assert (out[out.metric == "KID"]["n"] == 10).all()
    with pytest.raises(FairDiffError, match=r"evaluate.matched_n: 500 images exceed the smallest"):
        quality.evaluate(g, gen_rows, r, real_rows, ATTRIBUTES, layers,
                         {**settings, "matched_n": 500}, context)


def test_features_and_extractor_of_a_rotated_dataset_see_the_images_upright(env, tmp_path):
    """With options.rotate the stored images are turned; the extractor is trained on, and the
    features are extracted from, the images turned back: a copy of the data stored turned by
    -90 degrees gives the same extractor and the same features as the upright data."""
    from PIL import Image

    data = tmp_path / "data"
    manifest = pd.read_csv(env["manifest"], dtype=str, keep_default_na=False)
    for name in manifest["image"]:
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        Image.open(env["manifest"].parent / name).rotate(-90).save(data / name)
    manifest.to_csv(data / "manifest.csv", index=False)
    ds = json.dumps({**DATASET, "options": {"rotate": -90}})
    assert main(["extractor", "--manifest", str(data / "manifest.csv"), "--dataset", ds,
                 "--evaluate", env["ev"], "--threads", "1", "--out", str(tmp_path / "ext")]) == 0
    assert ((tmp_path / "ext" / "model.safetensors").read_bytes()
            == (env["root"] / "ext" / "model.safetensors").read_bytes())
    out = tmp_path / "real.safetensors"
    assert main(["features", "--table", str(data / "manifest.csv"), "--split", "test",
                 "--dataset", ds, "--evaluate", env["ev"], "--extractor-dir",
                 str(tmp_path / "ext"), "--out", str(out)]) == 0
    turned, _, _, _ = features.load(out)
    upright, _, _, _ = features.load(env["root"] / "real.safetensors")
    assert torch.equal(turned["features"], upright["features"])


def test_quality_jpeg_features_are_tagged_and_never_compared_with_png(env, tmp_path, capsys):
    root, ds = env["root"], env["ds"]
    ev = json.dumps({**EVALUATE, "image_format": "jpeg"})
    out = tmp_path / "real-jpeg.safetensors"
    assert main(["features", "--table", str(env["manifest"]), "--split", "test", "--dataset", ds,
                 "--evaluate", ev, "--extractor-dir", str(root / "ext"), "--out", str(out)]) == 0
    jpeg, _, tag, _ = features.load(out)
    png, _, png_tag, _ = features.load(root / "real.safetensors")
    assert tag == png_tag + "+jpeg75"
    assert not torch.equal(jpeg["features"], png["features"])
    args = ["quality", "--generated", str(root / "gen.safetensors"), "--generated-table",
            str(env["samples"]), "--real", str(out), "--reference", str(root / "train.safetensors"),
            "--manifest", str(env["manifest"]), "--dataset", ds, "--evaluate", ev, "--name", "toy",
            "--method", "m", "--seed", "0", "--out", str(tmp_path / "quality.csv")]
    assert main(args) == 2
    assert f"extractor {png_tag} differs from {out}'s {tag}" in capsys.readouterr().err
    assert not (tmp_path / "quality.csv").exists()
