"""`fairdiff quality`: FID, KID, IS and precision/recall overall and per group, with ES-metrics.

Everything is computed from two cached feature files (`fairdiff features`): the generated
images of one run (input1, grouped by the attributes in their prompts) and the real test
images (input2, grouped by their manifest attributes). Group g's metrics compare the
generated images whose prompt names g with the real test images of g; IS uses the
generated images of g alone. The maths is torch-fidelity's (its *_featuresdict_to_* /
*_statistics_to_* functions), fed the cached features -- no network runs here.

Rules:
- a group with fewer than MIN_IMAGES images on either side is skipped with a warning (no
  metric is defined on a handful of images: FID needs a covariance, PR a k=3 neighbourhood,
  IS 10 splits);
- KID's subset size is evaluate.kid_subset_size capped at half the smaller of the two sets
  compared (per comparison, so a group's value equals KID computed on that group alone);
- ES-FID, ES-KID, ES-IS per attribute (equity.equity_scaled, alpha = evaluate.alpha) over the
  groups evaluated; `<metric>-gap` per attribute = max - min group value, for every metric.
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

from .. import io, runtime
from ..cli import json_arg
from ..errors import FairDiffError
from . import equity, features, images, tidy

log = logging.getLogger(__name__)

MIN_IMAGES = 10
ES_METRICS = ("FID", "KID", "IS")


def fidelity_kwargs(n1: int, n2: int, kid_subset_size: int) -> dict:
    """torch-fidelity's defaults with the KID subset capped at half the smaller set."""
    from torch_fidelity.defaults import DEFAULTS

    return {**DEFAULTS, "cuda": False, "verbose": False, "save_cpu_ram": True,
            "kid_subset_size": min(kid_subset_size, min(n1, n2) // 2)}


def compute(generated: dict, real: dict, layers: dict, kid_subset_size: int,
            metrics: tuple[str, ...] = ("FID", "KID", "IS", "PR")) -> dict:
    """metric -> (value, std) for one pair of feature sets (generated = input1, real = input2).

    `metrics` picks among FID, KID, IS and PR (precision, recall and F-score).
    """
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_isc import isc_featuresdict_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric
    from torch_fidelity.metric_prc import prc_featuresdict_to_metric

    n1, n2 = len(generated[layers["fid"]]), len(real[layers["fid"]])
    kw = fidelity_kwargs(n1, n2, kid_subset_size)
    out = {}
    if "FID" in metrics:
        fid = fid_statistics_to_metric(fid_featuresdict_to_statistics(generated, layers["fid"]),
                                       fid_featuresdict_to_statistics(real, layers["fid"]), verbose=False)
        out["FID"] = (fid["frechet_inception_distance"], np.nan)
    if "KID" in metrics:
        kid = kid_featuresdict_to_metric(generated, real, layers["kid"], **kw)
        out["KID"] = (kid["kernel_inception_distance_mean"], kid["kernel_inception_distance_std"])
    if "IS" in metrics:
        isc = isc_featuresdict_to_metric(generated, layers["isc"], **kw)
        out["IS"] = (isc["inception_score_mean"], isc["inception_score_std"])
    if "PR" in metrics:
        prc = prc_featuresdict_to_metric(generated, real, layers["prc"], **kw)
        out.update({"precision": (prc["precision"], np.nan), "recall": (prc["recall"], np.nan),
                    "F-score": (prc["f_score"], np.nan)})
    return out


def subset(feats: dict, mask: np.ndarray) -> dict:
    index = torch.from_numpy(np.flatnonzero(mask))
    return {k: v[index] for k, v in feats.items()}


def evaluate(generated: dict, gen_rows, real: dict, real_rows, attributes: dict, layers: dict,
             kid_subset_size: int, alpha: float, context: dict) -> list[dict]:
    """Tidy rows: every metric overall and per group, then ES-metrics and gaps per attribute."""
    rows, per_attribute = [], {}
    real_groups = {(a, g): m for a, g, m in images.groups(real_rows, attributes)}
    for attribute, group, gen_mask in images.groups(gen_rows, attributes):
        real_mask = real_groups[attribute, group]
        n_gen, n_real = int(gen_mask.sum()), int(real_mask.sum())
        if min(n_gen, n_real) < MIN_IMAGES:
            log.warning("skipping %s=%s: %d generated / %d real images (< %d)",
                        attribute, group, n_gen, n_real, MIN_IMAGES)
            continue
        values = compute(subset(generated, gen_mask), subset(real, real_mask), layers, kid_subset_size)
        for metric, (value, std) in values.items():
            rows.append(tidy.row(context, metric, value, attribute, group, std=std, n=n_gen))
            if attribute != "all":
                per_attribute.setdefault((attribute, metric), []).append(value)
    overall = {r["metric"]: r["value"] for r in rows if r["attribute"] == "all"}
    if not overall:
        raise FairDiffError(f"too few images to evaluate (fewer than {MIN_IMAGES} generated or real)")
    for attribute in attributes:
        for metric in overall:
            group_values = per_attribute.get((attribute, metric), [])
            if not group_values:
                continue
            if metric in ES_METRICS:
                es = equity.equity_scaled(overall[metric], group_values, alpha,
                                          equity.HIGHER_IS_BETTER[metric])
                rows.append(tidy.row(context, f"ES-{metric}", es, attribute))
            rows.append(tidy.row(context, f"{metric}-gap", equity.gap(group_values), attribute))
    return rows


def aligned(path: str, rows, what: str):
    """Features of a cached file, checked to be in the table's row order."""
    feats, ids, tag, layers = features.load(path)
    if ids != rows["id"].astype(str).tolist():
        raise FairDiffError(f"{path}: its ids do not match the rows of {rows.attrs['source']} "
                            f"({what}); re-extract the features")
    return feats, tag, layers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", required=True, help="features of the generated images")
    parser.add_argument("--generated-table", required=True, help="their samples folder or prompts.csv")
    parser.add_argument("--real", required=True, help="features of the real test images")
    parser.add_argument("--manifest", required=True, help="the dataset's manifest.csv")
    parser.add_argument("--split", default="test", help="manifest split of the real features")
    parser.add_argument("--dataset", type=json_arg, required=True, help="the dataset's config (JSON)")
    parser.add_argument("--evaluate", type=json_arg, required=True, help="config['evaluate'] (JSON)")
    parser.add_argument("--name", required=True, help="dataset name (the dataset column)")
    parser.add_argument("--method", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (torch, BLAS)")
    parser.add_argument("--out", required=True, help="output quality.csv")


def run(args: argparse.Namespace) -> None:
    runtime.set_threads(args.threads)
    attributes, labels = args.dataset["attributes"], args.dataset["labels"]
    gen_rows = images.read_table(args.generated_table, None, attributes, labels)
    real_rows = images.read_table(args.manifest, args.split, attributes, labels)
    generated, tag, layers = aligned(args.generated, gen_rows, "generated")
    real, real_tag, _ = aligned(args.real, real_rows, "real")
    if tag != real_tag:
        raise FairDiffError(f"{args.generated}: extractor {tag} differs from {args.real}'s {real_tag}")
    context = {"dataset": args.name, "method": args.method, "seed": args.seed, "extractor": tag}
    rows = evaluate(generated, gen_rows, real, real_rows, attributes, layers,
                    args.evaluate["kid_subset_size"], args.evaluate["alpha"], context)
    io.write_csv(args.out, tidy.frame(rows))
