"""`fairdiff table KIND`: one of the paper's tables from tidy metric CSVs, as CSV, Markdown and
LaTeX (booktabs) beside each other: OUT.csv, OUT.md, OUT.tex.

Kinds (rows are the arms; cells are mean ± std over seeds; bold, or ' *' in the CSV, marks the
best arm of a column, by the metric's direction; a reference row measured on real images is
shown but never competes):

  quality   FID, IS, KID, FID-inf and MiFID overall and ES-FID, ES-IS, ES-KID per attribute:
            the size-matched values, with FID-raw and ES-FID-raw (each group at its own size)
            beside them; the real training images against the real test images are the
            perfect-generator row (the floor every disparity reads against)
  groups    FID, FID-raw, FID-inf and IS of every demographic group, with the same row
  semantic  AUC and ES-AUC per clinical task: classifiers trained on each arm's images (and on
            real images, the reference), tested on the real test split
  measured  SynthFundus: accuracy of the labels measured on generated images, by group, with the
            real test images as the ceiling
  paired    every arm against the baseline on every overall and ES metric, paired by seed:
            difference, whether it is better or worse, p-value (worse results are listed too)
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pandas as pd

from .. import io
from ..errors import FairDiffError
from ..evaluate import stats
from . import metrics as M
from .render import Table, mean_std, p_value

log = logging.getLogger(__name__)

QUALITY_OVERALL = ["FID", "FID-raw", "FID-inf", "IS", "KID", "MiFID"]
QUALITY_ES = ["ES-FID", "ES-FID-raw", "ES-IS", "ES-KID"]
GROUPS = ["FID", "FID-raw", "FID-inf", "IS"]
# What the quality metric names mean, for the notes of the tables that show them.
MATCHED_NOTE = ("FID, IS, KID and ES-* are size-matched: every group and the overall set "
                "compared at the same number of images (the smallest group's, or "
                "evaluate.matched_n), mean over random draws; -raw = each at its own size (the "
                "authors' protocol; small groups score worse for being small); FID-inf = FID "
                "extrapolated to infinitely many images (Chong & Forsyth 2020); MiFID = "
                "memorization-informed FID of all images, against the training images")
SEMANTIC = ["AUC", "ES-AUC"]
REFERENCE_NAMES = {"quality": "real train vs test (perfect generator)",
                   "semantic": "real (reference)", "measured": "real images (ceiling)"}


# -- building ----------------------------------------------------------------------------------


def _check_unique(frame: pd.DataFrame) -> None:
    keys = ["dataset", "method", "seed", *M.KEYS]
    dup = frame[frame.duplicated(keys, keep=False)]
    if len(dup):
        row = dup.iloc[0]
        raise FairDiffError(f"metric CSVs: {len(dup)} duplicate rows, e.g. method={row['method']} "
                            f"seed={row['seed']} metric={row['metric']} task={row['task']!r} "
                            f"attribute={row['attribute']} group={row['group']}")


def _dataset(frame: pd.DataFrame) -> str:
    names = list(dict.fromkeys(frame["dataset"]))
    if len(names) != 1:
        raise FairDiffError(f"metric CSVs: expected one dataset, found {names}")
    return names[0]


def _select(frame: pd.DataFrame, keep: pd.Series, what: str) -> pd.DataFrame:
    chosen = frame[keep]
    if chosen.empty:
        raise FairDiffError(f"metric CSVs: no {what} rows (metrics present: "
                            f"{sorted(frame['metric'].unique())})")
    return chosen


def _column_order(summary: pd.DataFrame, metric_order: list[str]) -> list[str]:
    """Columns by attribute (overall first), group (overall first), metric, extractor."""
    attr = M.first_seen(summary["attribute"])
    group = M.first_seen(summary["group"])
    metric = M.first_seen([*metric_order, *summary["metric"]], first=None)
    extractor = M.first_seen(summary["extractor"], first=None)
    keyed = summary.assign(_k=list(zip(summary["attribute"].map(attr), summary["group"].map(group),
                                       summary["metric"].map(metric),
                                       summary["extractor"].map(extractor))))
    return list(dict.fromkeys(keyed.sort_values("_k", kind="stable")["column"]))


def mark_best(summary: pd.DataFrame, blocks: list[str]) -> pd.Series:
    """True where a cell is the best arm of its column (within its block, e.g. task): the lowest
    mean for lower-is-better metrics, the highest for higher-is-better; ties all marked; the
    reference rows and metrics of unknown direction never are; needs at least 2 competitors."""
    best = pd.Series(False, index=summary.index)
    competing = summary[(summary["method"] != M.REFERENCE) & summary["mean"].notna()]
    for _, cells in competing.groupby([*blocks, "column"], sort=False):
        way = M.direction(cells["metric"].iloc[0])
        if way is None or len(cells) < 2:
            continue
        target = cells["mean"].min() if way == "lower" else cells["mean"].max()
        best[cells.index[np.isclose(cells["mean"], target, rtol=1e-12, atol=0)]] = True
    return best


def build(frame: pd.DataFrame, rows: list[str], metric_order: list[str], title: str,
          what: str, reference_name: str = M.REFERENCE) -> Table:
    """Summarise over seeds per (rows, metric key), pivot to rows x metric columns, mark bests.

    `rows` ends with "method"; earlier entries (e.g. "task") are blocks within which arms
    compete. Row order: blocks by first appearance, the reference first, arms as given."""
    summary = stats.seed_summary(frame).rename(columns={"n_seeds": "n"})
    summary["column"] = [M.label(m, a, g, e) for m, a, g, e in
                         summary[["metric", "attribute", "group", "extractor"]].itertuples(False)]
    summary["best"] = mark_best(summary, rows[:-1])
    n_max = int(summary["n"].max())
    summary["text"] = [mean_std(m, s, n, n_max) for m, s, n in
                       summary[["mean", "std", "n"]].itertuples(False)]

    columns = _column_order(summary, metric_order)
    method_rank = M.first_seen(summary["method"], first=M.REFERENCE)
    row_keys = summary[rows].drop_duplicates()
    sort_cols = []
    for key in rows:
        rank = method_rank if key == "method" else M.first_seen(summary[key], first=None)
        row_keys[f"_{key}"] = row_keys[key].map(rank)
        sort_cols.append(f"_{key}")
    row_keys = row_keys.sort_values(sort_cols, kind="stable")[rows]

    text = summary.pivot(index=rows, columns="column", values="text")
    best = summary.pivot(index=rows, columns="column", values="best")
    index = pd.MultiIndex.from_frame(row_keys) if len(rows) > 1 else pd.Index(row_keys[rows[0]])
    text = text.reindex(index=index, columns=columns).fillna("–").reset_index()
    best = best.reindex(index=index, columns=columns).fillna(False).astype(bool).reset_index()
    text["method"] = text["method"].replace(M.REFERENCE, reference_name)
    for key in rows:
        best[key] = False

    extractors = sorted(e for e in summary["extractor"].unique() if e)
    seeds = "1 seed (no spread)" if n_max == 1 else f"mean ± std over {n_max} seeds"
    note = (f"{what}; {seeds}; ↓ lower is better, ↑ higher is better; bold (CSV: ' *') = best "
            f"arm per column" + ("" if (summary["method"] != M.REFERENCE).all()
                                 else f"; '{reference_name}' does not compete")
            + (f"; extractor: {', '.join(extractors)}" if extractors else "") + ".")
    return Table(title=title, note=note, text=text, best=best, labels=len(rows))


def quality(frame: pd.DataFrame) -> Table:
    overall = frame["metric"].isin(QUALITY_OVERALL) & (frame["attribute"] == "all")
    es = frame["metric"].isin(QUALITY_ES) & (frame["attribute"] != "all")
    chosen = _select(frame, (overall | es) & (frame["group"] == "all"), "FID/IS/KID/ES-*")
    return build(chosen, ["method"], QUALITY_OVERALL + QUALITY_ES,
                 f"Generation quality on {_dataset(frame)}",
                 "FID, IS, KID of each arm's images of the test prompts against the real test "
                 "images (a perfect generator: the real training images); ES-* per attribute "
                 f"(equity-scaled); {MATCHED_NOTE}", REFERENCE_NAMES["quality"])


def groups(frame: pd.DataFrame) -> Table:
    chosen = _select(frame, frame["metric"].isin(GROUPS) & (frame["group"] != "all"),
                     "group-wise FID/IS")
    return build(chosen, ["method"], GROUPS, f"Group-wise FID and IS on {_dataset(frame)}",
                 "FID and IS of the generated images of each demographic group against the real "
                 "test images of that group (a perfect generator: the real training images of "
                 f"the group); {MATCHED_NOTE}", REFERENCE_NAMES["quality"])


def semantic(frame: pd.DataFrame) -> Table:
    chosen = _select(frame, frame["metric"].isin(SEMANTIC), "AUC/ES-AUC")
    return build(chosen, ["task", "method"], SEMANTIC,
                 f"Semantic correlation on {_dataset(frame)}",
                 "AUC of classifiers trained on each arm's generated images (the reference: on "
                 "real training images), tested on the real test split; ES-AUC per attribute; "
                 "best within each task", REFERENCE_NAMES["semantic"])


def measured(frame: pd.DataFrame) -> Table:
    return build(_select(frame, frame["metric"].notna(), "measured"), ["task", "method"],
                 ["accuracy"], f"Measured-label accuracy on {_dataset(frame)}",
                 "agreement of the clinical labels measured on each generated image with the "
                 "labels of its prompt (real test images: the measurement's ceiling); best within "
                 "each task", REFERENCE_NAMES["measured"])


def paired(frame: pd.DataFrame, baseline: str) -> Table:
    """Each arm minus the baseline, paired by seed, on every overall and ES metric."""
    frame = frame[(frame["group"] == "all") & (frame["method"] != M.REFERENCE)]
    base = frame[frame["method"] == baseline]
    if base.empty:
        raise FairDiffError(f"metric CSVs: no rows of the baseline arm '{baseline}'")
    arms = [m for m in dict.fromkeys(frame["method"]) if m != baseline]
    if not arms:
        raise FairDiffError(f"metric CSVs: only the baseline arm '{baseline}'; nothing to compare")
    rows = []
    for arm in arms:
        merged = frame[frame["method"] == arm].merge(base, on=["seed", *M.KEYS],
                                                     suffixes=("", "_base"))
        for key, pairs in merged.groupby(M.KEYS, sort=False):
            metric, task, attribute, group, extractor = key
            a, b = pairs["value"].to_numpy(), pairs["value_base"].to_numpy()
            test = stats.paired_seed_test(a, b)
            n, way = test["n"], M.direction(metric)
            if way is None:
                effect = "unknown direction"
            elif test["sign"] == 0:
                effect = "equal"
            else:
                effect = "better" if (test["sign"] < 0) == (way == "lower") else "worse"

            def spread(x):
                return float(np.std(x, ddof=1)) if n > 1 else np.nan

            rows.append({
                "arm": arm, "task": task, "metric": M.label(metric, attribute, group, extractor),
                baseline: mean_std(float(b.mean()), spread(b), n),
                "arm value": mean_std(float(a.mean()), spread(a), n),
                "Δ (arm − baseline)": mean_std(test["mean_diff"], spread(a - b), n),
                "effect": effect,
                "p (paired t-test)": p_value(test["t_pvalue"]),
                "p (sign test)": p_value(test["sign_pvalue"]),
                "seeds": str(n)})
    text = pd.DataFrame(rows)
    if text.empty:
        raise FairDiffError(f"metric CSVs: no metric shared by an arm and the baseline "
                            f"'{baseline}' on the same seed")
    if (text["task"] == "").all():
        text = text.drop(columns="task")
    best = pd.DataFrame(False, index=text.index, columns=text.columns)
    labels = 3 if "task" in text.columns else 2
    note = (f"each arm against '{baseline}' on the same seeds; Δ = arm − {baseline} (mean ± std "
            "of the paired differences); effect says whether Δ goes the better or the worse way "
            "for that metric (↓/↑); p from a two-sided paired t-test over seeds (n/a with fewer "
            "than 2 seeds or no spread of the differences) and from an exact two-sided sign "
            "test; every comparison is listed, including those where the arm is worse"
            + (f"; {MATCHED_NOTE}" if text["metric"].str.contains("-raw").any() else "") + ".")
    return Table(title=f"Arms vs {baseline} on {_dataset(frame)}", note=note, text=text,
                 best=best, labels=labels)


BUILDERS = {"quality": quality, "groups": groups, "semantic": semantic, "measured": measured}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", choices=[*BUILDERS, "paired"], help="which table")
    parser.add_argument("--metrics", nargs="+", required=True,
                        help="tidy metric CSVs (every arm and seed; the 'real' reference too)")
    parser.add_argument("--baseline", default="baseline", help="paired: the arm compared against")
    parser.add_argument("--out", required=True,
                        help="output path without extension: writes OUT.csv, OUT.md, OUT.tex")


def run(args: argparse.Namespace) -> None:
    frame = M.read(args.metrics)
    _check_unique(frame)
    table = paired(frame, args.baseline) if args.kind == "paired" else BUILDERS[args.kind](frame)
    for path in table.write(args.out):
        log.info("wrote %s", path)
    io.write_run_info_beside(args.out, args)
