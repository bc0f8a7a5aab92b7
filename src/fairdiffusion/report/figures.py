"""`fairdiff figure KIND`: one of the paper's figures, written as OUT.png (plus OUT.pdf, ... when
asked with --formats).

Kinds:
  groups      FID (size-matched), FID-raw (each group at its own size) and IS of every
              demographic group, one panel per metric and attribute; bars are arms, error bars
              the std over seeds (--metrics: quality CSVs)
  es          equity-scaled metrics (ES-FID, ES-FID-raw, ES-IS, ES-KID, ES-AUC per task) by
              attribute (--metrics: quality and semantic CSVs)
  trajectory  the Fair Bayesian Perturbation state over training: sigma of every group and the
              loss gap of every attribute (rolling mean over --window steps), one column per arm
              (--logs: bo_trajectory.csv files; --methods, --seeds: the run of each)
  loss        training loss over steps, one line per arm, band = std over seeds
              (--logs: train_log.csv files; --methods, --seeds: the run of each)
  samples     real test images and each arm's images for the same prompts, one row per group of
              --attribute (--manifest, --samples: one sample folder per arm; --methods: the arm
              of each)

Which run a file belongs to is given on the command line, never read from its path.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display (cluster nodes have none)

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from PIL import Image  # noqa: E402

from ..cli import json_arg  # noqa: E402
from ..errors import FairDiffError  # noqa: E402
from ..io import atomic_path, write_run_info_beside  # noqa: E402
from . import metrics as M  # noqa: E402

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf", "svg")
GROUP_METRICS = ["FID", "FID-raw", "IS"]
# ES of the size-matched metrics and of raw FID beside ES-FID; the other -raw / -inf variants
# stay in the CSVs.
ES_VARIANTS_SHOWN = {"ES-FID-raw"}
ES_ORDER = ["ES-FID", "ES-FID-raw", "ES-KID", "ES-IS"]


def save(fig: plt.Figure, out: str | Path, formats: list[str]) -> list[Path]:
    """Write the figure once per format, atomically; PDFs without a creation date, so the same
    inputs give the same bytes."""
    out = Path(out)
    paths = []
    for fmt in formats:
        path = out.with_name(f"{out.name}.{fmt}")
        metadata = {"CreationDate": None} if fmt == "pdf" else None
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=150, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    plt.close(fig)
    return paths


def _method_order(methods) -> list[str]:
    """Arms in the order given, the real reference (if any) last."""
    order = list(dict.fromkeys(methods))
    return [m for m in order if m != M.REFERENCE] + [m for m in order if m == M.REFERENCE]


def _one_per_file(args: argparse.Namespace, files: list, *names: str) -> None:
    """--methods (and --seeds) name the run of each file, in order: one value per file."""
    for name in names:
        given = getattr(args, name)
        if len(given) != len(files):
            raise FairDiffError(f"figure {args.kind}: --{name} has {len(given)} value(s) for "
                                f"{len(files)} file(s); expected one per file")


def _read_logs(paths: list[str], methods: list[str], seeds: list[int],
               required: list[str]) -> pd.DataFrame:
    frames = []
    for path, method, seed in zip(map(Path, paths), methods, seeds):
        if not path.exists():
            raise FairDiffError(f"{path}: log not found")
        frame = pd.read_csv(path)
        missing = [c for c in required if c not in frame.columns]
        if missing:
            raise FairDiffError(f"{path}: missing column(s) {missing}")
        frames.append(frame.assign(method=method, seed=seed))
    return pd.concat(frames, ignore_index=True)


def groups(frame: pd.DataFrame) -> plt.Figure:
    data = frame[frame["metric"].isin(GROUP_METRICS) & (frame["group"] != "all")]
    if data.empty:
        raise FairDiffError("metric CSVs: no group-wise FID/IS rows")
    data = data.assign(panel=[M.label(m, extractor=e) for m, e in zip(data["metric"],
                                                                        data["extractor"])])
    rank = M.first_seen(GROUP_METRICS, first=None)
    panels = list(dict.fromkeys(data.sort_values("metric", key=lambda m: m.map(rank),
                                                 kind="stable")["panel"]))
    grid = sns.catplot(data=data, kind="bar", x="group", y="value", hue="method",
                       hue_order=_method_order(data["method"]), row="panel", row_order=panels,
                       col="attribute",
                       errorbar="sd", capsize=0.1, sharex="col", sharey="row", height=2.6,
                       aspect=1.1)
    grid.set_titles("{row_name} | {col_name}")
    grid.set_axis_labels("", "")
    return grid.figure


def es(frame: pd.DataFrame) -> plt.Figure:
    variant = frame["metric"].str.endswith(("-raw", "-inf"))
    data = frame[frame["metric"].str.startswith("ES-") & (frame["group"] == "all")
                 & (~variant | frame["metric"].isin(ES_VARIANTS_SHOWN))]
    if data.empty:
        raise FairDiffError("metric CSVs: no ES-* rows")
    data = data.assign(panel=[M.label(m, extractor=e) + (f" {t}" if t else "")
                              for m, e, t in zip(data["metric"], data["extractor"], data["task"])])
    rank = M.first_seen([*ES_ORDER, *data["metric"]], first=None)
    panels = list(dict.fromkeys(data.sort_values("metric", key=lambda m: m.map(rank),
                                                 kind="stable")["panel"]))
    grid = sns.catplot(data=data, kind="bar", x="attribute", y="value", hue="method",
                       hue_order=_method_order(data["method"]), col="panel", col_order=panels,
                       col_wrap=min(3, len(panels)), errorbar="sd", capsize=0.1, sharex=False,
                       sharey=False, height=2.6, aspect=1.1)
    grid.set_titles("{col_name}")
    grid.set_axis_labels("", "")
    return grid.figure


def trajectory(frame: pd.DataFrame, window: int) -> plt.Figure:
    if "kind" in frame.columns:
        frame = frame[frame["kind"] == "step"]
    sigma_cols = [c for c in frame.columns if c.startswith("sigma_")]
    gap_cols = [c for c in frame.columns if c.startswith("gap_")]
    if frame.empty or not (sigma_cols or gap_cols):
        raise FairDiffError("trajectories: no step rows with sigma_*/gap_* columns")
    frame = frame.sort_values(["method", "seed", "step"])
    # Per-step gaps are dominated by timestep noise: a rolling mean over the BO window shows the
    # trend the optimiser sees.
    smooth = frame.groupby(["method", "seed"])[gap_cols].transform(
        lambda s: s.rolling(window, min_periods=1).mean())
    gaps = frame[["method", "seed", "step"]].join(smooth).melt(
        ["method", "seed", "step"], gap_cols, var_name="attribute")
    gaps["attribute"] = gaps["attribute"].str.removeprefix("gap_")
    sigma = frame.melt(["method", "seed", "step"], sigma_cols, var_name="group")
    sigma["group"] = sigma["group"].str.removeprefix("sigma_")
    methods = _method_order(frame["method"])
    fig, axes = plt.subplots(2, len(methods), figsize=(3.6 * len(methods), 5.4), sharex=True,
                             sharey="row", squeeze=False)
    for col, method in enumerate(methods):
        top, bottom = axes[0, col], axes[1, col]
        sns.lineplot(data=sigma[sigma["method"] == method], x="step", y="value", hue="group",
                     errorbar="sd", ax=top, legend=col == len(methods) - 1)
        sns.lineplot(data=gaps[gaps["method"] == method], x="step", y="value", hue="attribute",
                     errorbar="sd", ax=bottom, legend=col == len(methods) - 1)
        top.set(title=method, ylabel="σ per group" if col == 0 else "")
        bottom.set(ylabel=f"loss gap (rolling {window} steps)" if col == 0 else "")
    for ax in axes[:, -1]:
        if ax.get_legend() is not None:
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), frameon=False)
    fig.tight_layout()
    return fig


def loss(frame: pd.DataFrame) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    sns.lineplot(data=frame, x="step", y="loss", hue="method",
                 hue_order=_method_order(frame["method"]), errorbar="sd", ax=ax)
    ax.set(ylabel="training loss (unweighted)", yscale="log")
    sns.move_legend(ax, "upper right", frameon=False)
    fig.tight_layout()
    return fig


def sample_rows(table: pd.DataFrame) -> pd.DataFrame:
    """A run's prompts.csv keyed by the manifest id it was generated from (first copy of each)."""
    if "source_id" in table.columns:
        table = table.assign(id=table["source_id"])
    return table.drop_duplicates("id")


def pick_prompts(real: pd.DataFrame, runs: dict[str, pd.DataFrame], attribute: str,
                 groups: list[str], per_group: int) -> list[tuple[str, pd.Series]]:
    """The first `per_group` test rows of each group (manifest order) that every arm generated
    an image for: [(group, manifest row)]."""
    shared = set(real["id"])
    for table in runs.values():
        shared &= set(table["id"])
    picked = []
    for group in groups:
        rows = real[(real[attribute] == group) & real["id"].isin(shared)].head(per_group)
        if rows.empty:
            raise FairDiffError(f"samples: no test prompt of {attribute}={group} generated by "
                                f"every arm")
        picked += [(group, row) for _, row in rows.iterrows()]
    return picked


def samples(manifest: Path, sample_dirs: list[Path], methods: list[str], attributes: dict,
            attribute: str | None, per_group: int) -> plt.Figure:
    attribute = attribute or next(iter(attributes))
    if attribute not in attributes:
        raise FairDiffError(f"--attribute {attribute}: not one of the dataset's attributes "
                            f"{list(attributes)}")
    if not manifest.exists():
        raise FairDiffError(f"{manifest}: manifest not found")
    real = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    real = real[real["split"] == "test"]
    runs = {}
    for folder, method in zip(sample_dirs, methods):
        table = folder / "prompts.csv"
        if not table.exists():
            raise FairDiffError(f"{table}: not found")
        runs[method] = sample_rows(pd.read_csv(table, dtype=str, keep_default_na=False))
    picked = pick_prompts(real, runs, attribute, attributes[attribute], per_group)
    columns = [("real", manifest.parent, real)] + [(m, d, runs[m]) for m, d in
                                                   zip(runs, sample_dirs)]
    fig, axes = plt.subplots(len(picked), len(columns), squeeze=False,
                             figsize=(1.3 * len(columns), 1.3 * len(picked)))
    for r, (group, row) in enumerate(picked):
        for c, (name, folder, table) in enumerate(columns):
            image = table.loc[table["id"] == row["id"], "image"].iloc[0]
            path = folder / image
            if not path.exists():
                raise FairDiffError(f"{path}: image not found")
            ax = axes[r, c]
            ax.imshow(np.asarray(Image.open(path).convert("RGB")))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(group, fontsize=9)
    fig.suptitle(f"Same test prompts per {attribute} group", fontsize=10)
    fig.tight_layout()
    return fig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=["groups", "es", "trajectory", "loss", "samples"])
    parser.add_argument("--metrics", nargs="+", help="groups, es: tidy metric CSVs")
    parser.add_argument("--logs", nargs="+",
                        help="trajectory: bo_trajectory.csv files; loss: train_log.csv files")
    parser.add_argument("--window", type=int, default=30,
                        help="trajectory: steps of the rolling mean of the loss gaps")
    parser.add_argument("--manifest", type=Path, help="samples: the dataset's manifest.csv")
    parser.add_argument("--samples", nargs="+", type=Path,
                        help="samples: one sample folder (of the test split) per arm")
    parser.add_argument("--methods", nargs="+",
                        help="the arm of each --logs file or --samples folder, in order")
    parser.add_argument("--seeds", nargs="+", type=int,
                        help="trajectory, loss: the seed of each --logs file, in order")
    parser.add_argument("--attributes", type=json_arg,
                        help="samples: the dataset's attributes as JSON {attribute: [groups]}")
    parser.add_argument("--attribute",
                        help="samples: attribute whose groups are the rows (default: the first)")
    parser.add_argument("--per-group", type=int, default=1, help="samples: prompts per group")
    parser.add_argument("--formats", nargs="+", choices=FORMATS, default=["png"],
                        help="file formats to write")
    parser.add_argument("--out", required=True, help="output path without extension")


def _need(args: argparse.Namespace, *names: str) -> None:
    missing = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n) in (None, [])]
    if missing:
        raise FairDiffError(f"figure {args.kind}: missing {' '.join(missing)}")


def run(args: argparse.Namespace) -> None:
    sns.set_theme(context="paper", style="whitegrid")
    if args.kind in ("groups", "es"):
        _need(args, "metrics")
        fig = (groups if args.kind == "groups" else es)(M.read(args.metrics))
    elif args.kind == "trajectory":
        _need(args, "logs", "methods", "seeds")
        _one_per_file(args, args.logs, "methods", "seeds")
        if args.window < 1:
            raise FairDiffError(f"--window {args.window}: expected a positive number of steps")
        fig = trajectory(_read_logs(args.logs, args.methods, args.seeds, ["step"]), args.window)
    elif args.kind == "loss":
        _need(args, "logs", "methods", "seeds")
        _one_per_file(args, args.logs, "methods", "seeds")
        fig = loss(_read_logs(args.logs, args.methods, args.seeds, ["step", "loss"]))
    else:
        _need(args, "manifest", "samples", "methods", "attributes")
        _one_per_file(args, args.samples, "methods")
        if args.per_group < 1:
            raise FairDiffError(f"--per-group {args.per_group}: expected at least 1")
        fig = samples(args.manifest, args.samples, args.methods, args.attributes, args.attribute,
                      args.per_group)
    for path in save(fig, args.out, args.formats):
        log.info("wrote %s", path)
    write_run_info_beside(args.out, args)
