"""Small stand-ins for the pipeline's outputs that the report stage reads (metric CSVs, training
logs, sample folders, a manifest), laid out as the pipeline lays them out."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

ATTRIBUTES = {"race": ["Asian", "Black", "White"], "gender": ["Female", "Male"]}
TASKS = ["glaucoma", "cup_disc"]


def row(method, seed, metric, value, task="", attribute="all", group="all", extractor="domain",
        dataset="synthfundus"):
    return dict(dataset=dataset, method=method, seed=seed, metric=metric, task=task,
                attribute=attribute, group=group, extractor=extractor, value=value)


def quality_rows(method, seed, fid, is_, kid):
    """Overall, group-wise and equity-scaled FID/IS/KID; groups offset from the overall value."""
    rows = [row(method, seed, "FID", fid), row(method, seed, "IS", is_),
            row(method, seed, "KID", kid)]
    for attribute, groups in ATTRIBUTES.items():
        for name, value in (("FID", fid), ("IS", is_), ("KID", kid)):
            rows.append(row(method, seed, f"ES-{name}", value * 1.5, attribute=attribute))
        for k, group in enumerate(groups):
            rows.append(row(method, seed, "FID", fid + k, attribute=attribute, group=group))
            rows.append(row(method, seed, "IS", is_ - 0.1 * k, attribute=attribute, group=group))
    return rows


def semantic_rows(method, seed, auc):
    rows = []
    for t, task in enumerate(TASKS):
        rows.append(row(method, seed, "AUC", auc - 0.01 * t, task=task, extractor=""))
        for attribute, groups in ATTRIBUTES.items():
            rows.append(row(method, seed, "ES-AUC", auc - 0.05, task=task, attribute=attribute,
                            extractor=""))
            for k, group in enumerate(groups):
                rows.append(row(method, seed, "AUC", auc - 0.02 * k, task=task,
                                attribute=attribute, group=group, extractor=""))
    return rows


def measured_rows(method, seed, accuracy):
    rows = []
    for task in TASKS:
        rows.append(row(method, seed, "accuracy", accuracy, task=task, extractor=""))
        for k, group in enumerate(ATTRIBUTES["race"]):
            rows.append(row(method, seed, "accuracy", accuracy - 0.05 * k, task=task,
                            attribute="race", group=group, extractor=""))
    return rows


def write(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def image(path: Path, rng: np.random.Generator, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def pipeline_outputs(results: Path, methods=("baseline", "fairdiffusion"), seeds=(0, 1),
                     dataset="synthfundus") -> None:
    """Every file the report rules read, for one dataset, under `results`."""
    rng = np.random.default_rng(0)
    # Manifest: 4 train + 6 test rows, two test rows per race group.
    data = results / "data" / dataset
    rows = []
    for i in range(10):
        race = ATTRIBUTES["race"][i % 3]
        rows.append(dict(id=f"r{i}", split="train" if i < 4 else "test", image=f"images/{i}.png",
                         prompt=f"fundus of a {race} patient", race=race,
                         gender=ATTRIBUTES["gender"][i % 2], glaucoma="glaucoma",
                         cup_disc="normal"))
        image(data / f"images/{i}.png", rng)
    manifest = pd.DataFrame(rows)
    manifest.to_csv(data / "manifest.csv", index=False)

    for m, method in enumerate(methods):
        for seed in seeds:
            metrics = results / "metrics" / dataset / method / f"seed{seed}"
            write(metrics / "quality.csv", [{**r, "dataset": dataset} for r in
                                            quality_rows(method, seed, 20.0 - m + seed, 3.0 + m,
                                                         0.02)])
            write(metrics / "semantic.csv", [{**r, "dataset": dataset} for r in
                                             semantic_rows(method, seed, 0.7 + 0.02 * m)])
            write(metrics / "measured.csv", [{**r, "dataset": dataset} for r in
                                             measured_rows(method, seed, 0.6 + 0.05 * m)])
            run = results / "models" / dataset / method / f"seed{seed}"
            steps = np.arange(0, 60, 10)
            write(run / "train_log.csv", [dict(step=s, loss=1 / (s + 5), lr=1e-3, time=0.1 * s)
                                          for s in steps])
            trajectory = []
            for step in range(60):
                entry = {"step": step, "kind": "step"}
                for attribute, groups in ATTRIBUTES.items():
                    for group in groups:
                        entry[f"sigma_{attribute}_{group}"] = float(rng.random())
                entry["acq_value"] = np.nan
                for attribute in ATTRIBUTES:
                    entry[f"gap_{attribute}"] = float(rng.random())
                entry.update(mean_loss=0.1, y=-0.5, y_vr=-0.5, y_window_mean=np.nan, note="")
                trajectory.append(entry)
            write(run / "bo_trajectory.csv", trajectory)
            samples = results / "samples" / dataset / method / f"seed{seed}" / "test"
            test = manifest[manifest["split"] == "test"].drop(columns="split")
            # as fairdiff sample writes it: one id per generated copy, the manifest id as source_id
            test = test.assign(image=[f"{k:05d}.png" for k in range(len(test))],
                               source_id=test["id"], copy=0, id=test["id"] + "_0")
            for name in test["image"]:
                image(samples / name, rng)
            write(samples / "prompts.csv", test.to_dict("records"))
    real = results / "metrics" / dataset / "real"
    write(real / "quality.csv",
          [{**r, "dataset": dataset} for r in quality_rows("real", 0, 1.0, 3.0, 0.001)])
    write(real / "semantic.csv", [{**r, "dataset": dataset} for r in semantic_rows("real", 0, 0.9)])
    write(real / "measured.csv",
          [{**r, "dataset": dataset} for r in measured_rows("real", 0, 0.95)])
