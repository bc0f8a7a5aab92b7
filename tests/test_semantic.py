"""The semantic classifiers: epoch selection on the real val split, per-task classifiers, the
torchvision architectures (EfficientNet-B1, ViT-B/16) and the paper config's plan."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from fairdiffusion.cli import main
from fairdiffusion.data import synthetic
from fairdiffusion.errors import FairDiffError
from fairdiffusion.evaluate import semantic

ATTRIBUTES = {"race": ["Asian", "Black", "White"]}
LABELS = {"glaucoma": synthetic.LABELS["glaucoma"], "cup_disc": synthetic.LABELS["cup_disc"]}


def toy_dataset(labels, n_train=96, n_val=48, n_test=48):
    return {"source": "synthetic", "resolution": 32, "attributes": ATTRIBUTES, "labels": labels,
            "synthetic": {"n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": 0,
                          "difficulty": 1.0}}


def build(data, **sizes):
    """A SynthFundus manifest (all its attributes and labels) in `data`; its path."""
    full = {**toy_dataset(synthetic.LABELS, **sizes), "attributes": synthetic.ATTRIBUTES}
    synthetic.build("toy", full, data).to_csv(data / "manifest.csv", index=False)
    return data / "manifest.csv"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    torch.set_num_threads(1)
    return build(tmp_path_factory.mktemp("semantic") / "data")


def run_semantic(manifest, out, labels, classifier):
    """`fairdiff semantic` trained on the real train split; (semantic, predictions, epochs)."""
    dataset = toy_dataset(labels)
    evaluate = {"alpha": 1.0, "bootstrap": 0, "classifier": classifier}
    out.mkdir(parents=True)
    assert main(["semantic", "--train", str(manifest), "--train-split", "train", "--manifest",
                 str(manifest), "--dataset", json.dumps(dataset), "--evaluate",
                 json.dumps(evaluate), "--name", "toy", "--method", "real", "--seed", "0",
                 "--threads", "1", "--out", str(out / "semantic.csv"), "--predictions",
                 str(out / "predictions.csv"), "--epochs-out", str(out / "epochs.csv")]) == 0
    return (pd.read_csv(out / "semantic.csv"), pd.read_csv(out / "predictions.csv"),
            pd.read_csv(out / "epochs.csv"))


def brightness_set(n, seed):
    """Noise images whose class is whether they are (slightly) brighter."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.integers(0, 200, (n, 16, 16, 3)) + 2 * y[:, None, None, None]
    return x.astype(np.uint8), {"glaucoma": y.astype(np.int64)}


SMALL = {"epochs": 5, "batch_size": 16, "learning_rate": 0.01, "schedule": "constant"}


def test_best_val_auc_epoch_is_chosen_and_its_test_predictions_returned():
    """The small CNN overfits 64 noise images with a faint signal: the val AUC peaks at a
    middle epoch, neither the first nor the last."""
    torch.set_num_threads(1)
    train, val = brightness_set(64, 0), brightness_set(48, 1)
    test_images = brightness_set(40, 2)[0]
    settings = {**SMALL, "select_epoch": "best_val_auc"}
    probs, records = semantic.fit({"glaucoma": 2}, train, val, test_images, settings, 16, seed=0)
    frame = pd.DataFrame(records)
    assert frame["epoch"].tolist() == [1, 2, 3, 4, 5]
    best = int(frame.loc[frame["val_AUC"].idxmax(), "epoch"])
    assert 1 < best < 5, "the constructed case must peak at a middle epoch"
    assert (frame["val_AUC"] < frame["val_AUC"].max()).sum() == 4  # a unique maximum
    assert frame.loc[frame["selected"], "epoch"].tolist() == [best]
    # the same seed trained for `best` epochs (a constant rate: its first epochs are identical)
    again, last = semantic.fit({"glaucoma": 2}, train, val, test_images,
                               {**SMALL, "epochs": best, "select_epoch": "last"}, 16, seed=0)
    assert np.array_equal(probs["glaucoma"], again["glaucoma"])
    assert [r["selected"] for r in last] == [False] * (best - 1) + [True]
    assert [r["val_AUC"] for r in last] == frame["val_AUC"].tolist()[:best]
    # and the last epoch's predictions differ from them
    final, _ = semantic.fit({"glaucoma": 2}, train, val, test_images,
                            {**SMALL, "select_epoch": "last"}, 16, seed=0)
    assert not np.array_equal(final["glaucoma"], probs["glaucoma"])


def test_best_val_auc_needs_two_classes_in_val():
    train = brightness_set(32, 0)
    val = (brightness_set(16, 1)[0], {"glaucoma": np.zeros(16, dtype=np.int64)})
    with pytest.raises(FairDiffError, match="select_epoch.*single class of glaucoma"):
        semantic.fit({"glaucoma": 2}, train, val, val[0],
                     {**SMALL, "epochs": 1, "select_epoch": "best_val_auc"}, 16, seed=0)


def test_per_task_classifiers_are_separate(manifest, tmp_path):
    """Per task, glaucoma's classifier does not depend on the other labels; one multi-head
    classifier (a shared trunk trained on the summed loss) does."""
    small = {"epochs": 2, "batch_size": 32, "learning_rate": 0.003}
    glaucoma = {"glaucoma": LABELS["glaucoma"]}
    both = dict(LABELS)
    columns = [f"glaucoma:{c}" for c in LABELS["glaucoma"]]
    per_task = {**small, "per_task": True}
    _, alone, _ = run_semantic(manifest, tmp_path / "alone", glaucoma, per_task)
    sem, with_other, epochs = run_semantic(manifest, tmp_path / "both", both, per_task)
    assert np.array_equal(alone[columns].to_numpy(), with_other[columns].to_numpy())
    # each task's own training: its own loss, one selected (the last) epoch per task
    loss = epochs.pivot(index="epoch", columns="task", values="train_loss")
    assert (loss["glaucoma"] != loss["cup_disc"]).all()
    assert epochs.groupby("task")["selected"].sum().to_dict() == {"cup_disc": 1, "glaucoma": 1}
    assert sorted(sem.loc[sem.metric == "AUC", "task"].unique()) == sorted(both)
    _, shared_alone, _ = run_semantic(manifest, tmp_path / "shared_alone", glaucoma, small)
    _, shared_both, _ = run_semantic(manifest, tmp_path / "shared_both", both, small)
    assert not np.allclose(shared_alone[columns].to_numpy(), shared_both[columns].to_numpy())


@pytest.mark.parametrize("backbone, resolution", [("efficientnet_b1", 48), ("vit_b_16", 32)])
def test_torchvision_classifier_trains_and_selects_an_epoch(manifest, tmp_path, backbone,
                                                            resolution):
    """A tiny real run (random initial weights) at a resolution other than the images' 32 px."""
    classifier = {"backbone": backbone, "resolution": resolution, "epochs": 2, "batch_size": 16,
                  "learning_rate": 0.001, "betas": [0.0, 0.1], "weight_decay": 0.0,
                  "schedule": "constant", "select_epoch": "best_val_auc"}
    small = build(tmp_path / "data", n_train=16, n_val=16, n_test=16)
    sem, predictions, epochs = run_semantic(small, tmp_path / "out",
                                            {"glaucoma": LABELS["glaucoma"]}, classifier)
    assert set(sem["extractor"]) == {backbone}
    auc = sem[(sem.metric == "AUC") & (sem.attribute == "all")]["value"]
    assert len(auc) == 1 and 0.0 <= auc.iloc[0] <= 1.0
    assert len(predictions) == 16
    assert epochs["epoch"].tolist() == [1, 2] and epochs["selected"].sum() == 1
    chosen = epochs.loc[epochs["selected"], "val_AUC"].iloc[0]
    assert chosen == epochs["val_AUC"].max()


def test_paper_config_plans_one_efficientnet_b1_per_task_with_selected_epochs(root):
    run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "-p", "--configfile", "configs/paper.yaml",
         "--replace-workflow-config",
         "results/metrics/fairgenmed/baseline/seed0/semantic.csv"],
        capture_output=True, text=True, cwd=root)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    weights = "resources/torchvision/efficientnet_b1-c27df63c.pth"
    assert "rule download_torchvision_weights:" in out and f"output: {weights}" in out
    assert ("--url https://download.pytorch.org/models/efficientnet_b1-c27df63c.pth "
            "--sha256-prefix c27df63c") in out
    command = next(line for line in out.splitlines() if "fairdiff semantic" in line)
    evaluate = json.loads(command.split("--evaluate '")[1].split("'")[0])
    chosen = {k: evaluate["classifier"][k] for k in ("backbone", "backbone_weights", "per_task",
                                                      "select_epoch", "resolution", "betas")}
    assert chosen == {"backbone": "efficientnet_b1", "backbone_weights": weights, "per_task": True,
                      "select_epoch": "best_val_auc", "resolution": 200, "betas": [0.0, 0.1]}
    assert "semantic_epochs.csv" in command
