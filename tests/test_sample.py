"""Sampling: per-image seeds, schedulers, prompts.csv, train-prompt selection, resume."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fairdiffusion import sample, train
from fairdiffusion.data import manifest
from fairdiffusion.errors import FairDiffError
from conftest import tiny_stack


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny dataset, base stack and a UNet trained for two steps (with EMA)."""
    root = tmp_path_factory.mktemp("sample")
    stack = tiny_stack(root, n_train=16, random_flip=False)
    cfg, ds, manifest_path, cache = stack.cfg, stack.ds, stack.manifest, stack.cache
    settings = {**cfg["train"], "max_steps": 2, "batch_size": 4}
    train.train(cache, str(root / "base"), ds, settings, "baseline", cfg["fair_bayes"], 0,
                root / "model", root / "checkpoints")
    settings = {**cfg["sample"], "num_inference_steps": 3, "batch_size": 4, "train_prompts": 5,
                "images_per_prompt": 2}
    return SimpleNamespace(root=root, ds=ds, manifest=manifest_path, base=str(root / "base"),
                           model=root / "model", settings=settings)


def test_image_seeds_are_stable_and_distinct():
    assert sample.image_seed(0, "sf_00001", 0) == sample.image_seed(0, "sf_00001", 0)
    seeds = {sample.image_seed(s, i, c) for s in (0, 1) for i in ("a", "b") for c in (0, 1)}
    assert len(seeds) == 8


def test_an_image_regenerated_alone_matches_the_batch(run):
    pipe = sample.load_pipeline(run.base, run.model, "ddim")
    prompts = list(manifest.read(run.manifest)["prompt"][:4])
    seeds = [sample.image_seed(0, str(i), 0) for i in range(4)]
    batch = sample.generate(pipe, prompts, seeds, 32, 3, 3.0)
    alone = sample.generate(pipe, prompts[2:3], seeds[2:3], 32, 3, 3.0)
    assert batch.shape == (4, 32, 32, 3) and batch.dtype == np.uint8
    assert np.abs(batch[2].astype(int) - alone[0].astype(int)).max() <= 2
    assert np.abs(batch[1].astype(int) - alone[0].astype(int)).max() > 2


@pytest.mark.parametrize("name", sorted(sample.SCHEDULERS))
def test_every_scheduler_generates(run, name):
    import json
    from pathlib import Path

    pipe = sample.load_pipeline(run.base, run.model, name)
    # `pipeline`: the scheduler stored with the base model, as the authors sample.
    stored = json.loads((Path(run.base) / "scheduler" / "scheduler_config.json").read_text())
    expected = stored["_class_name"] if name == "pipeline" else sample.SCHEDULERS[name][0]
    assert type(pipe.scheduler).__name__ == expected
    images = sample.generate(pipe, ["SLO fundus image"], [1], 32, 3, 2.0)
    assert images.shape == (1, 32, 32, 3)


def test_the_config_names_every_sampler(root):
    import yaml

    schema = yaml.safe_load((root / "workflow" / "schemas" / "config.schema.yaml").read_text())
    assert schema["$defs"]["sampler"]["enum"] == list(sample.SCHEDULERS)


def test_sample_weights_pick_the_ema_or_the_raw_unet(run, tmp_path):
    import shutil

    import torch
    from safetensors.torch import load_file

    for weights, folder in (("ema", "unet_ema"), ("raw", "unet")):
        # float16 asked for: a GPU would get it, the CPU stays at float32.
        pipe = sample.load_pipeline(run.base, run.model, "ddim", weights, "float16")
        stored = load_file(run.model / folder / "diffusion_pytorch_model.safetensors")
        assert torch.equal(pipe.unet.state_dict()["conv_in.weight"].float(),
                           stored["conv_in.weight"])
        if not torch.cuda.is_available():
            assert pipe.unet.dtype == torch.float32
    # The two are different weights (a run with EMA keeps both).
    assert not torch.equal(
        load_file(run.model / "unet" / "diffusion_pytorch_model.safetensors")["conv_in.weight"],
        load_file(run.model / "unet_ema" / "diffusion_pytorch_model.safetensors")[
            "conv_in.weight"])
    # A run trained without EMA: `ema` falls back to unet/, as documented.
    no_ema = tmp_path / "no_ema"
    shutil.copytree(run.model / "unet", no_ema / "unet")
    assert sample.unet_folder(no_ema, "ema") == no_ema / "unet"
    with pytest.raises(FairDiffError, match=r"no unet_ema/ or unet/ folder \(sample.weights: ema"):
        sample.unet_folder(tmp_path)
    with pytest.raises(FairDiffError, match=r"no unet/ folder \(sample.weights: raw"):
        sample.unet_folder(tmp_path / "empty", "raw")


def test_test_split_writes_pngs_and_prompts(run):
    out = run.root / "samples" / "test"
    sample.sample(run.base, run.model, run.manifest, "test", run.ds, run.settings, 0, out)
    prompts = pd.read_csv(out / "prompts.csv", dtype=str, keep_default_na=False)
    source = manifest.read(run.manifest)
    test = source[source["split"] == "test"]
    assert len(prompts) == 2 * len(test)
    for column in source.columns:
        if column not in ("id", "image"):
            assert column in prompts.columns
    assert sorted(prompts["source_id"].unique()) == sorted(test["id"])
    merged = prompts.merge(source, left_on="source_id", right_on="id", suffixes=("", "_src"))
    for column in ("prompt", "race", "cup_disc"):
        assert (merged[column] == merged[f"{column}_src"]).all()
    for name in prompts["image"]:
        assert Image.open(out / name).size == (32, 32)
    assert not (out.parent / ".test.partial").exists()
    # The two copies of a prompt are different images.
    first = prompts.groupby("source_id")["image"].apply(list).iloc[0]
    a, b = (np.asarray(Image.open(out / n)) for n in first)
    assert not np.array_equal(a, b)


def test_train_split_takes_a_seeded_subset(run):
    frame = manifest.read(run.manifest)
    a = sample.plan(frame, "train", run.settings, seed=0)
    b = sample.plan(frame, "train", run.settings, seed=0)
    c = sample.plan(frame, "train", run.settings, seed=1)
    assert len(a) == 5 and a["copy"].eq(0).all()
    assert list(a["source_id"]) == list(b["source_id"])
    assert list(a["source_id"]) != list(c["source_id"])
    assert set(a["source_id"]) <= set(frame.loc[frame["split"] == "train", "id"])


def test_resume_keeps_images_already_in_the_partial_folder(run):
    out = run.root / "samples" / "train"
    partial = out.parent / ".train.partial"
    marker = np.zeros((32, 32, 3), np.uint8)
    # An interrupted attempt with other settings: its images are not reused.
    other = {**run.settings, "guidance_scale": 7.0}
    sample.sample(run.base, run.model, run.manifest, "train", run.ds, other, 0, out)
    out.rename(partial)
    (partial / "prompts.csv").unlink()
    Image.fromarray(marker).save(partial / "000001.png")
    sample.sample(run.base, run.model, run.manifest, "train", run.ds, run.settings, 0, out)
    assert not np.array_equal(np.asarray(Image.open(out / "000001.png")), marker)
    # An interrupted attempt with the same settings: the images already there are kept.
    out.rename(partial)
    (partial / "prompts.csv").unlink()
    Image.fromarray(marker).save(partial / "000001.png")
    sample.sample(run.base, run.model, run.manifest, "train", run.ds, run.settings, 0, out)
    assert np.array_equal(np.asarray(Image.open(out / "000001.png")), marker)
    assert np.asarray(Image.open(out / "000000.png")).std() > 0
    assert len(pd.read_csv(out / "prompts.csv")) == 5
    # Same model and settings, other prompts in the manifest: images are named by position, so
    # none is reused.
    frame = pd.read_csv(run.manifest, dtype=str, keep_default_na=False)
    frame["prompt"] = frame["prompt"].to_numpy()[::-1]
    other_manifest = run.manifest.parent / "manifest_other_prompts.csv"
    frame.to_csv(other_manifest, index=False)
    out.rename(partial)
    (partial / "prompts.csv").unlink()
    Image.fromarray(marker).save(partial / "000001.png")
    sample.sample(run.base, run.model, other_manifest, "train", run.ds, run.settings, 0, out)
    assert not np.array_equal(np.asarray(Image.open(out / "000001.png")), marker)
