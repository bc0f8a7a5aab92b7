"""`fairdiff quality`: FID, KID, IS and precision/recall overall and per group, with ES-metrics.

Everything is computed from cached feature files (`fairdiff features`): the generated images
of one run (input1, grouped by the attributes in their prompts), the real test images (input2,
grouped by their manifest attributes) and the real training images (MiFID's memorization
reference). With --generated-split the real training images take the generated role: a
perfect generator's values, the floor of every disparity. Group g's metrics compare the
generated images whose prompt names g with the real test images of g; IS uses the generated
images of g alone. The maths is torch-fidelity's (its *_featuresdict_to_* /
*_statistics_to_* functions), fed the cached features -- no network runs here.

FID, IS and precision/recall depend on the number of images (FID is biased up roughly like
1/n), so a small group scores worse than a large one even for a perfect generator. Hence two
estimates of every metric, side by side:
- size-matched (`FID`, `KID`, `IS`, `precision`, `recall`, `F-score`): every comparison, the
  overall one included, at the same n -- evaluate.matched_n, or by default the smallest
  evaluated group's size -- on n images drawn without replacement from each side; the value is
  the mean over evaluate.matched_draws seeded draws, `lower`/`upper` the 2.5/97.5 percentiles
  of the draws and `std` their spread. ES-metrics and gaps are computed from these means;
- raw (`FID-raw`, `KID-raw`, ...): each comparison at its own size, the authors' protocol
  (torchmetrics per group, examples/text_to_image/evaluate_fairdiffusion.py:153-184); FID-raw
  carries a percentile bootstrap 95% CI over evaluate.bootstrap resamples of the generated and
  the real images;
- `FID-inf` (Chong & Forsyth 2020, "Effectively Unbiased FID and Inception Score"): FID of each
  comparison at FID_INF_POINTS sizes from half its size to all of it (mean over the draws),
  a least-squares line in 1/n, its intercept; the CI is over the draws' intercepts;
- `MiFID` (overall, all images): torchmetrics' MemorizationInformedFrechetInceptionDistance
  maths with the real training images as the memorization reference (`mifid`).

Rules:
- a group with fewer than MIN_IMAGES images on either side is skipped with a warning (no
  metric is defined on a handful of images: FID needs a covariance, PR a k=3 neighbourhood,
  IS 10 splits); an evaluate.matched_n that an evaluated group cannot reach is an error;
- KID's subset size is evaluate.kid_subset_size capped at half the smaller of the two sets
  compared (per comparison, so a group's value equals KID computed on that group alone); its
  100 subsets are evaluated together (`kid`: torch-fidelity's kernel and estimator, kernel
  rows computed once per comparison instead of three kernels per subset); KID and IS carry the
  std of their estimator over subsets/splits where they are raw;
- ES-M per attribute (equity.equity_scaled, alpha = evaluate.alpha) over the groups evaluated,
  for M in FID, KID, IS (matched), their -raw rows and FID-inf; `<metric>-gap` per attribute =
  max - min group value, for every metric.
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
RAW = "-raw"
ES_METRICS = ("FID", "KID", "IS", "FID-raw", "KID-raw", "IS-raw", "FID-inf")
FID_INF_POINTS = 5
MIFID_EPS = 0.1  # torchmetrics' cosine_distance_eps default


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


def fid_chunked(generated: torch.Tensor, real: torch.Tensor, gen_index: np.ndarray,
                real_index: np.ndarray, chunk: int = 100) -> np.ndarray:
    """fid_batch over the rows of the index arrays, `chunk` rows at a time (bounded memory)."""
    return np.concatenate([fid_batch(generated, real, gen_index[i:i + chunk],
                                     real_index[i:i + chunk]) for i in range(0, len(gen_index), chunk)])


def fid_ci(generated: torch.Tensor, real: torch.Tensor, n_boot: int, seed: int) -> tuple[float, float]:
    """Percentile bootstrap 95% CI of FID (generated and real images resampled independently)."""
    if n_boot <= 0:
        return np.nan, np.nan
    gen_index = stats.bootstrap_indices(len(generated), n_boot, seed)
    real_index = stats.bootstrap_indices(len(real), n_boot, seed + 1)
    return stats.percentile_ci(fid_chunked(generated, real, gen_index, real_index))


def subset(feats: dict, mask: np.ndarray) -> dict:
    index = torch.from_numpy(np.flatnonzero(mask))
    return {k: v[index] for k, v in feats.items()}


def take(feats: dict, index: np.ndarray) -> dict:
    index = torch.from_numpy(index)
    return {k: v[index] for k, v in feats.items()}


def draw_indices(n_items: int, n: int, draws: int, rng: np.random.Generator) -> np.ndarray:
    """[draws, n] row indices, each row n distinct items of n_items (without replacement)."""
    return np.argsort(rng.random((draws, n_items)), axis=1)[:, :n]


def fid_draws(generated: torch.Tensor, real: torch.Tensor, n: int, draws: int,
              rng: np.random.Generator) -> np.ndarray:
    """FID of `draws` pairs of n-image subsets (without replacement)."""
    return fid_chunked(generated, real, draw_indices(len(generated), n, draws, rng),
                       draw_indices(len(real), n, draws, rng))


def fid_infinity(generated: torch.Tensor, real: torch.Tensor, draws: int,
                 rng: np.random.Generator) -> tuple[float, float, float]:
    """(FID-inf, lower, upper): FID at FID_INF_POINTS sizes from half the comparison to all of
    it, both sides drawn at that size, fitted by a line in 1/n (Chong & Forsyth 2020); the
    value is the intercept of the draws' mean, the CI the percentiles of each draw's intercept."""
    top = min(len(generated), len(real))
    sizes = np.unique(np.linspace(max(MIN_IMAGES, top // 2), top, FID_INF_POINTS).astype(int))
    if len(sizes) < 2:
        return np.nan, np.nan, np.nan
    values = np.stack([fid_draws(generated, real, int(n), draws, rng) for n in sizes])
    intercepts = np.polyfit(1.0 / sizes, values, 1)[1]
    return (float(np.polyfit(1.0 / sizes, values.mean(axis=1), 1)[1]),
            *stats.percentile_ci(intercepts))


def memorization_distance(reference: torch.Tensor, generated: torch.Tensor,
                          eps: float = MIFID_EPS) -> float:
    """torchmetrics' MiFID penalty: the mean over reference rows (all-zero rows dropped) of the
    smallest cosine distance 1 - |cos| to a generated row; 1 (no penalty) when it is >= eps."""
    ref = reference.double()[reference.double().sum(dim=1) != 0]
    gen = generated.double()[generated.double().sum(dim=1) != 0]
    ref, gen = ref / ref.norm(dim=1, keepdim=True), gen / gen.norm(dim=1, keepdim=True)
    distance = float((1.0 - (ref @ gen.T).abs()).min(dim=1).values.mean())
    return distance if distance < eps else 1.0


def mifid(generated: torch.Tensor, real: torch.Tensor, reference: torch.Tensor,
          eps: float = MIFID_EPS) -> float:
    """Memorization-informed FID: FID(generated, real) / memorization_distance(reference,
    generated), 0 when FID <= 1e-8 (torchmetrics.image.mifid._mifid_compute; torchmetrics uses
    one real set for both terms, here the memorization reference is the training split)."""
    index = (np.arange(len(generated))[None], np.arange(len(real))[None])
    fid = float(fid_batch(generated, real, *index)[0])
    return fid / (memorization_distance(reference, generated, eps) + 10e-15) if fid > 1e-8 else 0.0


def comparisons(generated: dict, gen_rows, real: dict, real_rows,
                attributes: dict) -> list[tuple[str, str, dict, dict]]:
    """(attribute, group, generated features, real features): overall first, then every group
    with at least MIN_IMAGES images on both sides (the others are skipped with a warning)."""
    out = []
    real_groups = {(a, g): m for a, g, m in images.groups(real_rows, attributes)}
    for attribute, group, gen_mask in images.groups(gen_rows, attributes):
        real_mask = real_groups[attribute, group]
        n_gen, n_real = int(gen_mask.sum()), int(real_mask.sum())
        if min(n_gen, n_real) < MIN_IMAGES:
            if attribute == "all":
                where = " vs ".join(str(r.attrs.get("source", "")) for r in (gen_rows, real_rows))
                raise FairDiffError(f"{where}: too few images to evaluate (fewer than "
                                    f"{MIN_IMAGES} generated or real)")
            log.warning("skipping %s=%s: %d generated / %d real images (< %d)",
                        attribute, group, n_gen, n_real, MIN_IMAGES)
            continue
        out.append((attribute, group, subset(generated, gen_mask), subset(real, real_mask)))
    return out


def count(feats: dict) -> int:
    return len(next(iter(feats.values())))


def matched_size(pairs: list, matched_n: int | None) -> int:
    """evaluate.matched_n, or the size of the smallest comparison (the smaller of its sides)."""
    sizes = {(a, g): min(count(gen), count(real)) for a, g, gen, real in pairs}
    (attribute, group), smallest = min(sizes.items(), key=lambda item: item[1])
    if matched_n is None:
        return smallest
    if matched_n > smallest:
        raise FairDiffError(f"evaluate.matched_n: {matched_n} images exceed the smallest "
                            f"evaluated group ({attribute}={group}: {smallest}); set it to at "
                            f"most {smallest}, or null for the smallest group's size")
    return matched_n


def raw_rows(pairs: list, layers: dict, kid_subset_size: int, context: dict, n_boot: int,
             seed: int) -> list[dict]:
    """Every metric of every comparison at its own size (`<metric>-raw`; FID-raw with a
    bootstrap CI)."""
    rows = []
    for attribute, group, gen_set, real_set in pairs:
        values = compute(gen_set, real_set, layers, kid_subset_size)
        lower, upper = fid_ci(gen_set[layers["fid"]], real_set[layers["fid"]], n_boot, seed)
        for metric, (value, std) in values.items():
            ci = (lower, upper) if metric == "FID" else (np.nan, np.nan)
            rows.append(tidy.row(context, metric + RAW, value, attribute, group, std=std,
                                 lower=ci[0], upper=ci[1], n=count(gen_set)))
    return rows


def matched_rows(pairs: list, layers: dict, kid_subset_size: int, context: dict, n: int,
                 draws: int, seed: int) -> list[dict]:
    """Every metric of every comparison at n images a side, over `draws` seeded draws (mean,
    std and 2.5/97.5 percentiles of the draws), then FID-inf of every comparison."""
    rows = []
    rng = np.random.default_rng([seed, n])
    for attribute, group, gen_set, real_set in pairs:
        gen_f, real_f = gen_set[layers["fid"]], real_set[layers["fid"]]
        gen_index = draw_indices(len(gen_f), n, draws, rng)
        real_index = draw_indices(len(real_f), n, draws, rng)
        values = {"FID": fid_chunked(gen_f, real_f, gen_index, real_index)}
        for g, r in zip(gen_index, real_index):
            for metric, (value, _) in compute(take(gen_set, g), take(real_set, r), layers,
                                              kid_subset_size, ("KID", "IS", "PR")).items():
                values.setdefault(metric, []).append(value)
        for metric, draw_values in values.items():
            draw_values = np.asarray(draw_values, dtype=float)
            lower, upper = stats.percentile_ci(draw_values)
            rows.append(tidy.row(context, metric, draw_values.mean(), attribute, group,
                                 std=draw_values.std(), lower=lower, upper=upper, n=n))
        value, lower, upper = fid_infinity(gen_f, real_f, draws, rng)
        rows.append(tidy.row(context, "FID-inf", value, attribute, group, lower=lower,
                             upper=upper, n=min(len(gen_f), len(real_f))))
    return rows


def equity_rows(rows: list[dict], attributes: dict, alpha: float, context: dict) -> list[dict]:
    """ES-M (M in ES_METRICS) and `<metric>-gap` of every metric, per attribute."""
    overall = {r["metric"]: r["value"] for r in rows if r["attribute"] == "all"}
    out = []
    for attribute in attributes:
        for metric in overall:
            group_values = [r["value"] for r in rows
                            if r["attribute"] == attribute and r["metric"] == metric]
            if not group_values:
                continue
            if metric in ES_METRICS:
                es = equity.equity_scaled(overall[metric], group_values, alpha,
                                          equity.higher_is_better(metric))
                out.append(tidy.row(context, f"ES-{metric}", es, attribute))
            out.append(tidy.row(context, f"{metric}-gap", equity.gap(group_values), attribute))
    return out


def evaluate(generated: dict, gen_rows, real: dict, real_rows, attributes: dict, layers: dict,
             settings: dict, context: dict, seed: int = 0,
             reference: dict | None = None) -> list[dict]:
    """Tidy rows: size-matched metrics (with FID-inf) and raw ones, overall and per group, then
    MiFID overall (when training-image features `reference` are given), ES-metrics and gaps.

    settings: config['evaluate'] (kid_subset_size, alpha, bootstrap, matched_n,
    matched_draws)."""
    pairs = comparisons(generated, gen_rows, real, real_rows, attributes)
    n = matched_size(pairs, settings["matched_n"])
    kid_size = settings["kid_subset_size"]
    rows = matched_rows(pairs, layers, kid_size, context, n, settings["matched_draws"], seed)
    rows += raw_rows(pairs, layers, kid_size, context, settings["bootstrap"], seed)
    if reference is not None:
        _, _, gen_all, real_all = pairs[0]
        value = mifid(gen_all[layers["fid"]], real_all[layers["fid"]], reference[layers["fid"]])
        rows.append(tidy.row(context, "MiFID", value, n=count(gen_all)))
    return rows + equity_rows(rows, attributes, settings["alpha"], context)


def aligned(path: str, rows, what: str):
    """Features of a cached file, checked to be in the table's row order."""
    feats, ids, tag, layers = features.load(path)
    if ids != rows["id"].astype(str).tolist():
        raise FairDiffError(f"{path}: its ids do not match the rows of {rows.attrs['source']} "
                            f"({what}); re-extract the features")
    return feats, tag, layers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--generated", required=True, help="features of the generated images")
    parser.add_argument("--generated-table", required=True,
                        help="their samples folder or prompts.csv (or a manifest, with "
                             "--generated-split: real images in the generated role)")
    parser.add_argument("--generated-split", default=None,
                        help="manifest split of --generated-table (the perfect-generator "
                             "reference: real training images against the real test images)")
    parser.add_argument("--real", required=True, help="features of the real test images")
    parser.add_argument("--reference", required=True,
                        help="features of the real training images (MiFID's memorization reference)")
    parser.add_argument("--manifest", required=True, help="the dataset's manifest.csv")
    parser.add_argument("--split", default="test", help="manifest split of the real features")
    parser.add_argument("--reference-split", default="train",
                        help="manifest split of the reference features")
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
    gen_rows = images.read_table(args.generated_table, args.generated_split, attributes, labels)
    real_rows = images.read_table(args.manifest, args.split, attributes, labels)
    generated, tag, layers = aligned(args.generated, gen_rows, "generated")
    real, real_tag, _ = aligned(args.real, real_rows, "real")
    ref_rows = images.read_table(args.manifest, args.reference_split, attributes, labels)
    reference, ref_tag, _ = aligned(args.reference, ref_rows, "reference")
    for path, other in ((args.real, real_tag), (args.reference, ref_tag)):
        if other != tag:
            raise FairDiffError(f"{args.generated}: extractor {tag} differs from {path}'s {other}")
    context = {"dataset": args.name, "method": args.method, "seed": args.seed, "extractor": tag}
    if args.generated_split == args.reference_split:
        # A set is its own nearest neighbour: MiFID's memorization term is 0 (its value infinite).
        log.info("no MiFID: the generated set is the memorization reference (%s split)",
                 args.reference_split)
        reference = None
    rows = evaluate(generated, gen_rows, real, real_rows, attributes, layers, args.evaluate,
                    context, args.seed, reference)
    io.write_csv(args.out, tidy.frame(rows))
    io.write_run_info_beside(args.out, args)
