"""`fairdiff semantic`: train on synthetic (or real) images, test on the real test split.

A classifier (`cnn.py`; evaluate.classifier) is trained on a training set -- the real training
split (reference, results/metrics/{dataset}/real/semantic.csv) or one run's images generated
from the real training split's prompts (labels from prompts.csv) -- and tested on the real test
split: one multi-head network for all labels, or one network per label (per_task). After every
epoch each label's AUC on the real val split is computed; the test predictions are those of the
last epoch or of each label's best-val-AUC epoch (select_epoch: best_val_auc, the authors'
selection; the first such epoch on ties). --epochs-out records every epoch's val AUC and the
chosen one. Per clinical label (`task`):

- AUC: one-vs-rest macro AUC = mean over classes c of the binary AUC of (y == c, p_c) (for two
  classes this is the ordinary binary AUC; with every class present it equals scikit-learn's
  roc_auc_score with multi_class="ovr", average="macro"). The binary AUC is computed from ranks
  (Mann-Whitney U, ties counting one half), which equals the area under the ROC curve: the
  bootstrap calls it 1000 times per label, where scikit-learn's input checks took ~15 s a job.
  Within a group the mean runs over the classes present in that group; a group where fewer
  than two classes occur has no AUC: it is skipped with a logged warning (and left out of
  ES-AUC and the gap). A group with no test image is skipped likewise.
- ES-AUC per attribute: AUC / (1 + alpha * sum_g |AUC - AUC_g|) (equity.equity_scaled).
- accuracy (argmax prediction), overall and per group.
- DPD (demographic-parity difference) per attribute, with y^ = argmax:
  max over classes c of [max_g P(y^ = c | g) - min_g P(y^ = c | g)].
- EOD (equalized-odds difference) per attribute: max over classes c and over the conditions
  y = c / y != c of [max_g P(y^ = c | condition, g) - min_g P(y^ = c | condition, g)]
  (groups with no row meeting a condition are left out of that condition).
  For two classes both reduce to the usual binary definitions (fairlearn's).
- AUC-gap per attribute (max - min group AUC).
Overall AUC and accuracy rows carry a seeded bootstrap 95% CI over test images (lower,
upper; evaluate.bootstrap resamples; 0 disables). Per-image class probabilities go to
--predictions (for paired image-bootstrap comparisons between arms).
"""

from __future__ import annotations

import argparse
import logging
import math

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from .. import io, models, runtime
from ..errors import FairDiffError
from ..cli import json_arg
from . import cnn, equity, images, stats, tidy

log = logging.getLogger(__name__)


def binary_auc(positive: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve of scores for a boolean target with both values present."""
    if not np.isfinite(scores).all():
        raise FairDiffError("AUC: the classifier's probabilities contain NaN or inf (did its "
                            "training diverge? lower evaluate.classifier.learning_rate)")
    positive = np.asarray(positive, dtype=bool)
    n_positive = int(positive.sum())
    n_negative = len(positive) - n_positive
    rank_sum = float(rankdata(scores)[positive].sum())
    return (rank_sum - n_positive * (n_positive + 1) / 2) / (n_positive * n_negative)


def auc(y: np.ndarray, probs: np.ndarray) -> float:
    """One-vs-rest macro AUC over the classes present in y; nan if fewer than two are present."""
    present = [c for c in np.unique(y) if c < probs.shape[1]]
    if len(present) < 2:
        return math.nan
    return float(np.mean([binary_auc(y == c, probs[:, c]) for c in present]))


def _rate_gap(predicted: np.ndarray, masks: list[np.ndarray], c: int) -> float:
    rates = [float((predicted[m] == c).mean()) for m in masks if m.any()]
    return max(rates) - min(rates) if len(rates) >= 2 else 0.0


def demographic_parity_difference(predicted: np.ndarray, masks: list[np.ndarray], n_classes: int) -> float:
    """max_c [max_g P(y^=c | g) - min_g P(y^=c | g)] (see module doc)."""
    return max(_rate_gap(predicted, masks, c) for c in range(n_classes))


def equalized_odds_difference(y: np.ndarray, predicted: np.ndarray, masks: list[np.ndarray],
                              n_classes: int) -> float:
    """max over c and y = c / y != c of the group gap in P(y^=c | condition, g)."""
    gaps = []
    for c in range(n_classes):
        for condition in (y == c, y != c):
            gaps.append(_rate_gap(predicted, [m & condition for m in masks], c))
    return max(gaps)


def evaluate(test_rows: pd.DataFrame, probs: dict[str, np.ndarray], labels: dict, attributes: dict,
             alpha: float, n_boot: int, seed: int, context: dict) -> list[dict]:
    """Tidy rows for every label: AUC/accuracy overall and per group, ES-AUC, DPD, EOD, gap."""
    targets = cnn.encode_targets(test_rows, labels)
    rows = []
    for label, classes in labels.items():
        y, p = targets[label], probs[label]
        predicted = p.argmax(axis=1)
        correct = (predicted == y).astype(float)
        group_auc: dict[str, list[float]] = {}
        for attribute, group, mask in images.groups(test_rows, attributes):
            n = int(mask.sum())
            if n == 0:
                log.warning("%s: no test image in %s=%s; skipped", label, attribute, group)
                continue
            value = auc(y[mask], p[mask])
            lower = upper = acc_lower = acc_upper = math.nan
            if attribute == "all":
                lower, upper = stats.bootstrap_ci(lambda i: auc(y[i], p[i]), n, n_boot, seed)
                acc_lower, acc_upper = stats.bootstrap_mean_ci(correct, n_boot, seed)
            rows.append(tidy.row(context, "accuracy", correct[mask].mean(), attribute, group, label,
                                 lower=acc_lower, upper=acc_upper, n=n))
            if math.isnan(value):
                log.warning("%s: AUC undefined for %s=%s (a single class among its %d test images); "
                            "group skipped", label, attribute, group, n)
                continue
            rows.append(tidy.row(context, "AUC", value, attribute, group, label,
                                 lower=lower, upper=upper, n=n))
            if attribute != "all":
                group_auc.setdefault(attribute, []).append(value)
        overall = next((r["value"] for r in rows
                        if r["task"] == label and r["metric"] == "AUC" and r["attribute"] == "all"), None)
        for attribute, values in attributes.items():
            masks = [test_rows[attribute].to_numpy() == g for g in values]
            if overall is not None and group_auc.get(attribute):
                rows.append(tidy.row(context, "ES-AUC",
                                     equity.equity_scaled(overall, group_auc[attribute], alpha, True),
                                     attribute, task=label))
                rows.append(tidy.row(context, "AUC-gap", equity.gap(group_auc[attribute]),
                                     attribute, task=label))
            rows.append(tidy.row(context, "DPD",
                                 demographic_parity_difference(predicted, masks, len(classes)),
                                 attribute, task=label))
            rows.append(tidy.row(context, "EOD",
                                 equalized_odds_difference(y, predicted, masks, len(classes)),
                                 attribute, task=label))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", required=True,
                        help="training images: a samples folder / prompts.csv, or the manifest with --train-split")
    parser.add_argument("--train-split", default=None, help="manifest split to train on (reference: train)")
    parser.add_argument("--manifest", required=True, help="the dataset's manifest.csv (test split)")
    parser.add_argument("--dataset", type=json_arg, required=True, help="the dataset's config (JSON)")
    parser.add_argument("--evaluate", type=json_arg, required=True, help="config['evaluate'] (JSON)")
    parser.add_argument("--name", required=True, help="dataset name (the dataset column)")
    parser.add_argument("--method", required=True, help="arm name, or 'real' for the reference")
    parser.add_argument("--seed", type=int, required=True, help="classifier seed (the run's seed)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--out", required=True, help="output semantic.csv")
    parser.add_argument("--predictions", required=True,
                        help="output CSV of per-image test probabilities (id, label:class columns)")
    parser.add_argument("--epochs-out", default=None,
                        help="output CSV: task, epoch, train_loss, val_AUC, selected")


def fit(heads: dict[str, int], train: tuple, val: tuple, test_images: np.ndarray,
        settings: dict, size: int, seed: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Train one classifier with a head per label in `heads` (train, val: (uint8 images, label
    -> class indices)); return each label's test probabilities at its chosen epoch, and one
    record per epoch and label (train_loss, val_AUC, selected)."""
    model = cnn.build(heads, settings, seed, size)
    records, best, chosen = [], {}, {}

    def after_epoch(epoch: int, loss: float) -> None:
        _, val_probs = cnn.predict(model, val[0], size)
        improved = []
        for label in heads:
            value = auc(val[1][label], val_probs[label])
            records.append({"task": label, "epoch": epoch, "train_loss": loss, "val_AUC": value})
            if value > best.get(label, -math.inf):  # nan (a single class in val) never improves
                best[label] = value
                improved.append(label)
        if settings["select_epoch"] == "best_val_auc" and improved:
            _, test_probs = cnn.predict(model, test_images, size)
            chosen.update({label: (epoch, test_probs[label]) for label in improved})

    cnn.train(model, *train, settings, size, seed, after_epoch=after_epoch)
    if settings["select_epoch"] == "last":
        _, test_probs = cnn.predict(model, test_images, size)
        chosen = {label: (settings["epochs"], test_probs[label]) for label in heads}
    missing = [label for label in heads if label not in chosen]
    if missing:
        raise FairDiffError(f"evaluate.classifier.select_epoch: best_val_auc needs a val AUC, but "
                            f"the real val split holds a single class of {', '.join(missing)}")
    for record in records:
        record["selected"] = record["epoch"] == chosen[record["task"]][0]
    return {label: probs for label, (_, probs) in chosen.items()}, records


def run(args: argparse.Namespace) -> None:
    runtime.set_threads(args.threads)
    attributes, labels = args.dataset["attributes"], args.dataset["labels"]
    settings = cnn.with_defaults(args.evaluate["classifier"])
    size = settings["resolution"] or args.dataset["resolution"]
    train_rows = images.read_table(args.train, args.train_split, attributes, labels)
    val_rows = images.read_table(args.manifest, "val", attributes, labels)
    test_rows = images.read_table(args.manifest, "test", attributes, labels)
    # resized once at loading, as the authors' loaders (10000 train images at 512 px: 7.9 GB)
    train = (models.read_images(train_rows.attrs["source"], train_rows, resize=size), cnn.encode_targets(train_rows, labels))
    val = (models.read_images(val_rows.attrs["source"], val_rows, resize=size), cnn.encode_targets(val_rows, labels))
    test_images = models.read_images(test_rows.attrs["source"], test_rows, resize=size)
    heads = {k: len(v) for k, v in labels.items()}
    groups = [{k: n} for k, n in heads.items()] if settings["per_task"] else [heads]
    probs, records = {}, []
    for group in groups:
        log.info("training a %s classifier (%s) at %d px on %d images of %s", settings["backbone"],
                 ", ".join(group), size, len(train_rows), train_rows.attrs["source"])
        group_probs, group_records = fit(group, train, val, test_images, settings, size, args.seed)
        probs.update(group_probs)
        records += group_records
    context = {"dataset": args.name, "method": args.method, "seed": args.seed,
               "extractor": settings["backbone"]}
    rows = evaluate(test_rows, probs, labels, attributes, args.evaluate["alpha"],
                    args.evaluate["bootstrap"], args.seed, context)
    predictions = pd.DataFrame({"id": test_rows["id"]})
    for label, classes in labels.items():
        for i, c in enumerate(classes):
            predictions[f"{label}:{c}"] = probs[label][:, i]
    io.write_csv(args.predictions, predictions)
    if args.epochs_out is not None:
        epochs = pd.DataFrame(records)
        epochs.insert(0, "seed", args.seed)
        epochs.insert(0, "method", args.method)
        epochs.insert(0, "dataset", args.name)
        io.write_csv(args.epochs_out, epochs)
    io.write_csv(args.out, tidy.frame(rows))
    io.write_run_info_beside(args.out, args)
