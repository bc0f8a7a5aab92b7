"""`fairdiff figure`: every figure is written (non-empty PNG, PDF when asked) from small inputs
laid out as the pipeline lays them out, each file's run given on the command line; bad inputs
give a one-line error."""

import glob
import json

import pandas as pd
import pytest
from PIL import Image

from fairdiffusion.cli import main
from fairdiffusion.report import figures
from report_fixtures import ATTRIBUTES, pipeline_outputs


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    pipeline_outputs(root)
    return root


RUNS = [("baseline", 0), ("baseline", 1), ("fairdiffusion", 0), ("fairdiffusion", 1)]


def run_args(results, name):
    """--logs of every run's `name` file, with the --methods and --seeds naming each."""
    logs = [str(results / f"models/synthfundus/{m}/seed{s}/{name}") for m, s in RUNS]
    return ["--logs", *logs, "--methods", *[m for m, _ in RUNS],
            "--seeds", *[str(s) for _, s in RUNS]]


def paths(results, pattern):
    return sorted(glob.glob(str(results / pattern)))


def assert_png(path):
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.width > 100 and image.height > 100


def test_groups_and_es_figures(results, tmp_path):
    quality = paths(results, "metrics/synthfundus/*/seed*/quality.csv")
    semantic = paths(results, "metrics/synthfundus/*/semantic.csv") + \
        paths(results, "metrics/synthfundus/*/seed*/semantic.csv")
    assert main(["figure", "groups", "--metrics", *quality, "--formats", "png", "pdf",
                 "--out", str(tmp_path / "groups")]) == 0
    assert_png(tmp_path / "groups.png")
    assert (tmp_path / "groups.pdf").read_bytes().startswith(b"%PDF")
    assert main(["figure", "es", "--metrics", *quality, *semantic,
                 "--out", str(tmp_path / "es")]) == 0
    assert_png(tmp_path / "es.png")
    assert not (tmp_path / "es.pdf").exists()


def test_trajectory_and_loss_figures(results, tmp_path):
    assert main(["figure", "trajectory", *run_args(results, "bo_trajectory.csv"),
                 "--window", "10", "--out", str(tmp_path / "trajectory")]) == 0
    assert_png(tmp_path / "trajectory.png")
    assert main(["figure", "loss", *run_args(results, "train_log.csv"),
                 "--out", str(tmp_path / "loss")]) == 0
    assert_png(tmp_path / "loss.png")


def test_run_of_a_log_comes_from_the_command_line(results, tmp_path):
    """A log's arm and seed are what --methods/--seeds say, wherever the file lies."""
    moved = tmp_path / "anywhere.csv"
    moved.write_bytes((results / "models/synthfundus/fairdiffusion/seed1/train_log.csv")
                      .read_bytes())
    frame = figures._read_logs([str(moved)], ["renamed"], [7], ["step", "loss"])
    assert set(zip(frame["method"], frame["seed"])) == {("renamed", 7)}
    assert main(["figure", "loss", "--logs", str(moved), "--methods", "renamed", "--seeds", "7",
                 "--out", str(tmp_path / "loss")]) == 0


def test_sample_grid_uses_the_same_prompts(results, tmp_path):
    methods = ["baseline", "fairdiffusion"]
    samples = [str(results / f"samples/synthfundus/{m}/seed0/test") for m in methods]
    real = pd.read_csv(results / "data/synthfundus/manifest.csv")
    real = real[real["split"] == "test"]
    runs = {m: figures.sample_rows(pd.read_csv(f"{p}/prompts.csv"))
            for m, p in zip(methods, samples)}
    picked = figures.pick_prompts(real, runs, "race", ATTRIBUTES["race"], 2)
    assert [g for g, _ in picked] == ["Asian", "Asian", "Black", "Black", "White", "White"]
    for group, row in picked:  # the first test rows of each group, in manifest order
        assert row["id"] in set(real.loc[real["race"] == group, "id"][:2])
    # a prompt one arm did not generate is skipped for every column
    runs["baseline"] = runs["baseline"][runs["baseline"]["id"] != picked[0][1]["id"]]
    assert figures.pick_prompts(real, runs, "race", ATTRIBUTES["race"], 1)[0][1]["id"] \
        != picked[0][1]["id"]

    assert main(["figure", "samples", "--manifest", str(results / "data/synthfundus/manifest.csv"),
                 "--samples", *samples, "--methods", *methods,
                 "--attributes", json.dumps(ATTRIBUTES),
                 "--attribute", "race", "--per-group", "2",
                 "--out", str(tmp_path / "samples")]) == 0
    assert_png(tmp_path / "samples.png")


def test_bad_inputs(results, tmp_path, capsys):
    bad = tmp_path / "elsewhere" / "train_log.csv"
    bad.parent.mkdir()
    pd.DataFrame({"step": [0], "loss": [1.0]}).to_csv(bad, index=False)
    assert main(["figure", "loss", "--logs", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "missing --methods --seeds" in capsys.readouterr().err
    assert main(["figure", "loss", "--logs", str(bad), "--methods", "baseline", "fairdiffusion",
                 "--seeds", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--methods has 2 value(s) for 1 file(s)" in capsys.readouterr().err
    assert main(["figure", "samples", "--manifest", str(results / "data/synthfundus/manifest.csv"),
                 "--samples", *paths(results, "samples/synthfundus/*/seed0/test"),
                 "--methods", "baseline", "fairdiffusion",
                 "--attributes", json.dumps(ATTRIBUTES), "--attribute", "age",
                 "--out", str(tmp_path / "y")]) == 2
    assert "--attribute age" in capsys.readouterr().err
    assert main(["figure", "groups", "--out", str(tmp_path / "z")]) == 2
    assert "missing --metrics" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))
