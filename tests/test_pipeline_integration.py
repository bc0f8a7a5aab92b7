"""End to end through Snakemake on a tiny config, in a temporary working directory: every stage
of rule all (data -> models -> latents -> 3 arms -> samples -> metrics -> tables, figures), the
HTML report, and the whole workflow killed and rerun with --rerun-incomplete."""

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "results": "results",
    "datasets": {
        "synthfundus": {
            **yaml.safe_load((ROOT / "config.yaml").read_text())["datasets"]["synthfundus"],
            "synthetic": {"n_train": 24, "n_val": 6, "n_test": 6, "seed": 0},
        }
    },
    "model": {"pretrained": None, "vae": {"steps": 3, "batch_size": 8},
              "text_encoder": {"steps": 3, "batch_size": 8}},
    "train": {"max_steps": 3, "batch_size": 4, "checkpoint_every": 2, "log_every": 1},
    "methods": ["baseline", "fairdiffusion"],
    "fair_bayes": {"time_window": 2},
    "seeds": [0],
    "sample": {"num_inference_steps": 2, "train_prompts": 4, "batch_size": 8},
}


FULL = {
    **CONFIG,
    "datasets": {"synthfundus": {**CONFIG["datasets"]["synthfundus"],
                                 "synthetic": {"n_train": 80, "n_val": 10, "n_test": 40,
                                               "seed": 0}}},
    "methods": ["baseline", "fairdiffusion", "random"],
    "sample": {"num_inference_steps": 2, "train_prompts": 40, "batch_size": 40},
    "evaluate": {"classifier": {"epochs": 1}, "bootstrap": 20, "kid_subset_size": 10},
}


def snakemake(workdir: Path, *extra, config: dict = FULL) -> list[str]:
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    return ["snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(workdir), "--configfile",
            str(workdir / "config.yaml"), "-c2", *extra]


def env() -> dict:
    return {**os.environ, "PYTHONHASHSEED": "0"}


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> Path:
    """One uninterrupted `snakemake` (rule all) of FULL, shared by the tests below."""
    workdir = tmp_path_factory.mktemp("straight")
    done = subprocess.run(snakemake(workdir), capture_output=True, text=True, env=env())
    assert done.returncode == 0, done.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_default_targets_and_report_on_a_tiny_config(straight):
    """`snakemake` (rule all: every stage, table and figure) and `snakemake --report`."""
    tmp_path, cmd = straight, snakemake(straight)
    results = tmp_path / "results"
    base = results / "models" / "synthfundus" / "base"
    assert json.loads((base / "model_index.json").read_text())["_class_name"] == \
        "StableDiffusionPipeline"
    assert (base / "vae_ceiling.csv").exists()
    for method in FULL["methods"]:
        model = results / "models" / "synthfundus" / method / "seed0"
        assert pd.read_csv(model / "train_log.csv")["step"].tolist() == [1, 2, 3]
        assert (model / "unet_ema" / "config.json").exists()
        assert (results / "checkpoints" / "synthfundus" / method / "seed0").is_dir()
        for split in ("test", "train"):
            folder = results / "samples" / "synthfundus" / method / "seed0" / split
            prompts = pd.read_csv(folder / "prompts.csv")
            assert len(prompts) == 40
            assert all((folder / name).exists() for name in prompts["image"])
    assert (tmp_path / "logs" / "train" / "synthfundus" / "fairdiffusion" / "seed0.log").exists()
    again = subprocess.run([*cmd, "-n"], capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    tables = tmp_path / "results" / "tables"
    for kind in ("quality", "groups", "semantic", "measured", "paired"):
        for ext in ("csv", "md", "tex"):
            assert (tables / f"{kind}_synthfundus.{ext}").stat().st_size > 0
        # Provenance of every table and metric file: the stage's arguments and the versions.
        info = json.loads((tables / f"{kind}_synthfundus.run_info.json").read_text())
        assert info["settings"]["kind"] == kind and info["versions"]["fairdiffusion"]
    quality = pd.read_csv(tables / "quality_synthfundus.csv")
    assert set(FULL["methods"]) <= set(quality.iloc[:, 0])
    assert "real train vs test (perfect generator)" in set(quality.iloc[:, 0])
    for kind in ("groups", "es", "trajectory", "loss", "samples"):
        assert (tmp_path / "results" / "figures" / f"{kind}_synthfundus.png").stat().st_size > 0
    for folder in (tmp_path / "results" / "metrics" / "synthfundus").glob("*/seed0"):
        for name in ("quality", "semantic", "measured"):
            assert (folder / f"{name}.csv").exists()
            info = json.loads((folder / f"{name}.run_info.json").read_text())
            assert info["settings"]["evaluate"]["alpha"] == 1.0, (folder, name)

    report = subprocess.run([*cmd, "--report", str(tmp_path / "report.html")],
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    for caption in (ROOT / "workflow" / "report").glob("table_*.rst"):
        assert caption.stem.removeprefix("table_") in html


def _weights(run: Path) -> dict:
    return {f"{sub}/{k}": v for sub in ("unet", "unet_ema")
            for k, v in load_file(run / sub / "diffusion_pytorch_model.safetensors").items()}


def _csvs(results: Path) -> dict[str, pd.DataFrame]:
    """Every metric and table CSV under results/, by relative path."""
    return {str(p.relative_to(results)): pd.read_csv(p)
            for sub in ("metrics", "tables") for p in sorted((results / sub).rglob("*.csv"))}


@pytest.mark.slow
def test_killed_workflow_reruns_incomplete_jobs_to_identical_tables(straight, tmp_path):
    """SIGKILL to Snakemake and its running jobs (mid-training, mid-sampling or mid-evaluation,
    chosen at random), then `--unlock` and `snakemake --rerun-incomplete`: every metric CSV and
    table equals the uninterrupted run's, and so do the trained weights."""
    phase = random.Random(os.environ.get("RELIABILITY_SEED")).choice(
        ["train", "sample", "evaluate"])
    run = "results/models/synthfundus/fairdiffusion/seed0"
    samples = Path("results/samples/synthfundus/fairdiffusion/seed0")
    marker = {"train": tmp_path / "results/checkpoints/synthfundus/fairdiffusion/seed0" /
              "checkpoint-0000002" / "state.json",
              "sample": tmp_path / samples / ".test.partial" / "000000.png",
              "evaluate": tmp_path / "results/metrics/synthfundus/baseline/seed0/quality.csv"}[phase]
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(snakemake(tmp_path), stdout=log, stderr=subprocess.STDOUT,
                                env=env(), start_new_session=True)
    while not marker.exists() and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)                  # Snakemake and the running jobs
    proc.wait()
    final = tmp_path / "results" / "tables" / "paired_synthfundus.csv"
    assert not final.exists(), f"the workflow finished before the kill ({phase})"

    # A killed Snakemake leaves its lock: the documented recovery is --unlock, then the same
    # command with --rerun-incomplete.
    unlock = subprocess.run(snakemake(tmp_path, "--unlock"), capture_output=True, text=True)
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    done = subprocess.run(snakemake(tmp_path, "--rerun-incomplete"), capture_output=True,
                          text=True, env=env())
    assert done.returncode == 0, (phase, done.stderr[-3000:])

    a, b = _weights(straight / run), _weights(tmp_path / run)
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), phase
    expected, got = _csvs(straight / "results"), _csvs(tmp_path / "results")
    assert expected.keys() == got.keys()
    assert any(k.startswith("tables/") for k in expected)
    for name, frame in expected.items():
        pd.testing.assert_frame_equal(frame, got[name], check_exact=True, obj=f"{phase}: {name}")
    assert sorted(p.name for p in (tmp_path / "results").rglob("*")
                  if p.name.endswith((".tmp", ".part"))) == []


@pytest.mark.slow
def test_changed_config_reruns_what_depends_on_it(straight):
    """rerun-triggers include params: the same config has nothing to do; a changed training
    setting reruns training and everything downstream of it, not the latent cache."""
    again = subprocess.run([*snakemake(straight), "-n"], capture_output=True, text=True)
    assert again.returncode == 0 and "Nothing to be done" in again.stdout + again.stderr
    changed = {**FULL, "train": {**FULL["train"], "learning_rate": 0.0005}}
    dry = subprocess.run(snakemake(straight, "-n", config=changed), capture_output=True,
                         text=True)
    assert dry.returncode == 0, dry.stderr[-3000:]
    jobs = dry.stdout + dry.stderr
    assert "rule train:" in jobs and "Params have changed since last execution" in jobs
    assert '"learning_rate": 0.0005' in jobs
    assert "rule sample:" in jobs and "rule table:" in jobs
    assert "cache_latents" not in jobs
    # Leave the shared run as it was for any later test.
    (straight / "config.yaml").write_text(yaml.safe_dump(FULL))
