"""How much group disparity a perfect generator gets: real images against real images.

Two settings, each repeated over --splits seeded random draws:
- halves: the real test split cut into two disjoint random halves, one half as the
  "generated" images (grouped by its own attributes), the other as the real ones;
- train-test: a random subset of the train split, the size of the test split, against the
  whole test split.
Both go through quality.evaluate, the pipeline's own code, so every row of quality.csv is here:
the raw rows (each group at its own size, as the pipeline did before size matching and as the
authors do), the size-matched ones and FID-inf. Printed: every metric overall and per group
(mean over the splits), ES-M / M per attribute (1.0 = no disparity, which is the truth here),
how often the matched group FIDs' draw CIs share a common point, and whether KID and FID-inf
order the groups like matched FID.

With --samples (a run's samples of the test prompts, e.g. the default run's baseline), also
FID of those images against the real test split with evaluate.image_format png and jpeg.

Features come from --features (a results/features/{dataset}/domain folder) where the file is
there, else they are extracted in memory with the domain extractor of --extractor (nothing is
written beside the inputs). Writes results/bench/group_size_bias.csv (mean and std over the
splits of every row).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fairdiffusion import config as config_mod
from fairdiffusion import io, models, runtime
from fairdiffusion.evaluate import extractor, features, images, quality

ROOT = Path(__file__).resolve().parents[1]
SHOWN = ["FID-raw", "FID", "FID-inf", "KID-raw", "KID", "IS-raw", "IS", "precision-raw",
         "precision", "recall-raw", "recall"]


def feature_set(rows: pd.DataFrame, name: str, folder: Path | None, extractor_dir: Path,
                image_format: str = "png") -> tuple[dict, dict]:
    """(layer -> tensor, metric -> layer) of an image set, from the cache or extracted now."""
    cached = folder / f"{name}.safetensors" if folder else None
    if image_format == "png" and cached is not None and cached.exists():
        feats, ids, _, layers = features.load(cached)
        if ids == rows["id"].astype(str).tolist():
            print(f"  {name}: cached features {cached}")
            return feats, layers
    start = time.perf_counter()
    fe, _, layers = extractor.open_extractor("domain", {}, extractor_dir, cuda=False)
    array = models.read_images(rows.attrs["source"], rows)
    if image_format == "jpeg":
        array = images.jpeg_round_trip(array)
    feats = features.extract(array, fe)
    print(f"  {name} ({image_format}): extracted {len(rows)} images in "
          f"{time.perf_counter() - start:.1f} s")
    return feats, layers


def take_rows(feats: dict, rows: pd.DataFrame, index: np.ndarray):
    return quality.take(feats, index), rows.iloc[index].reset_index(drop=True)


def run_setting(name: str, draws, attributes, layers, settings) -> pd.DataFrame:
    """quality.evaluate on each (generated, gen rows, real, real rows) of `draws`."""
    frames = []
    for split, (gen, gen_rows, real, real_rows) in enumerate(draws):
        rows = quality.evaluate(gen, gen_rows, real, real_rows, attributes, layers, settings,
                                {"split": split}, seed=split)
        frames.append(pd.DataFrame(rows))
    out = pd.concat(frames, ignore_index=True)
    out["setting"] = name
    return out


def columns(attributes: dict) -> list[tuple[str, str]]:
    return [("all", "all")] + [(a, g) for a, groups in attributes.items() for g in groups]


def report(frame: pd.DataFrame, attributes: dict) -> None:
    setting = frame["setting"].iloc[0]
    mean = frame.groupby(["metric", "attribute", "group"])["value"].mean()
    n = frame.groupby(["metric", "attribute", "group"])["n"].mean()
    splits = frame["split"].nunique()
    print(f"\n== {setting}: mean over {splits} splits ==")
    cols = [c for c in columns(attributes) if ("FID-raw", *c) in mean.index]
    print(f"{'metric':<14}" + "".join(f"{g:>13}" for _, g in cols))
    print(f"{'images (raw)':<14}" + "".join(f"{n['FID-raw', a, g]:>13.0f}" for a, g in cols))
    print(f"{'images (match)':<14}" + "".join(f"{n['FID', a, g]:>13.0f}" for a, g in cols))
    for metric in SHOWN:
        print(f"{metric:<14}" + "".join(f"{mean.get((metric, a, g), np.nan):>13.4g}"
                                        for a, g in cols))
    print("ES-M per attribute against M (ES-M / M for FID: 1.0 = no disparity, the truth here;"
          " ES-M - M for KID, which is near 0, and IS, higher-is-better):")
    for metric in ("FID-raw", "FID", "FID-inf", "KID-raw", "KID", "IS-raw", "IS"):
        overall = mean[metric, "all", "all"]
        es = {a: mean.get((f"ES-{metric}", a, "all"), np.nan) for a in attributes}
        if metric.startswith("FID"):
            text = "  ".join(f"{a} {v:.4g} ({v / overall:.2f}x)" for a, v in es.items())
        else:
            text = "  ".join(f"{a} {v:.4g} ({v - overall:+.3g})" for a, v in es.items())
        print(f"  {metric:<8} {overall:>9.4g} | {text}")
    print(f"matched FID: splits where overall and every group's draw CI share a point, and "
          f"where KID / FID-inf put the same group highest as matched FID (of {splits}):")
    for attribute, groups in attributes.items():
        overlap = agree_kid = agree_inf = 0
        for _, one in frame.groupby("split"):
            fid = one[one.metric == "FID"].set_index(["attribute", "group"])
            scope = fid.loc[[("all", "all")] + [(attribute, g) for g in groups
                                                if (attribute, g) in fid.index]]
            overlap += int(scope["lower"].max() <= scope["upper"].min())
            worst = {m: one[(one.metric == m) & (one.attribute == attribute)]
                     .set_index("group")["value"].idxmax() for m in ("FID", "KID", "FID-inf")}
            agree_kid += int(worst["KID"] == worst["FID"])
            agree_inf += int(worst["FID-inf"] == worst["FID"])
        print(f"  {attribute:<10} CIs overlap {overlap}, KID agrees {agree_kid}, "
              f"FID-inf agrees {agree_inf}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results",
                        help="a results folder of the default run (read only)")
    parser.add_argument("--dataset", default="synthfundus")
    parser.add_argument("--config", type=Path, default=ROOT / "config.yaml",
                        help="the run's config (attributes; evaluate settings with defaults)")
    parser.add_argument("--extractor", type=Path, default=None,
                        help="domain extractor folder (default: RESULTS/models/DATASET/extractor)")
    parser.add_argument("--splits", type=int, default=10, help="random halvings / train subsets")
    parser.add_argument("--samples", type=Path, nargs="*", default=[],
                        help="samples folders of runs: FID with png and with jpeg images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "bench" / "group_size_bias.csv")
    args = parser.parse_args()
    runtime.set_threads(args.threads)
    extractor.register()
    cfg = config_mod.validate(yaml.safe_load(args.config.read_text()))
    # FID-raw's bootstrap CI is not reported here: skip its resamples.
    dataset, settings = cfg["datasets"][args.dataset], {**cfg["evaluate"], "bootstrap": 0}
    attributes, labels = dataset["attributes"], dataset["labels"]
    manifest = args.results / "data" / args.dataset / "manifest.csv"
    cache = args.results / "features" / args.dataset / "domain"
    ext_dir = args.extractor or args.results / "models" / args.dataset / "extractor"
    print(f"features (extractor {ext_dir}):")
    test_rows = images.read_table(manifest, "test", attributes, labels)
    train_rows = images.read_table(manifest, "train", attributes, labels)
    test, layers = feature_set(test_rows, "real-test", cache, ext_dir)
    train, _ = feature_set(train_rows, "real-train", cache, ext_dir)
    print(f"evaluate settings: matched_n {settings['matched_n']}, matched_draws "
          f"{settings['matched_draws']}, kid_subset_size {settings['kid_subset_size']}, "
          f"alpha {settings['alpha']}")

    rng = np.random.default_rng(0)
    halves, train_test = [], []
    for _ in range(args.splits):
        order = rng.permutation(len(test_rows))
        a, b = order[: len(order) // 2], order[len(order) // 2:]
        halves.append((*take_rows(test, test_rows, a), *take_rows(test, test_rows, b)))
        pick = rng.choice(len(train_rows), len(test_rows), replace=False)
        train_test.append((*take_rows(train, train_rows, pick), test, test_rows))
    frames = []
    for name, draws in (("halves", halves), ("train-test", train_test)):
        start = time.perf_counter()
        frame = run_setting(name, draws, attributes, layers, settings)
        print(f"\n{name}: {args.splits} evaluations in {time.perf_counter() - start:.1f} s")
        report(frame, attributes)
        frames.append(frame)

    for folder in args.samples:
        gen_rows = images.read_table(folder, None, attributes, labels)
        print(f"\n== {folder}: png vs jpeg (images.jpeg_round_trip, quality "
              f"{images.JPEG_QUALITY}) ==")
        for image_format in ("png", "jpeg"):
            gen, _ = feature_set(gen_rows, "samples", None, ext_dir, image_format)
            real, _ = feature_set(test_rows, "real-test", None, ext_dir, image_format)
            rows = pd.DataFrame(quality.evaluate(gen, gen_rows, real, test_rows, attributes,
                                                 layers, settings, {}))
            value = rows.set_index(["metric", "attribute", "group"])["value"]
            print(f"  {image_format}: " + ", ".join(
                f"{m} {value[m, 'all', 'all']:.4g}" for m in ("FID-raw", "FID", "FID-inf", "KID")))
            if image_format != "png":
                continue
            for attribute, groups in attributes.items():
                present = [g for g in groups if ("FID", attribute, g) in value.index]
                cells = {m: [value[m, attribute, g] for g in present]
                         for m in ("FID-raw", "FID", "FID-inf", "KID", "IS")}
                worst = {m: present[int(np.argmax(v))] for m, v in cells.items() if m != "IS"}
                print(f"    {attribute}: " + "; ".join(
                    f"{m} " + "/".join(f"{x:.3g}" for x in v) for m, v in cells.items())
                    + f" ({'/'.join(present)}); highest: " + ", ".join(
                        f"{m} {g}" for m, g in worst.items()))

    out = pd.concat(frames, ignore_index=True)
    summary = (out.groupby(["setting", "metric", "attribute", "group"], sort=False)
               .agg(mean=("value", "mean"), std=("value", "std"), n=("n", "mean"),
                    splits=("value", "count")).reset_index())
    io.write_csv(args.out, summary)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
