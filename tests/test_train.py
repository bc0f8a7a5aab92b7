"""Latent caching and UNet training: cache contents, seed pairing, resume, refusals, outputs."""

import json
import os
import shutil
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from fairdiffusion import latents, train
from fairdiffusion.data import manifest
from fairdiffusion.errors import FairDiffError
from conftest import tiny_stack


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny SynthFundus dataset, a base stack (VAE barely trained) and its train-split cache."""
    root = tmp_path_factory.mktemp("train")
    stack = tiny_stack(root, n_train=24, random_flip=True)
    cfg, ds, cache = stack.cfg, stack.ds, stack.cache
    settings = {**cfg["train"], "max_steps": 4, "batch_size": 4, "checkpoint_every": 2,
                "log_every": 1, "lr_warmup_steps": 2}
    return SimpleNamespace(root=root, ds=ds, cache=cache, base=str(root / "base"),
                           settings=settings, fair_bayes={**cfg["fair_bayes"], "time_window": 3})


def _train(run, name, method="baseline", seed=0, cache=None, **overrides):
    out = run.root / "models" / name
    train.train(cache or run.cache, run.base, run.ds, {**run.settings, **overrides}, method,
                run.fair_bayes, seed, out, run.root / "checkpoints" / name)
    return out


def test_cache_holds_rows_groups_and_prompt_states(run):
    tensors, meta = latents.read(run.cache)
    frame = manifest.read(run.root / "data" / "manifest.csv")
    frame = frame[frame["split"] == "train"].reset_index(drop=True)
    assert meta["ids"] == list(frame["id"])
    n = len(frame)
    assert tensors["latents"].shape[0] == tensors["latents_flipped"].shape[0] == n
    assert tensors["latents"].shape[1:] == (4, 16, 16)
    assert not torch.equal(tensors["latents"], tensors["latents_flipped"])
    for a, (attribute, groups) in enumerate(run.ds["attributes"].items()):
        names = [groups[i] for i in tensors["groups"][:, a].tolist()]
        assert names == list(frame[attribute])
    prompts = [meta["prompts"][i] for i in tensors["prompt_index"].tolist()]
    assert prompts == list(frame["prompt"])
    # The cached states are the ones the stock pipeline computes for the same prompts.
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(run.base)
    embeds, _ = pipe.encode_prompt(prompts[:2], "cpu", 1, False)
    assert torch.allclose(embeds, tensors["text"][tensors["prompt_index"][:2]], atol=1e-6)
    empty, _ = pipe.encode_prompt([""], "cpu", 1, False)
    assert torch.allclose(empty, tensors["empty_text"], atol=1e-6)
    # Latents are the posterior mean times the scaling factor, decodable by the pipeline's VAE.
    assert float(meta["scaling_factor"]) == pipe.vae.config.scaling_factor


def test_batch_order_is_a_pure_function_of_the_batch_index():
    order = train.BatchOrder(10, 4, seed=3)
    batches = [order(q) for q in range(5)]          # 20 draws = two full epochs
    first_two_epochs = torch.cat(batches).tolist()
    assert sorted(first_two_epochs[:10]) == list(range(10))
    assert sorted(first_two_epochs[10:20]) == list(range(10))
    fresh = train.BatchOrder(10, 4, seed=3)
    assert torch.equal(fresh(4), batches[4])        # no hidden state: resume lands on the same rows


def test_arms_share_data_noise_and_timesteps_for_a_seed(run):
    base = _train(run, "pair_baseline", "baseline", max_steps=2)
    rand = _train(run, "pair_random", "random", max_steps=2)
    other_seed = _train(run, "pair_seed1", "baseline", seed=1, max_steps=2)
    log_b = pd.read_csv(base / "train_log.csv")
    log_r = pd.read_csv(rand / "train_log.csv")
    log_s = pd.read_csv(other_seed / "train_log.csv")
    assert (log_r["method"] == "random").all() and (log_s["seed"] == 1).all()
    # Step 1's unweighted loss is computed before any update: same batch, noise and timesteps.
    assert log_b["loss"][0] == log_r["loss"][0]
    assert log_b["loss"][0] != log_s["loss"][0]
    # After one update the arms differ (random weights the loss, baseline does not).
    assert log_b["loss"][1] != log_r["loss"][1]


def test_group_robust_arms_train_in_the_same_hook(run):
    """balanced draws its own batches; reweighted and groupdro weight the shared ones. A batch
    of 12 of the 24 rows holds several race groups: with one group only, inverse-frequency
    weights are one constant, which gradient clipping and Adam's first step cancel."""
    logs = {m: pd.read_csv(_train(run, f"robust_{m}", m, max_steps=2, batch_size=12)
                           / "train_log.csv")
            for m in ("baseline", "reweighted", "groupdro", "balanced")}
    # step 1's unweighted loss: the same batch, noise and timesteps except for balanced
    assert logs["reweighted"]["loss"][0] == logs["groupdro"]["loss"][0] == \
        logs["baseline"]["loss"][0]
    assert logs["balanced"]["loss"][0] != logs["baseline"]["loss"][0]
    assert logs["reweighted"]["loss"][1] != logs["baseline"]["loss"][1]
    trajectory = pd.read_csv(run.root / "models" / "robust_groupdro" / "bo_trajectory.csv")
    q = trajectory[[c for c in trajectory.columns if c.startswith("q_race_")]]
    assert q.shape == (2, len(run.ds["attributes"]["race"]))
    assert q.iloc[0].tolist() == pytest.approx([1 / q.shape[1]] * q.shape[1])


def test_outputs_load_in_a_stock_pipeline(run):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    out = _train(run, "outputs", "fairdiffusion")
    for name in ("unet", "unet_ema"):
        unet = UNet2DConditionModel.from_pretrained(out / name)
        pipe = StableDiffusionPipeline.from_pretrained(run.base, unet=unet)
        image = pipe("SLO fundus image", num_inference_steps=1, height=32, width=32,
                     output_type="np").images
        assert image.shape == (1, 32, 32, 3) and np.isfinite(image).all()
    assert not torch.equal(
        load_file(out / "unet" / "diffusion_pytorch_model.safetensors")["conv_in.weight"],
        load_file(out / "unet_ema" / "diffusion_pytorch_model.safetensors")["conv_in.weight"])
    log = pd.read_csv(out / "train_log.csv")
    assert list(log.columns) == ["method", "seed", "step", "loss", "lr", "time"]
    assert log["step"].tolist() == [1, 2, 3, 4]
    # Constant LR after the linear warm-up.
    lr = run.settings["learning_rate"]
    assert log["lr"].tolist() == pytest.approx([lr / 2, lr, lr, lr])   # lr_warmup_steps = 2
    trajectory = pd.read_csv(out / "bo_trajectory.csv")
    # Each row names its run (the report reads these columns, not the path).
    for frame in (log, trajectory):
        assert list(frame.columns[:2]) == ["method", "seed"]
        assert (frame["method"] == "fairdiffusion").all() and (frame["seed"] == 0).all()
    assert (trajectory["kind"] == "step").sum() == 4
    assert (trajectory["kind"] == "bo_update").sum() == 1
    info = json.loads((out / "run_info.json").read_text())
    assert info["settings"]["method"] == "fairdiffusion"


def test_resume_with_different_settings_is_refused(run):
    _train(run, "refuse", max_steps=2)
    with pytest.raises(FairDiffError,
                       match=r"different training settings \(train.learning_rate\)"):
        _train(run, "refuse", max_steps=4, learning_rate=1e-2)


def test_keep_checkpoints_keeps_the_newest_and_may_change_on_resume(run):
    folder = run.root / "checkpoints" / "keep"
    _train(run, "keep", max_steps=3, checkpoint_every=1, keep_checkpoints=1)
    assert [p.name for p in sorted(folder.iterdir())] == ["checkpoint-0000003"]
    # How many are kept does not change what is computed: a resume with another count goes on.
    _train(run, "keep", max_steps=4, checkpoint_every=1, keep_checkpoints=3)
    assert [p.name for p in sorted(folder.iterdir())] == ["checkpoint-0000003",
                                                          "checkpoint-0000004"]
    info = json.loads((run.root / "models" / "keep" / "run_info.json").read_text())
    assert info["settings"]["resumed_from"].endswith("checkpoint-0000003")


def test_cache_of_another_split_is_refused(run):
    test_cache = run.root / "test_split.safetensors"
    latents.cache(run.base, run.root / "data" / "manifest.csv", "test", run.ds, False, test_cache)
    with pytest.raises(FairDiffError, match="a cache of the 'test' split"):
        _train(run, "wrong_split", cache=test_cache)


def test_checkpoint_past_max_steps_is_refused(run):
    _train(run, "shorter", max_steps=4)                  # checkpoints at steps 2 and 4
    with pytest.raises(FairDiffError, match=r"checkpoint at step 4 is past train.max_steps 2"):
        _train(run, "shorter", max_steps=2)


def test_non_finite_loss_stops_and_saves_nothing(run):
    tensors, meta = latents.read(run.cache)
    tensors["latents"][:] = float("inf")
    bad = run.root / "bad.safetensors"
    meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in meta.items()}
    save_file(tensors, str(bad), metadata=meta)
    out = run.root / "models" / "nan"
    with pytest.raises(FairDiffError, match="non-finite loss at step 0"):
        train.train(bad, run.base, run.ds, run.settings, "baseline", run.fair_bayes, 0, out,
                    run.root / "checkpoints" / "nan")
    assert not out.exists()


def _cli(run, name, steps):
    # log_every 3 against checkpoint_every 2: a checkpoint falls inside a log window, whose losses
    # must survive the resume for train_log.csv to match.
    settings = {**run.settings, "max_steps": steps, "log_every": 3}
    return [sys.executable, "-m", "fairdiffusion.cli", "train", "--latents", str(run.cache),
            "--base", run.base, "--dataset", json.dumps(run.ds), "--train", json.dumps(settings),
            "--method", "fairdiffusion", "--fair-bayes", json.dumps(run.fair_bayes),
            "--seed", "0", "--out", str(run.root / "models" / name),
            "--checkpoints", str(run.root / "checkpoints" / name), "--threads", "1"]


def _weights(folder):
    return {f"{sub}/{k}": v for sub in ("unet", "unet_ema")
            for k, v in load_file(folder / sub / "diffusion_pytorch_model.safetensors").items()}


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(run):
    steps = 10
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run(_cli(run, "straight", steps), check=True, env=env, capture_output=True)
    # Kill a second run as soon as its first checkpoint is complete, then rerun the same command.
    proc = subprocess.Popen(_cli(run, "killed", steps), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = run.root / "checkpoints" / "killed" / "checkpoint-0000002" / "state.json"
    while not first.exists() and proc.poll() is None:
        time.sleep(0.02)
    proc.kill()
    proc.wait()
    assert not (run.root / "models" / "killed").exists(), "the run finished before the kill"
    subprocess.run(_cli(run, "killed", steps), check=True, env=env, capture_output=True)

    straight, resumed = _weights(run.root / "models" / "straight"), \
        _weights(run.root / "models" / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), name
    info = json.loads((run.root / "models" / "killed" / "run_info.json").read_text())
    assert info["settings"]["resumed_from"] is not None
    for csv in ("train_log.csv", "bo_trajectory.csv"):
        a = pd.read_csv(run.root / "models" / "straight" / csv)
        b = pd.read_csv(run.root / "models" / "killed" / csv)
        cols = [c for c in a.columns if c != "time"]
        pd.testing.assert_frame_equal(a[cols], b[cols])


def _watch(run, **overrides):
    return {**run.settings["validation"], "every": 2, "images_per_prompt": 2,
            "num_inference_steps": 2, "scheduler": "ddim", **overrides}


def test_validation_writes_grids_and_events_and_leaves_the_weights_alone(run):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from fairdiffusion import sample

    plain = _train(run, "watch_off", "fairdiffusion", max_steps=3)
    watched = _train(run, "watch_on", "fairdiffusion", max_steps=3, validation=_watch(run))
    a, b = _weights(plain), _weights(watched)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    for csv in ("train_log.csv", "bo_trajectory.csv"):
        x, y = pd.read_csv(plain / csv), pd.read_csv(watched / csv)
        cols = [c for c in x.columns if c != "time"]
        pd.testing.assert_frame_equal(x[cols], y[cols])

    # One distinct train-split row per group of each attribute, in the config's order.
    prompts = pd.read_csv(watched / "validation" / "prompts.csv", dtype=str)
    assert list(zip(prompts["attribute"], prompts["group"])) == [
        (attribute, group) for attribute, groups in run.ds["attributes"].items()
        for group in groups]
    assert prompts["id"].is_unique
    rows = manifest.read(run.root / "data" / "manifest.csv").set_index("id").loc[prompts["id"]]
    assert (rows["split"] == "train").all()
    assert [rows[a].iloc[i] for i, a in enumerate(prompts["attribute"])] == list(prompts["group"])
    assert list(rows["prompt"]) == list(prompts["prompt"])

    # A grid every 2 steps and one at the last; rows = prompts, columns = the fixed seeds.
    grids = sorted(p.name for p in (watched / "validation").glob("step-*.png"))
    assert grids == ["step-0000002.png", "step-0000003.png"]
    last = np.asarray(Image.open(watched / "validation" / "step-0000003.png"))
    assert last.shape == (len(prompts) * 32, 2 * 32, 3)
    # Its cells are the final EMA weights sampled with the seeds prompts.csv names.
    pipe = sample.load_pipeline(run.base, watched, "ddim")
    seed = int(prompts["seeds"].iloc[1].split()[1])
    cell = sample.generate(pipe, [prompts["prompt"].iloc[1]], [seed], 32, 2, 3.0)[0]
    assert np.abs(last[32:64, 32:64].astype(int) - cell.astype(int)).max() <= 2

    # TensorBoard: loss and lr as train_log.csv, sigma per group, and the grids.
    events = EventAccumulator(str(watched / "tensorboard"))
    events.Reload()
    log = pd.read_csv(watched / "train_log.csv")
    assert [e.value for e in events.Scalars("train/loss")] == pytest.approx(list(log["loss"]))
    assert [e.step for e in events.Scalars("train/lr")] == list(log["step"])
    sigma_tags = {t for t in events.Tags()["scalars"] if t.startswith("sigma/")}
    assert sigma_tags == {f"sigma/{a}_{g}" for a, gs in run.ds["attributes"].items()
                          for g in gs}
    assert [e.step for e in events.Images("validation")] == [2, 3]


def test_validation_events_continue_across_a_resume(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(run, "watch_resume", max_steps=2, validation=_watch(run))
    out = _train(run, "watch_resume", max_steps=4, validation=_watch(run))   # resumes at 2
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    log = pd.read_csv(out / "train_log.csv")
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(log["step"]) == [1, 2, 3, 4]
    assert [e.value for e in loss] == pytest.approx(list(log["loss"]))
    assert sorted(p.name for p in (out / "validation").glob("step-*.png")) == [
        "step-0000002.png", "step-0000004.png"]


def test_validation_without_tensorboard(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)   # not installed
    with pytest.raises(FairDiffError, match=r"train.validation.tensorboard is on but "
                                            r"TensorBoard is not installed: pip install"):
        _train(run, "watch_no_tb", max_steps=2, validation=_watch(run))
    assert not (run.root / "models" / "watch_no_tb").exists()
    assert not (run.root / "checkpoints" / "watch_no_tb").exists()
    # With the event file off, the grids are written all the same.
    out = _train(run, "watch_no_tb", max_steps=2, validation=_watch(run, tensorboard=False))
    assert (out / "validation" / "step-0000002.png").exists()
    assert not (out / "tensorboard").exists()


def test_v_prediction_follows_the_scheduler_config(run):
    vbase = run.root / "vbase"
    shutil.copytree(run.base, vbase)
    config_path = vbase / "scheduler" / "scheduler_config.json"
    config = json.loads(config_path.read_text())
    config["prediction_type"] = "v_prediction"
    config_path.write_text(json.dumps(config))
    eps = _train(run, "eps", max_steps=1)
    v = SimpleNamespace(**{**vars(run), "base": str(vbase)})
    vout = _train(v, "vpred", max_steps=1)
    # Same model, batch, noise and timesteps: only the regression target differs.
    assert pd.read_csv(eps / "train_log.csv")["loss"][0] != \
        pd.read_csv(vout / "train_log.csv")["loss"][0]
