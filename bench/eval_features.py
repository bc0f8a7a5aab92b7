"""Speed of "features once, metrics many" vs the naive per-group, per-metric evaluation.

FairGenMed's group layout (overall + race 3 + gender 2 + ethnicity 2 = 8 comparisons) and
FID + KID + IS on SynthFundus images with the domain extractor (an untrained one: timing does
not depend on the weights):

- cached (this pipeline): the extractor runs once over the generated and once over the real
  set; the 8 x 3 metrics come from torch-fidelity's feature-level functions on row subsets;
- naive (the authors' evaluation script): one torch_fidelity.calculate_metrics call per group
  and per metric, each extracting the group's features again.

The cached way also computes KID's kernels once per comparison (quality.kid) where
torch-fidelity computes three per subset (100 subsets); the ratio is otherwise bounded by the
ratio of image passes (10x here). It is measured at the embedded default's 32 px and at 128 px
(extractor at that resolution).
Both use save_cpu_ram=True (no DataLoader worker processes) and one CPU thread (torch and BLAS). Prints the
fastest of --repeats alternating runs of each way and, last, the speed ratio naive / cached;
writes results/bench/eval_features.csv. Also prints how far apart the two ways' numbers are.

Then the cost that size matching adds to a `fairdiff quality` job, from the cached features
with the schema's evaluate defaults (matched_draws, bootstrap, kid_subset_size): the raw rows
(every metric of every comparison at its own size, with FID-raw's bootstrap CI: the job before
size matching), the size-matched rows with FID-inf, and MiFID against a training set of 5x the
test size, each the fastest of --repeats.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from fairdiffusion import io
from fairdiffusion.data import synthetic
from fairdiffusion import runtime

ROOT = Path(__file__).resolve().parents[1]
from fairdiffusion.evaluate import extractor, features, images, quality

ATTRIBUTES = {"race": ["Asian", "Black", "White"], "gender": ["Female", "Male"],
              "ethnicity": ["Non-Hispanic", "Hispanic"]}


def untrained_extractor(folder: Path, resolution: int) -> None:
    from safetensors.torch import save_file

    labels = synthetic.LABELS
    torch.manual_seed(0)
    net = extractor.DomainNet({k: len(v) for k, v in labels.items()})
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors")
    io.write_json(folder / "config.json", {"heads": {k: len(v) for k, v in labels.items()},
                                           "is_label": "vision_loss", "resolution": resolution})


def group_masks(rows: pd.DataFrame):
    return [(a, g, m) for a, g, m in images.groups(rows, ATTRIBUTES)]


def cached(gen, gen_rows, real, real_rows, folder, kid_size):
    start = time.perf_counter()
    fe, _, layers = extractor.open_extractor("domain", {}, folder, cuda=False)
    g, r = features.extract(gen, fe), features.extract(real, fe)
    real_masks = {(a, grp): m for a, grp, m in group_masks(real_rows)}
    out = {}
    for a, grp, m in group_masks(gen_rows):
        values = quality.compute(quality.subset(g, m), quality.subset(r, real_masks[a, grp]),
                                 layers, kid_size, metrics=("FID", "KID", "IS"))
        out[a, grp] = {k: v[0] for k, v in values.items()}
    return time.perf_counter() - start, out


def naive(gen, gen_rows, real, real_rows, folder, kid_size):
    from torch_fidelity import calculate_metrics

    start = time.perf_counter()
    real_masks = {(a, grp): m for a, grp, m in group_masks(real_rows)}
    common = dict(feature_extractor=extractor.DOMAIN, feature_extractor_weights_path=str(folder),
                  cuda=False, cache=False, verbose=False, save_cpu_ram=True)
    out = {}
    for a, grp, m in group_masks(gen_rows):
        g_set, r_set = images.UInt8Images(gen[m]), images.UInt8Images(real[real_masks[a, grp]])
        kid = quality.fidelity_kwargs(len(g_set), len(r_set), kid_size)["kid_subset_size"]
        fid = calculate_metrics(input1=g_set, input2=r_set, fid=True, **common)
        kid = calculate_metrics(input1=g_set, input2=r_set, kid=True, kid_subset_size=kid, **common)
        isc = calculate_metrics(input1=g_set, isc=True, **common)
        out[a, grp] = {"FID": fid["frechet_inception_distance"],
                       "KID": kid["kernel_inception_distance_mean"], "IS": isc["inception_score_mean"]}
    return time.perf_counter() - start, out


def bench(n: int, resolution: int, kid_size: int, repeats: int) -> dict:
    real_meta, real = synthetic.generate(n, resolution, seed=0)
    gen_meta, gen = synthetic.generate(n, resolution, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "extractor"
        untrained_extractor(folder, resolution)
        # Alternating repeats, fastest of each: a shared machine only ever adds time.
        runs = [(cached(gen, gen_meta, real, real_meta, folder, kid_size),
                 naive(gen, gen_meta, real, real_meta, folder, kid_size)) for _ in range(repeats)]
    t_cached, t_naive = (min(run[way][0] for run in runs) for way in (0, 1))
    ours, theirs = runs[0][0][1], runs[0][1][1]
    # Absolute: the untrained extractor puts KID at ~1e-7, where float32 rounding is the value.
    diff = {m: max(abs(ours[k][m] - theirs[k][m]) for k in ours) for m in ("FID", "KID", "IS")}
    row = {"images_per_set": n, "resolution": resolution, "comparisons": len(ours),
           "metrics": "FID,KID,IS", "repeats": repeats, "cached_s": t_cached, "naive_s": t_naive,
           "ratio": t_naive / t_cached, **{f"max_abs_difference_{m}": d for m, d in diff.items()}}
    print(f"{resolution} px, {n} images per set, {len(ours)} comparisons (overall + 7 groups) x "
          f"FID, KID, IS: cached {t_cached:.2f} s, naive {t_naive:.2f} s, ratio {row['ratio']:.1f}x "
          f"(largest differences: " + ", ".join(f"{m} {d:.1e}" for m, d in diff.items()) + ")")
    return row


def matched_cost(n: int, resolution: int, repeats: int) -> dict:
    """Seconds of quality's raw rows, matched rows (+ FID-inf) and MiFID on cached features."""
    import yaml

    from fairdiffusion import config

    settings = config.validate(yaml.safe_load((ROOT / "config.yaml").read_text()))["evaluate"]
    real_meta, real = synthetic.generate(n, resolution, seed=0)
    gen_meta, gen = synthetic.generate(n, resolution, seed=1)
    _, train = synthetic.generate(5 * n, resolution, seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "extractor"
        untrained_extractor(folder, resolution)
        fe, _, layers = extractor.open_extractor("domain", {}, folder, cuda=False)
        g, r, t = (features.extract(x, fe) for x in (gen, real, train))
    pairs = quality.comparisons(g, gen_meta, r, real_meta, ATTRIBUTES)
    size = quality.matched_size(pairs, settings["matched_n"])

    def fastest(work) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            work()
            times.append(time.perf_counter() - start)
        return min(times)

    kid = settings["kid_subset_size"]
    row = {"images_per_set": n, "resolution": resolution, "matched_n": size,
           "matched_draws": settings["matched_draws"], "bootstrap": settings["bootstrap"],
           "raw_s": fastest(lambda: quality.raw_rows(pairs, layers, kid, {}, settings["bootstrap"], 0)),
           "matched_s": fastest(lambda: quality.matched_rows(pairs, layers, kid, {}, size,
                                                             settings["matched_draws"], 0)),
           "mifid_s": fastest(lambda: quality.mifid(g[layers["fid"]], r[layers["fid"]],
                                                    t[layers["fid"]]))}
    added = row["matched_s"] + row["mifid_s"]
    print(f"quality job, {resolution} px, {n} images per set, {len(pairs)} comparisons: raw rows "
          f"{row['raw_s']:.2f} s; size matching ({settings['matched_draws']} draws at n = {size}, "
          f"with FID-inf) {row['matched_s']:.2f} s; MiFID {row['mifid_s']:.3f} s; added "
          f"{added:.2f} s ({added / row['raw_s']:.2f}x the raw rows)")
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600, help="images per set (real test, generated)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=[32, 128],
                        help="image (and extractor) side lengths; 32 is the embedded default")
    parser.add_argument("--kid-subset-size", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each way; the fastest counts")
    parser.add_argument("--out", type=Path,
                        default=ROOT / "results" / "bench" / "eval_features.csv")
    args = parser.parse_args()
    runtime.set_threads(1)
    extractor.register()
    rows = [bench(args.n, r, args.kid_subset_size, args.repeats) for r in args.resolutions]
    io.write_csv(args.out, pd.DataFrame(rows))
    summary = ", ".join(f"{r['ratio']:.1f}x at {r['resolution']} px" for r in rows)
    print(f"speed ratio (naive / cached): {summary}")
    costs = [matched_cost(args.n, r, args.repeats) for r in args.resolutions]
    io.write_csv(args.out.with_name("eval_features_matched.csv"), pd.DataFrame(costs))


if __name__ == "__main__":
    main()
