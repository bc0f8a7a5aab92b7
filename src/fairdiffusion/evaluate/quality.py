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
  compared (per comparison, so a group's value equals KID computed on that group alone); its
  100 subsets are evaluated together (`kid`: torch-fidelity's kernel and estimator, kernel
  rows computed once per comparison instead of three kernels per subset);
- ES-FID, ES-KID, ES-IS per attribute (equity.equity_scaled, alpha = evaluate.alpha) over the
  groups evaluated; `<metric>-gap` per attribute = max - min group value, for every metric;
- FID rows carry a percentile bootstrap 95% CI (lower/upper) over evaluate.bootstrap resamples
  of the generated and the real images of the comparison; KID and IS carry the std of their
  estimator over subsets/splits instead (a bootstrap of KID would repeat its 100 subsets per
  resample).
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import torch

from .. import io, runtime
from ..cli import json_arg
from ..errors import FairDiffError
from . import equity, features, images, stats, tidy

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
    from torch_fidelity.metric_prc import prc_featuresdict_to_metric

    n1, n2 = len(generated[layers["fid"]]), len(real[layers["fid"]])
    kw = fidelity_kwargs(n1, n2, kid_subset_size)
    out = {}
    if "FID" in metrics:
        fid = fid_statistics_to_metric(fid_featuresdict_to_statistics(generated, layers["fid"]),
                                       fid_featuresdict_to_statistics(real, layers["fid"]), verbose=False)
        out["FID"] = (fid["frechet_inception_distance"], np.nan)
    if "KID" in metrics:
        out["KID"] = kid(generated[layers["kid"]], real[layers["kid"]], kw)
    if "IS" in metrics:
        isc = isc_featuresdict_to_metric(generated, layers["isc"], **kw)
        out["IS"] = (isc["inception_score_mean"], isc["inception_score_std"])
    if "PR" in metrics:
        prc = prc_featuresdict_to_metric(generated, real, layers["prc"], **kw)
        out.update({"precision": (prc["precision"], np.nan), "recall": (prc["recall"], np.nan),
                    "F-score": (prc["f_score"], np.nan)})
    return out


def kid(features_1: torch.Tensor, features_2: torch.Tensor, kw: dict,
        chunk: int = 1024) -> tuple[float, float]:
    """(mean, std) of torch-fidelity's KID -- its kernel function, its subset draws (the same
    RandomState sequence), its unbiased MMD^2 estimator -- for all subsets at once.

    torch-fidelity builds three m x m kernels for each of 100 subsets in Python; here each
    subset is a 0/1 row of an indicator matrix and the estimator's block sums of the kernel are
    `(indicator @ K) * indicator` summed, over kernel rows computed once, in chunks of `chunk`
    rows (memory stays O(subsets x n), never n x n), in the features' precision like
    torch-fidelity (float64 features give its float64 result to 1e-10).
    """
    from torch_fidelity.metric_kid import kernel_poly, kernel_rbf

    x, y = (f.detach().cpu().numpy() for f in (features_1, features_2))
    size, subsets = kw["kid_subset_size"], kw["kid_subsets"]
    if size > min(len(x), len(y)):
        raise FairDiffError(f"KID subset size {size} exceeds the smaller set ({min(len(x), len(y))})")
    kernel = {"poly": kernel_poly, "rbf": kernel_rbf}[kw["kid_kernel"]]
    rng = np.random.RandomState(kw["rng_seed"])
    in_x, in_y = np.zeros((subsets, len(x)), x.dtype), np.zeros((subsets, len(y)), y.dtype)
    for s in range(subsets):
        in_x[s, rng.choice(len(x), size, replace=False)] = 1
        in_y[s, rng.choice(len(y), size, replace=False)] = 1

    def block_sums(u, v, rows, cols, off_diagonal):
        total = np.zeros(subsets)
        for start in range(0, len(u), chunk):
            k = kernel(u[start:start + chunk], v, **kw)
            if off_diagonal:
                k[np.arange(len(k)), start + np.arange(len(k))] = 0
            total += ((rows[:, start:start + chunk] @ k) * cols).sum(axis=1, dtype=np.float64)
        return total

    within = block_sums(x, x, in_x, in_x, True) + block_sums(y, y, in_y, in_y, True)
    between = block_sums(x, y, in_x, in_y, False)
    mmds = within / (size * (size - 1)) - 2 * between / size**2
    return float(mmds.mean()), float(mmds.std())


def fid_batch(generated: torch.Tensor, real: torch.Tensor, gen_index: np.ndarray,
              real_index: np.ndarray) -> np.ndarray:
    """FID of many resamples at once: row b compares generated[gen_index[b]] with
    real[real_index[b]] (the closed form torch-fidelity evaluates with scipy's sqrtm, as
    |mu1 - mu2|^2 + tr S1 + tr S2 - 2 sum sqrt eig(S1^1/2 S2 S1^1/2), batched in float64)."""

    def moments(x: torch.Tensor, index: np.ndarray):
        xs = x.double()[torch.from_numpy(index)]
        mu = xs.mean(dim=1)
        centred = xs - mu[:, None]
        return mu, centred.transpose(1, 2) @ centred / (xs.shape[1] - 1)

    mu1, s1 = moments(generated, gen_index)
    mu2, s2 = moments(real, real_index)
    w, v = torch.linalg.eigh(s1)
    root = v @ torch.diag_embed(w.clamp(min=0).sqrt()) @ v.transpose(1, 2)
    cross = torch.linalg.eigvalsh(root @ s2 @ root).clamp(min=0).sqrt().sum(dim=1)
    trace = torch.diagonal(s1, dim1=1, dim2=2).sum(1) + torch.diagonal(s2, dim1=1, dim2=2).sum(1)
    return ((mu1 - mu2).pow(2).sum(1) + trace - 2 * cross).numpy()


def fid_ci(generated: torch.Tensor, real: torch.Tensor, n_boot: int, seed: int,
           chunk: int = 100) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of FID (generated and real images resampled independently)."""
    if n_boot <= 0:
        return np.nan, np.nan
    gen_index = stats.bootstrap_indices(len(generated), n_boot, seed)
    real_index = stats.bootstrap_indices(len(real), n_boot, seed + 1)
    values = np.concatenate([fid_batch(generated, real, gen_index[i:i + chunk],
                                       real_index[i:i + chunk]) for i in range(0, n_boot, chunk)])
    return stats.percentile_ci(values)


def subset(feats: dict, mask: np.ndarray) -> dict:
    index = torch.from_numpy(np.flatnonzero(mask))
    return {k: v[index] for k, v in feats.items()}


def evaluate(generated: dict, gen_rows, real: dict, real_rows, attributes: dict, layers: dict,
             kid_subset_size: int, alpha: float, context: dict, n_boot: int = 0,
             seed: int = 0) -> list[dict]:
    """Tidy rows: every metric overall and per group (FID with an `n_boot` bootstrap CI), then
    ES-metrics and gaps per attribute."""
    rows, per_attribute = [], {}
    real_groups = {(a, g): m for a, g, m in images.groups(real_rows, attributes)}
    for attribute, group, gen_mask in images.groups(gen_rows, attributes):
        real_mask = real_groups[attribute, group]
        n_gen, n_real = int(gen_mask.sum()), int(real_mask.sum())
        if min(n_gen, n_real) < MIN_IMAGES:
            log.warning("skipping %s=%s: %d generated / %d real images (< %d)",
                        attribute, group, n_gen, n_real, MIN_IMAGES)
            continue
        gen_set, real_set = subset(generated, gen_mask), subset(real, real_mask)
        values = compute(gen_set, real_set, layers, kid_subset_size)
        lower, upper = fid_ci(gen_set[layers["fid"]], real_set[layers["fid"]], n_boot, seed)
        for metric, (value, std) in values.items():
            ci = (lower, upper) if metric == "FID" else (np.nan, np.nan)
            rows.append(tidy.row(context, metric, value, attribute, group, std=std, lower=ci[0],
                                 upper=ci[1], n=n_gen))
            if attribute != "all":
                per_attribute.setdefault((attribute, metric), []).append(value)
    overall = {r["metric"]: r["value"] for r in rows if r["attribute"] == "all"}
    if not overall:
        where = " vs ".join(str(r.attrs.get("source", "")) for r in (gen_rows, real_rows))
        raise FairDiffError(f"{where}: too few images to evaluate (fewer than {MIN_IMAGES} "
                            f"generated or real)")
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
                    args.evaluate["kid_subset_size"], args.evaluate["alpha"], context,
                    args.evaluate["bootstrap"], args.seed)
    io.write_csv(args.out, tidy.frame(rows))
    io.write_run_info_beside(args.out, args)
