"""End to end through Snakemake on a tiny config, in a temporary working directory: every stage
of rule all (data -> models -> latents -> 3 arms -> samples -> metrics -> tables, figures) and
the HTML report."""

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

CONFIG = {
    "results": "results",
    "datasets": {
        "synthfundus": {
            **yaml.safe_load((ROOT / "config.yaml").read_text())["datasets"]["synthfundus"],
            "synthetic": {"n_train": 24, "n_val": 6, "n_test": 6, "seed": 0},
        }
    },
    "model": {"pretrained": None, "vae": {"steps": 3, "batch_size": 8}},
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


@pytest.mark.slow
def test_default_targets_and_report_on_a_tiny_config(tmp_path):
    """`snakemake` (rule all: every stage, table and figure) and `snakemake --report`."""
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(FULL))
    cmd = ["snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--configfile",
           str(tmp_path / "config.yaml"), "-c2"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]

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
    quality = pd.read_csv(tables / "quality_synthfundus.csv")
    assert set(FULL["methods"]) <= set(quality.iloc[:, 0])
    for kind in ("groups", "es", "trajectory", "loss", "samples"):
        assert (tmp_path / "results" / "figures" / f"{kind}_synthfundus.png").stat().st_size > 0
    for folder in (tmp_path / "results" / "metrics" / "synthfundus").glob("*/seed0"):
        assert (folder / "quality.csv").exists() and (folder / "measured.csv").exists()

    report = subprocess.run([*cmd, "--report", str(tmp_path / "report.html")],
                            capture_output=True, text=True)
    assert report.returncode == 0, report.stderr[-3000:]
    html = (tmp_path / "report.html").read_text(errors="replace")
    for caption in (ROOT / "workflow" / "report").glob("table_*.rst"):
        assert caption.stem.removeprefix("table_") in html
