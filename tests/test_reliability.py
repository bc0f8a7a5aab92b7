"""Reliability: bad inputs fail loudly (one line naming the file or key, exit status 2, nothing
half-written), killed runs resume to identical results, writers survive a full disk, every output
folder carries its provenance, no pickle is read, and the Hugging Face token never leaks.

tests/README.md is the catalogue: every bad input and fault, the expected behaviour and the test
that checks it (many live with their stage's tests; this file holds the rest).
"""

from __future__ import annotations

import ast
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from fairdiffusion import cli, io, latents, models
from fairdiffusion.config import validate
from fairdiffusion.errors import FairDiffError

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "fairdiffusion"
SENTINEL = "hf_SENTINELreliabilityTOKEN0123456789"


# --- helpers ------------------------------------------------------------------------------------

def fairdiff(capsys, *args) -> tuple[int, str]:
    """Run the CLI in this process; return (exit status, stderr)."""
    capsys.readouterr()
    status = cli.main([str(a) for a in args])
    return status, capsys.readouterr().err


def assert_one_line_error(status: int, stderr: str, stage: str, *fragments: str) -> str:
    """Exit status 2 and exactly one error line `fairdiff <stage>: error: ...` holding every
    fragment (the file or key, and what was expected); no traceback."""
    assert status == 2, stderr
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("fairdiff ")]
    assert len(errors) == 1 and errors[0].startswith(f"fairdiff {stage}: error: "), stderr
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def leftovers(folder: Path) -> list[str]:
    """Temporary files or folders a writer left in `folder` (atomic writers use .NAME.*.tmp)."""
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".part")))


def cli_env(**extra) -> dict:
    return {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", **extra}


def run_cli(*args, env=None, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fairdiffusion.cli", *map(str, args)],
                          env=env or cli_env(), capture_output=True, text=True, **kwargs)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """Every CLI stage once, in this process, on a tiny SynthFundus: data, base-model,
    cache-latents, train, sample, extractor (each output folder is checked for run_info.json)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("reliability")
    cfg = validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
    ds = cfg["datasets"]["synthfundus"]
    ds["synthetic"].update(n_train=16, n_val=4, n_test=4)
    model = {**cfg["model"], "vae": {**cfg["model"]["vae"], "steps": 2, "batch_size": 8},
             "text_encoder": {**cfg["model"]["text_encoder"], "steps": 2, "batch_size": 8}}
    train = {**cfg["train"], "max_steps": 2, "batch_size": 4, "checkpoint_every": 2,
             "log_every": 1, "lr_warmup_steps": 1}
    fair_bayes = {**cfg["fair_bayes"], "time_window": 3}
    sample = {**cfg["sample"], "num_inference_steps": 2, "batch_size": 4, "train_prompts": 8}
    evaluate = {**cfg["evaluate"], "classifier": {**cfg["evaluate"]["classifier"], "epochs": 1}}
    data, base = root / "data", root / "base"
    m = data / "manifest.csv"
    cache = root / "latents" / "train" / "latents.safetensors"
    model_dir = root / "models" / "fairdiffusion" / "seed0"
    js = json.dumps
    for args in (
        ["data", "--name", "synthfundus", "--dataset", js(ds), "--out", data],
        ["base-model", "--name", "synthfundus", "--dataset", js(ds), "--model", js(model),
         "--manifest", m, "--out", base, "--threads", 1],
        ["cache-latents", "--base", base, "--manifest", m, "--split", "train", "--dataset",
         js(ds), "--out", cache, "--threads", 1],
        ["train", "--latents", cache, "--base", base, "--dataset", js(ds), "--train", js(train),
         "--method", "fairdiffusion", "--fair-bayes", js(fair_bayes), "--seed", 0,
         "--out", model_dir, "--checkpoints", root / "checkpoints", "--threads", 1],
        ["sample", "--base", base, "--model", model_dir, "--manifest", m, "--split", "test",
         "--dataset", js(ds), "--sample", js(sample), "--seed", 0,
         "--out", root / "samples" / "test", "--threads", 1],
        ["extractor", "--manifest", m, "--dataset", js(ds), "--evaluate", js(evaluate),
         "--threads", 1, "--out", root / "extractor"],
    ):
        assert cli.main([str(a) for a in args]) == 0, args[0]
    return SimpleNamespace(root=root, ds=ds, model=model, train=train, fair_bayes=fair_bayes,
                           sample=sample, evaluate=evaluate, data=data, manifest=m, base=base,
                           cache=cache, model_dir=model_dir)


def copy_data(stack, tmp_path) -> Path:
    shutil.copytree(stack.data, tmp_path / "data")
    return tmp_path / "data" / "manifest.csv"


# --- 3. integrity: provenance and no pickle -----------------------------------------------------

def test_every_cli_output_folder_has_run_info(stack):
    folders = [stack.data, stack.base, stack.model_dir, stack.root / "samples" / "test",
               stack.root / "extractor"]
    for folder in folders:
        info = json.loads((folder / "run_info.json").read_text())
        assert info["settings"], folder
        assert info["versions"]["fairdiffusion"] and info["versions"]["torch"], folder
        assert info["python"] and info["command"], folder
    # The resolved config sections, not just a name.
    data_info = json.loads((stack.data / "run_info.json").read_text())
    assert data_info["settings"]["dataset"] == stack.ds
    train_info = json.loads((stack.model_dir / "run_info.json").read_text())
    assert train_info["settings"]["train"] == stack.train
    assert train_info["settings"]["fair_bayes"] == stack.fair_bayes


PICKLE_MODULES = {"pickle", "cPickle", "dill", "joblib", "cloudpickle", "shelve"}


def pickle_problems(source: str, where: str) -> list[str]:
    """Pickle modules, torch.load without weights_only=True, np.load without
    allow_pickle=False, torch.save and pandas pickles in one module's source."""
    problems = []
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in PICKLE_MODULES for n in names):
                problems.append(f"{where}:{node.lineno} imports a pickle module")
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        owner, name = getattr(node.func.value, "id", ""), node.func.attr
        flags = {k.arg: getattr(k.value, "value", None) for k in node.keywords}
        if owner == "torch" and name == "load" and flags.get("weights_only") is not True:
            problems.append(f"{where}:{node.lineno} torch.load without weights_only=True")
        if owner in ("np", "numpy") and name == "load" and flags.get("allow_pickle") is not False:
            problems.append(f"{where}:{node.lineno} np.load without allow_pickle=False")
        if (owner == "torch" and name == "save") or name in ("read_pickle", "to_pickle"):
            problems.append(f"{where}:{node.lineno} {owner}.{name} writes or reads a pickle")
    return problems


def test_no_pickle_is_ever_read_or_written():
    """Tensors in safetensors, the rest JSON/CSV/PNG: nothing in the package reads a pickle."""
    problems = []
    for path in sorted(SRC.rglob("*.py")):
        problems += pickle_problems(path.read_text(), str(path.relative_to(ROOT)))
    assert not problems, problems
    # The scan catches each pattern it is meant to catch.
    bad = ("import pickle\nimport torch, numpy as np\ntorch.load(p)\n"
           "torch.load(p, weights_only=False)\nnp.load(p)\ntorch.save(x, p)\n"
           "frame.to_pickle(p)\nnp.load(p, allow_pickle=False)\n"
           "torch.load(p, weights_only=True)\n")
    assert [p.split(" ", 1)[0] for p in pickle_problems(bad, "x")] == \
        ["x:1", "x:3", "x:4", "x:5", "x:6", "x:7"]


# --- 1. bad inputs: the data stage ----------------------------------------------------------

def user_csv(folder: Path, n: int = 8, **column_values) -> Path:
    """A small `source: csv` dataset (images 10x14) whose columns can be overridden per row."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        Image.fromarray(np.full((10, 14, 3), 20 * i, np.uint8)).save(folder / f"imgs/{i}.png")
        rows.append({"id": f"r{i}", "image": f"imgs/{i}.png",
                     "split": ["train", "train", "val", "test"][i % 4], "sex": ["F", "M"][i % 2],
                     "grade": ["low", "high"][i % 2], "prompt": f"photo {i}"})
    frame = pd.DataFrame(rows)
    for column, values in column_values.items():
        frame[column] = values
    frame.to_csv(folder / "mine.csv", index=False)
    return folder / "mine.csv"


def csv_dataset(csv: Path) -> str:
    return json.dumps({"source": "csv", "resolution": 8, "attributes": {"sex": ["F", "M"]},
                       "labels": {"grade": ["low", "high"]}, "limit": {},
                       "options": {"csv": str(csv), "workers": 1}})


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not an image at all",
                      "empty": b""}[how])


@pytest.mark.parametrize("how", ["truncated", "garbage", "empty"])
def test_corrupt_source_image_names_the_file_and_publishes_nothing(tmp_path, capsys, how):
    csv = user_csv(tmp_path / "src")
    corrupt(tmp_path / "src" / "imgs" / "5.png", how)
    out = tmp_path / "results" / "data"
    status, err = fairdiff(capsys, "data", "--name", "mine", "--dataset", csv_dataset(csv),
                           "--out", out)
    assert_one_line_error(status, err, "data", "imgs/5.png", "cannot read the image")
    assert not out.exists() and leftovers(tmp_path / "results") == []


@pytest.mark.parametrize("column_values, fragments", [
    ({"split": ["train", "train", "val", "val"] * 2}, ["dataset 'mine'", "'test' split is empty"]),
    ({"id": ["a", "b", "c", "d", "e", "f", "g", "a"]},
     ["mine.csv", "column 'id' has duplicate value(s) ['a']"]),
], ids=["empty_split", "duplicate_ids"])
def test_bad_user_table_is_refused(tmp_path, capsys, column_values, fragments):
    csv = user_csv(tmp_path / "src", **column_values)
    out = tmp_path / "results" / "data"
    status, err = fairdiff(capsys, "data", "--name", "mine", "--dataset", csv_dataset(csv),
                           "--out", out)
    assert_one_line_error(status, err, "data", *fragments)
    assert not out.exists() and leftovers(tmp_path / "results") == []


# --- 1. bad inputs: a published manifest edited or damaged afterwards -------------------------

def _first_train_image(manifest_path: Path) -> Path:
    frame = pd.read_csv(manifest_path, dtype=str)
    return manifest_path.parent / frame.loc[frame["split"] == "train", "image"].iloc[0]


def _edit_rows(manifest_path: Path, edit) -> None:
    frame = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    edit(frame).to_csv(manifest_path, index=False)


def _duplicate_id(frame):
    frame.loc[1, "id"] = frame.loc[0, "id"]
    return frame


def _unknown_group(frame):
    frame.loc[0, "race"] = "Martian"
    return frame


MANIFEST_EDITS = {
    "duplicate_ids": (lambda m: _edit_rows(m, _duplicate_id), ["manifest.csv", "duplicate id"]),
    "attribute_outside_groups": (
        lambda m: _edit_rows(m, _unknown_group),
        ["manifest.csv", "attribute 'race' has value(s) ['Martian'] outside its declared groups"]),
    "empty_train_split": (
        lambda m: _edit_rows(m, lambda f: f[f["split"] != "train"]),
        ["manifest.csv", "the 'train' split is empty"]),
    "truncated_image": (lambda m: corrupt(_first_train_image(m), "truncated"),
                        [".png", "cannot read the image"]),
    "not_an_image": (lambda m: corrupt(_first_train_image(m), "garbage"),
                     [".png", "cannot read the image"]),
    "grey_image": (
        lambda m: Image.fromarray(np.zeros((32, 32), np.uint8)).save(_first_train_image(m)),
        [".png", "image is L 32x32, expected 32x32 RGB"]),
    "rgba_image": (
        lambda m: Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(_first_train_image(m)),
        [".png", "image is RGBA 32x32, expected 32x32 RGB"]),
    "all_images_wrong_size": (
        lambda m: [Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(p)
                   for p in (m.parent / "images").rglob("*.png")],
        [".png", "image is RGB 40x40, expected 32x32 RGB"]),
}


@pytest.mark.parametrize("case", sorted(MANIFEST_EDITS))
def test_damaged_manifest_is_refused_by_cache_latents(stack, tmp_path, capsys, case):
    manifest_path = copy_data(stack, tmp_path)
    damage, fragments = MANIFEST_EDITS[case]
    damage(manifest_path)
    out = tmp_path / "latents" / "train" / "latents.safetensors"
    status, err = fairdiff(capsys, "cache-latents", "--base", stack.base, "--manifest",
                           manifest_path, "--split", "train", "--dataset", json.dumps(stack.ds),
                           "--out", out, "--threads", 1)
    assert_one_line_error(status, err, "cache-latents", *fragments)
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_corrupt_generated_image_is_refused_by_features(stack, tmp_path, capsys, how):
    samples = tmp_path / "samples"
    shutil.copytree(stack.root / "samples" / "test", samples)
    corrupt(samples / "000001.png", how)
    out = tmp_path / "features" / "gen.safetensors"
    status, err = fairdiff(capsys, "features", "--table", samples, "--dataset",
                           json.dumps(stack.ds), "--evaluate", json.dumps(stack.evaluate),
                           "--extractor-dir", stack.root / "extractor", "--out", out,
                           "--threads", 1)
    assert_one_line_error(status, err, "features", "000001.png", "cannot read the image")
    assert not out.exists()


def test_long_prompt_is_truncated_with_a_warning(stack, caplog):
    tokenizer = models.load(str(stack.base), "tokenizer")
    encoder = models.load(str(stack.base), "text_encoder").eval()
    short = "SLO fundus image of a Black Female Hispanic patient"
    long = short + " with the following conditions: glaucoma" + ", severe vision loss" * 30
    assert len(tokenizer(long).input_ids) > tokenizer.model_max_length
    with caplog.at_level("WARNING", logger="fairdiffusion.latents"):
        states = latents.encode_prompts(tokenizer, encoder, [short, long])
    warnings = [r.getMessage() for r in caplog.records if r.name == "fairdiffusion.latents"]
    assert len(warnings) == 1, warnings                    # the short prompt is not mentioned
    assert f"{tokenizer.model_max_length} tokens" in warnings[0]
    assert "severe vision loss" in warnings[0] and "dropped" in warnings[0]
    # Truncated exactly as the stock pipeline truncates at sampling time.
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(stack.base)
    reference, _ = pipe.encode_prompt([long], "cpu", 1, False)
    assert torch.allclose(states[1:], reference, atol=1e-6)


# --- 2. faults: partial or corrupt intermediate files, full disks --------------------------------

def test_truncated_latent_cache_is_detected_and_rebuilt(stack, tmp_path, capsys):
    cache = tmp_path / "latents.safetensors"
    data = stack.cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    with pytest.raises(FairDiffError, match="incomplete or corrupt latent cache"):
        latents.read(cache)
    out = tmp_path / "model"
    status, err = fairdiff(capsys, "train", "--latents", cache, "--base", stack.base,
                           "--dataset", json.dumps(stack.ds), "--train", json.dumps(stack.train),
                           "--method", "baseline", "--seed", 0, "--out", out,
                           "--checkpoints", tmp_path / "checkpoints", "--threads", 1)
    assert_one_line_error(status, err, "train", str(cache), "cache_latents")
    assert not out.exists()
    # Rebuilding the same file gives the complete cache again, identical to the original.
    status, err = fairdiff(capsys, "cache-latents", "--base", stack.base, "--manifest",
                           stack.manifest, "--split", "train", "--dataset", json.dumps(stack.ds),
                           "--out", cache, "--threads", 1)
    assert status == 0, err
    rebuilt, original = load_file(cache), load_file(stack.cache)
    assert rebuilt.keys() == original.keys()
    assert all(torch.equal(rebuilt[k], original[k]) for k in original)


def test_truncated_feature_file_is_a_clear_error(tmp_path):
    from fairdiffusion.evaluate import features

    path = tmp_path / "gen.safetensors"
    features.save(path, {"x": torch.zeros(4, 3)}, ["a", "b", "c", "d"], "tag", {"fid": "x"})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(FairDiffError, match="gen.safetensors: incomplete or corrupt feature file"):
        features.load(path)


def _disk_full(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_while_caching_latents(stack, tmp_path, capsys, monkeypatch):
    """The safetensors writer runs out of space half-way: one clear line, no file left."""
    import safetensors.torch

    def half_then_full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 1000)
        _disk_full()

    monkeypatch.setattr(safetensors.torch, "save_file", half_then_full)
    out = tmp_path / "latents" / "train" / "latents.safetensors"
    status, err = fairdiff(capsys, "cache-latents", "--base", stack.base, "--manifest",
                           stack.manifest, "--split", "train", "--dataset", json.dumps(stack.ds),
                           "--out", out, "--threads", 1)
    assert_one_line_error(status, err, "cache-latents", str(out), "No space left on device")
    assert list(out.parent.iterdir()) == []


def test_disk_full_while_writing_the_manifest(stack, tmp_path, capsys, monkeypatch):
    """The last file of the data folder fails after every image was written: nothing remains."""
    real_to_csv = pd.DataFrame.to_csv

    def full_for_manifests(self, path=None, *args, **kwargs):
        if str(path).endswith("manifest.csv"):
            Path(path).write_text("id,split,ima")
            _disk_full()
        return real_to_csv(self, path, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_for_manifests)
    out = tmp_path / "results" / "data"
    status, err = fairdiff(capsys, "data", "--name", "synthfundus", "--dataset",
                           json.dumps(stack.ds), "--out", out)
    assert_one_line_error(status, err, "data", str(out), "No space left on device")
    assert list((tmp_path / "results").iterdir()) == []


def test_a_killed_writer_leaves_nothing_and_its_leftovers_are_removed(tmp_path):
    """atomic_path/atomic_dir: an exception mid-write leaves no file; what a SIGKILLed writer
    left (its temporary) is removed by the next write of the same output."""
    target = tmp_path / "out.csv"
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    (tmp_path / ".out.csv.abc123.tmp").write_text("left by a SIGKILL")
    (tmp_path / ".folder.abc123.tmp").mkdir()
    (tmp_path / ".other.csv.abc123.tmp").write_text("someone else's")
    io.write_text(target, "done")
    with io.atomic_dir(tmp_path / "folder") as tmp:
        (tmp / "x").write_text("done")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.csv.abc123.tmp", "folder",
                                                          "out.csv"]


# --- 2. faults: SIGKILL and restart -----------------------------------------------------------

def _train_cmd(stack, root, name, steps):
    settings = {**stack.train, "max_steps": steps, "checkpoint_every": 3}
    return ["train", "--latents", stack.cache, "--base", stack.base, "--dataset",
            json.dumps(stack.ds), "--train", json.dumps(settings), "--method", "fairdiffusion",
            "--fair-bayes", json.dumps(stack.fair_bayes), "--seed", 0,
            "--out", root / "models" / name, "--checkpoints", root / "checkpoints" / name,
            "--threads", 1]


def _weights(folder):
    return {f"{sub}/{k}": v for sub in ("unet", "unet_ema")
            for k, v in load_file(folder / sub / "diffusion_pytorch_model.safetensors").items()}


def _popen(args, log: Path):
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, "-m", "fairdiffusion.cli", *map(str, args)],
                                env=cli_env(), stdout=handle, stderr=subprocess.STDOUT)


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_training_killed_at_a_random_step_resumes_to_identical_weights(stack, tmp_path):
    """A real SIGKILL at a random point (between checkpoints, or while one is being written),
    then the same command again: weights, EMA, logs and BO trajectory equal an uninterrupted run."""
    steps = 10
    done = run_cli(*_train_cmd(stack, tmp_path, "straight", steps))
    assert done.returncode == 0, done.stderr[-2000:]
    times = pd.read_csv(tmp_path / "models" / "straight" / "train_log.csv")["time"]
    step_seconds = float(times.diff().median())

    rng = random.Random(os.environ.get("RELIABILITY_SEED"))
    after, fraction = rng.choice([3, 6]), rng.uniform(0.0, 2.5)
    where = f"killed {fraction:.2f} steps after checkpoint {after}"
    proc = _popen(_train_cmd(stack, tmp_path, "killed", steps), tmp_path / "killed.log")
    checkpoint = tmp_path / "checkpoints" / "killed" / f"checkpoint-{after:07d}" / "state.json"
    while not checkpoint.exists() and proc.poll() is None:
        time.sleep(0.01)
    time.sleep(fraction * step_seconds)
    _kill(proc)
    assert not (tmp_path / "models" / "killed").exists(), f"finished before the kill ({where})"

    done = run_cli(*_train_cmd(stack, tmp_path, "killed", steps))
    assert done.returncode == 0, (where, done.stderr[-2000:])
    assert "resuming from" in done.stderr, where
    straight = _weights(tmp_path / "models" / "straight")
    resumed = _weights(tmp_path / "models" / "killed")
    assert straight.keys() == resumed.keys()
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), (where, name)
    for csv in ("train_log.csv", "bo_trajectory.csv"):
        a = pd.read_csv(tmp_path / "models" / "straight" / csv)
        b = pd.read_csv(tmp_path / "models" / "killed" / csv)
        cols = [c for c in a.columns if c != "time"]
        pd.testing.assert_frame_equal(a[cols], b[cols], obj=f"{csv} ({where})")
    assert leftovers(tmp_path / "models") == [] and leftovers(tmp_path / "checkpoints") == []


def _sample_cmd(stack, out):
    settings = {**stack.sample, "batch_size": 1}
    return ["sample", "--base", stack.base, "--model", stack.model_dir, "--manifest",
            stack.manifest, "--split", "train", "--dataset", json.dumps(stack.ds),
            "--sample", json.dumps(settings), "--seed", 0, "--out", out, "--threads", 1]


@pytest.mark.slow
def test_sampling_killed_resumes_at_the_first_missing_image(stack, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    done = run_cli(*_sample_cmd(stack, straight))
    assert done.returncode == 0, done.stderr[-2000:]
    n = len(pd.read_csv(straight / "prompts.csv"))

    wanted = random.Random(os.environ.get("RELIABILITY_SEED")).randint(1, n - 2)
    proc = _popen(_sample_cmd(stack, killed), tmp_path / "killed.log")
    partial = tmp_path / ".killed.partial"
    while proc.poll() is None and len(list(partial.glob("*.png"))) < wanted:
        time.sleep(0.01)
    _kill(proc)
    assert not killed.exists(), "sampling finished before the kill"
    kept = {p.name: p.read_bytes() for p in partial.glob("*.png")}
    assert 0 < len(kept) < n

    done = run_cli(*_sample_cmd(stack, killed))
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{n} images ({len(kept)} already in" in done.stderr
    for name, data in kept.items():                      # not regenerated
        assert (killed / name).read_bytes() == data
    for name in pd.read_csv(straight / "prompts.csv")["image"]:
        assert np.array_equal(np.asarray(Image.open(straight / name)),
                              np.asarray(Image.open(killed / name))), name
    pd.testing.assert_frame_equal(pd.read_csv(straight / "prompts.csv"),
                                  pd.read_csv(killed / "prompts.csv"))
    assert leftovers(killed) == [] and not partial.exists()


# --- 4. secrets -------------------------------------------------------------------------------

class HubStandIn(ThreadingHTTPServer):
    """Answers every Hugging Face API call with 401 and records the Authorization headers."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), HubHandler)
        self.authorizations: list[str | None] = []


class HubHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.authorizations.append(self.headers.get("Authorization"))
        body = b'{"error": "Invalid credentials in Authorization header"}'
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_HEAD = do_GET


@pytest.fixture
def hub():
    server = HubStandIn()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def files_containing(folder: Path, text: str, skip: Path | None = None) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and p != skip
            and text.encode() in p.read_bytes()]


@pytest.mark.parametrize("where", ["HF_TOKEN", "token file"])
def test_hf_token_is_used_but_never_printed_or_written(hub, tmp_path, where):
    hf_home = tmp_path / "hf_home"
    hf_home.mkdir()
    env = cli_env(HF_ENDPOINT=f"http://127.0.0.1:{hub.server_address[1]}", HF_HUB_OFFLINE="0",
                  HF_HOME=str(hf_home), HF_HUB_DISABLE_TELEMETRY="1")
    env.pop("HF_TOKEN", None)
    env.pop("HF_TOKEN_PATH", None)
    token_file = hf_home / "token"
    if where == "HF_TOKEN":
        env["HF_TOKEN"] = SENTINEL
    else:
        token_file.write_text(SENTINEL)
    out = tmp_path / "resources" / "fairgenmed"
    done = run_cli("-v", "download", "--name", "fairgenmed", "--dataset",
                   json.dumps({"source": "fairgenmed"}), "--out", out, env=env, timeout=120)
    # The token was found and sent to the hub ...
    assert f"Bearer {SENTINEL}" in hub.authorizations, hub.authorizations
    # ... the failure is one clear line, and the token appears nowhere we print or write.
    assert done.returncode == 2, done.stderr[-2000:]
    assert "fairdiff download: error: harvardairobotics/FairGenMed" in done.stderr
    assert "a token found" in done.stderr
    assert SENTINEL not in done.stdout + done.stderr
    assert files_containing(tmp_path, SENTINEL, skip=token_file) == []
    assert not (out / "download.done").exists()


def test_outputs_and_logs_never_hold_the_token(stack, tmp_path):
    """Stages run with the token in the environment (data, and the offline path of a missing
    pretrained id): no log line, output or run_info.json carries it."""
    env = cli_env(HF_TOKEN=SENTINEL, HF_HUB_OFFLINE="1")
    logs = tmp_path / "logs"
    logs.mkdir()
    ds = {**stack.ds, "synthetic": {**stack.ds["synthetic"], "n_train": 4, "n_val": 1,
                                    "n_test": 2}}
    done = run_cli("-v", "data", "--name", "synthfundus", "--dataset", json.dumps(ds),
                   "--out", tmp_path / "results" / "data", env=env)
    (logs / "data.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 0, done.stderr[-2000:]
    done = run_cli("-v", "cache-latents", "--base", "no-such-org/no-such-model", "--manifest",
                   tmp_path / "results" / "data" / "manifest.csv", "--split", "train",
                   "--dataset", json.dumps(ds), "--out", tmp_path / "results" / "latents.st",
                   env=env)
    (logs / "cache.log").write_text(done.stdout + done.stderr)
    assert done.returncode == 2 and "model 'no-such-org/no-such-model'" in done.stderr
    info = json.loads((tmp_path / "results" / "data" / "run_info.json").read_text())
    assert info["versions"]["torch"]
    assert files_containing(tmp_path, SENTINEL) == []


# The whole workflow killed and rerun with --rerun-incomplete, and config-change reruns:
# test_pipeline_integration.py (they share its uninterrupted run of the whole DAG).
