"""`fairdiff measure` (SynthFundus only): measured-label accuracy of an image set, by group.

`fairdiffusion.data.synthetic.measure` reads every clinical label back from an image; the
accuracy of label L is the share of images whose measured L equals the L of the image's
prompt (generated images) or of its manifest row (real test images: the ceiling reference).
Task `all` is the share of images with every label right. Task `race` (when the dataset
declares SynthFundus' three race groups) is a diagnostic, not a label: the share of images whose
pigment shows the race of the prompt (`synthetic.rendered_race`); a generator that draws every
fundus in the majority's colours is visible there, whatever its label accuracy. Rows: accuracy
per task, overall and per group of every attribute (n = images of the group), with a seeded
bootstrap 95% CI over the images, plus `accuracy-gap` (max - min group accuracy) and ES-accuracy
(equity.equity_scaled, higher is better) per attribute. A group with no image is skipped with
a warning. Per-image measured labels go to --per-image (for paired image-bootstrap tests).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd

from .. import io, models, runtime
from ..cli import json_arg
from ..errors import FairDiffError
from . import equity, images, stats, tidy

log = logging.getLogger(__name__)


def correctness(rows: pd.DataFrame, measured: pd.DataFrame, labels: dict) -> dict[str, np.ndarray]:
    """task -> per-image 0/1 correctness (every label, and `all` = every label right)."""
    right = {label: (measured[label].to_numpy() == rows[label].to_numpy()).astype(float)
             for label in labels}
    right["all"] = np.prod(np.stack(list(right.values())), axis=0)
    return right


def evaluate(rows: pd.DataFrame, right: dict[str, np.ndarray], attributes: dict, alpha: float,
             n_boot: int, seed: int, context: dict) -> list[dict]:
    out = []
    for task, x in right.items():
        by_attribute: dict[str, list[float]] = {}
        overall = float(x.mean())
        for attribute, group, mask in images.groups(rows, attributes):
            n = int(mask.sum())
            if n == 0:
                log.warning("no image in %s=%s; skipped", attribute, group)
                continue
            lower, upper = stats.bootstrap_mean_ci(x[mask], n_boot, seed)
            value = float(x[mask].mean())
            out.append(tidy.row(context, "accuracy", value, attribute, group, task,
                                lower=lower, upper=upper, n=n))
            if attribute != "all":
                by_attribute.setdefault(attribute, []).append(value)
        for attribute, values in by_attribute.items():
            out.append(tidy.row(context, "ES-accuracy",
                                equity.equity_scaled(overall, values, alpha, True), attribute, task=task))
            out.append(tidy.row(context, "accuracy-gap", equity.gap(values), attribute, task=task))
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True, help="a samples folder / prompts.csv, or the manifest")
    parser.add_argument("--split", default=None, help="manifest split (real reference: test)")
    parser.add_argument("--dataset", type=json_arg, required=True, help="the dataset's config (JSON)")
    parser.add_argument("--evaluate", type=json_arg, required=True, help="config['evaluate'] (JSON)")
    parser.add_argument("--name", required=True, help="dataset name (the dataset column)")
    parser.add_argument("--method", required=True, help="arm name, or 'real' for the reference")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch, BLAS)")
    parser.add_argument("--out", required=True, help="output measured.csv")
    parser.add_argument("--per-image", required=True,
                        help="output CSV: id, then measured and intended value of every label")


def run(args: argparse.Namespace) -> None:
    runtime.set_threads(args.threads)
    from ..data.synthetic import ATTRIBUTES, measure

    if args.dataset.get("source") != "synthetic":
        raise FairDiffError(f"--dataset: measured-label accuracy needs source 'synthetic' (labels "
                            f"measurable from the image), got '{args.dataset.get('source')}'")
    attributes, labels = args.dataset["attributes"], args.dataset["labels"]
    rows = images.read_table(args.table, args.split, attributes, labels)
    log.info("measuring %d images of %s", len(rows), rows.attrs["source"])
    measured = measure(models.read_images(rows.attrs["source"], rows))
    right = correctness(rows, measured, labels)
    rendered = set(attributes.get("race", [])) == set(ATTRIBUTES["race"])
    if rendered:
        # A diagnostic beside the labels (not part of `all`): does the image show its group?
        right["race"] = (measured["race"].to_numpy() == rows["race"].to_numpy()).astype(float)
    context = {"dataset": args.name, "method": args.method, "seed": args.seed, "extractor": "measure"}
    out = evaluate(rows, right, attributes, args.evaluate["alpha"], args.evaluate["bootstrap"],
                   args.seed, context)
    per_image = pd.DataFrame({"id": rows["id"]})
    for label in [*labels, "race"] if rendered else labels:
        per_image[f"{label}:measured"] = measured[label].to_numpy()
        per_image[f"{label}:intended"] = rows[label].to_numpy()
    io.write_csv(args.per_image, per_image)
    io.write_csv(args.out, tidy.frame(out))
    io.write_run_info_beside(args.out, args)
