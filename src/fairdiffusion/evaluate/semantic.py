"""`fairdiff semantic`: train on synthetic (or real) images, test on the real test split.

One multi-head classifier (`cnn.py`; evaluate.classifier) is trained once on a training set
-- the real training split (reference, results/metrics/{dataset}/real/semantic.csv) or one
run's images generated from the real training split's prompts (labels from prompts.csv) --
and tested on the real test split. Per clinical label (`task`):

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


def run(args: argparse.Namespace) -> None:
    runtime.set_threads(args.threads)
    attributes, labels = args.dataset["attributes"], args.dataset["labels"]
    size, settings = args.dataset["resolution"], args.evaluate["classifier"]
    train_rows = images.read_table(args.train, args.train_split, attributes, labels)
    test_rows = images.read_table(args.manifest, "test", attributes, labels)
    log.info("training the classifier on %d images of %s", len(train_rows), train_rows.attrs["source"])
    model = cnn.build({k: len(v) for k, v in labels.items()}, settings, args.seed)
    train_images = models.read_images(train_rows.attrs["source"], train_rows)
    cnn.train(model, train_images, cnn.encode_targets(train_rows, labels), settings, size,
              args.seed)
    test_images = models.read_images(test_rows.attrs["source"], test_rows)
    _, probs = cnn.predict(model, test_images, size)
    context = {"dataset": args.name, "method": args.method, "seed": args.seed,
               "extractor": settings.get("backbone", "small")}
    rows = evaluate(test_rows, probs, labels, attributes, args.evaluate["alpha"],
                    args.evaluate["bootstrap"], args.seed, context)
    predictions = pd.DataFrame({"id": test_rows["id"]})
    for label, classes in labels.items():
        for i, c in enumerate(classes):
            predictions[f"{label}:{c}"] = probs[label][:, i]
    io.write_csv(args.predictions, predictions)
    io.write_csv(args.out, tidy.frame(rows))
    io.write_run_info_beside(args.out, args)
