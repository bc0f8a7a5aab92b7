"""Rows of the tidy metric CSVs (one value per row; the contract columns come first)."""

from __future__ import annotations

import math

import pandas as pd

# The contract: the columns every tidy metric CSV has, and all a reader may rely on
# (report.metrics reads these).
CONTRACT = ["dataset", "method", "seed", "metric", "task", "attribute", "group", "extractor",
            "value"]
# Written after them: std (spread of the estimator where the metric has one: raw KID and IS over
# subsets/splits, size-matched metrics over their draws), lower/upper (95% interval: a
# bootstrap over test images, or the percentiles of the size-matched draws), n (generated
# images the value is computed on).
COLUMNS = CONTRACT + ["std", "lower", "upper", "n"]


def row(context: dict, metric: str, value: float, attribute: str = "all", group: str = "all",
        task: str = "", std: float = math.nan, lower: float = math.nan, upper: float = math.nan,
        n: int | None = None) -> dict:
    """context: dataset, method, seed, extractor (fixed for one output file)."""
    return {**context, "metric": metric, "task": task, "attribute": attribute, "group": group,
            "value": float(value), "std": std, "lower": lower, "upper": upper, "n": n}


def frame(rows: list[dict]) -> pd.DataFrame:
    out = pd.DataFrame(rows, columns=COLUMNS)
    out["n"] = out["n"].astype("Int64")
    return out
