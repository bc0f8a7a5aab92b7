"""Reading the tidy metric CSVs, and what each metric's direction and label are."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from ..errors import FairDiffError
from ..evaluate.equity import direction
from ..evaluate.tidy import CONTRACT

# The tidy contract (evaluate.tidy) and the metric directions (evaluate.equity) are owned by the
# modules that write the metrics; the report reads them from there.
COLUMNS = CONTRACT
KEYS = ["metric", "task", "attribute", "group", "extractor"]
REFERENCE = "real"  # the method name of rows measured on (or trained on) real images


def arrow(metric: str) -> str:
    return {"lower": " ↓", "higher": " ↑", None: ""}[direction(metric)]


def label(metric: str, attribute: str = "all", group: str = "all", extractor: str = "") -> str:
    """Column header: metric with its direction, its scope, and the extractor that produced it,
    e.g. 'FID ↓ [domain]', 'ES-FID ↓ race [domain]', 'FID ↓ race: Asian [domain]'."""
    text = metric + arrow(metric)
    if group != "all":
        text += f" {attribute}: {group}"
    elif attribute != "all":
        text += f" {attribute}"
    if extractor:
        text += f" [{extractor}]"
    return text


def read(paths: Iterable[str | Path]) -> pd.DataFrame:
    """Concatenate tidy metric CSVs; string columns as strings ('' where empty), value as float."""
    frames = []
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise FairDiffError(f"{path}: metric CSV not found")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in COLUMNS if c not in frame.columns]
        if missing:
            raise FairDiffError(f"{path}: missing column(s) {missing}; expected {COLUMNS}")
        value = pd.to_numeric(frame["value"].replace("", "nan"), errors="coerce")
        bad = frame["value"][value.isna() & ~frame["value"].str.lower().isin(["", "nan"])]
        if len(bad):
            raise FairDiffError(f"{path}: non-numeric value(s) {list(bad[:3])} in column 'value'")
        frame = frame[COLUMNS].assign(value=value.astype(float))
        frames.append(frame)
    if not frames:
        raise FairDiffError("no metric CSV given")
    return pd.concat(frames, ignore_index=True)


def first_seen(values: Iterable[str], first: str | None = "all") -> dict[str, int]:
    """Rank of each value by first appearance (`first` ranks before everything)."""
    order: dict[str, int] = {}
    if first is not None:
        order[first] = -1
    for value in values:
        order.setdefault(value, len(order))
    return order
