"""The manifest contract: the one table per dataset that every later stage reads.

Columns: `id` (unique), `split` (train/val/test), `image` (PNG path relative to the manifest's
folder, RGB, resolution x resolution), `prompt`, one column per declared attribute (group names
as strings), one per clinical label (class names as strings); optional `patient` (splits are
disjoint by patient where the source has one).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..errors import FairDiffError

SPLITS = ("train", "val", "test")
REQUIRED = ("id", "split", "image", "prompt")


def validate(frame: pd.DataFrame, attributes: dict, labels: dict, where: str) -> pd.DataFrame:
    """Check a manifest against the declared attributes and labels; return it unchanged."""
    missing = [c for c in (*REQUIRED, *attributes, *labels) if c not in frame.columns]
    if missing:
        raise FairDiffError(f"{where}: missing column(s) {missing}; expected {list(REQUIRED)} "
                            f"plus the declared attributes and labels")
    dup = frame["id"][frame["id"].duplicated()]
    if len(dup):
        raise FairDiffError(f"{where}: duplicate id(s) {sorted(dup.astype(str).unique())[:5]}")
    bad_split = sorted(set(frame["split"]) - set(SPLITS))
    if bad_split:
        raise FairDiffError(f"{where}: split value(s) {bad_split} not in {list(SPLITS)}")
    for kind, declared in (("attribute", attributes), ("label", labels)):
        for column, values in declared.items():
            bad = sorted(set(frame[column].astype(str)) - set(values))
            if bad:
                raise FairDiffError(f"{where}: {kind} '{column}' has value(s) {bad[:5]} outside "
                                    f"its declared groups {values}")
    for split in ("train", "test"):
        if not (frame["split"] == split).any():
            raise FairDiffError(f"{where}: the '{split}' split is empty")
    if "patient" in frame.columns:
        by_patient = frame.groupby("patient")["split"].nunique()
        leaked = by_patient[by_patient > 1]
        if len(leaked):
            raise FairDiffError(f"{where}: patient(s) {list(leaked.index[:5])} appear in more "
                                f"than one split")
    return frame


def read(path: str | Path, attributes: dict | None = None, labels: dict | None = None) -> pd.DataFrame:
    """Read a manifest CSV (all columns as strings); validate it when the declarations are given."""
    path = Path(path)
    if not path.exists():
        raise FairDiffError(f"{path}: manifest not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if attributes is not None:
        validate(frame, attributes, labels or {}, str(path))
    return frame


def image_path(manifest_path: str | Path, image: str) -> Path:
    """Where a manifest row's image lives (paths are relative to the manifest's folder)."""
    image = Path(image)
    return image if image.is_absolute() else Path(manifest_path).parent / image

