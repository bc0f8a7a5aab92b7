"""Bring your own dataset (`source: csv`): a manifest CSV written by a user -> the common manifest.

The CSV (`options.csv`, relative to the working directory or absolute) has one row per image:

    image        path of the image file, relative to the CSV's folder or absolute (any format
                 PIL reads; resized and centre-cropped to the dataset's resolution)
    split        train | val | test (val may be absent; train and test may not)
    prompt       the text prompt, OR no prompt column and `options.prompt_template`, a Python
                 format string with {column} placeholders filled from the row
    <attribute>  one column per declared attribute, values among its groups; other values
                 (empty, "unknown", ...) drop the row, counted in the log
    <label>      one column per declared label, values among its classes (anything else is an
                 error)
    id           optional unique id (letters, digits, . _ -); default row<line number>
    patient      optional; rows of one patient must share one split

Every problem is reported as one line naming the CSV and the column.
"""

from __future__ import annotations

import logging
import re
import string
from pathlib import Path

import pandas as pd

from ..errors import FairDiffError
from . import images

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SAFE_ID = re.compile(r"^[A-Za-z0-9._-]+$")


def _fail(csv: Path, message: str):
    raise FairDiffError(f"{csv}: {message}")


def _lines(mask) -> list[int]:
    """CSV line numbers (header = line 1) of the rows selected by a boolean mask, first five."""
    return [int(i) + 2 for i in mask[mask].index[:5]]


def read(name: str, cfg: dict) -> tuple[pd.DataFrame, Path]:
    """Read and check the user's CSV; return rows with `prompt`, `id` and absolute `path`."""
    opts = cfg.get("options") or {}
    if not opts.get("csv"):
        raise FairDiffError(f"datasets.{name}.options.csv: required for source: csv (the path "
                            f"of your manifest CSV)")
    csv = Path(opts["csv"])
    if not csv.is_file():
        raise FairDiffError(f"datasets.{name}.options.csv: {csv} not found")
    frame = pd.read_csv(csv, dtype=str, keep_default_na=False)
    template = opts.get("prompt_template")

    required = ["image", "split", *cfg["attributes"], *cfg["labels"]]
    if template is None:
        required.append("prompt")
    for column in required:
        if column not in frame.columns:
            hint = " (or set options.prompt_template)" if column == "prompt" else ""
            _fail(csv, f"missing column '{column}'{hint}; columns are {list(frame.columns)}")
    if frame.empty:
        _fail(csv, "no rows")

    bad = ~frame["split"].isin(SPLITS)
    if bad.any():
        _fail(csv, f"column 'split' has value(s) {sorted(set(frame['split'][bad]))[:5]} on "
                   f"line(s) {_lines(bad)}; expected one of {list(SPLITS)}")

    if template is not None:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        for field in fields:
            if field not in frame.columns:
                _fail(csv, f"options.prompt_template uses {{{field}}}, which is not a column "
                           f"(columns: {list(frame.columns)})")
        frame["prompt"] = [template.format(**row) for row in frame.to_dict("records")]
    empty = frame["prompt"].str.strip() == ""
    if empty.any():
        _fail(csv, f"column 'prompt' is empty on line(s) {_lines(empty)}")

    for label, classes in cfg["labels"].items():
        bad = ~frame[label].isin(classes)
        if bad.any():
            _fail(csv, f"column '{label}' has value(s) {sorted(set(frame[label][bad]))[:5]} on "
                       f"line(s) {_lines(bad)} outside its declared classes {classes}")
    for attribute, groups in cfg["attributes"].items():
        other = sorted(set(frame[attribute]) - set(groups))
        if other:
            log.info("column '%s': value(s) %s are not declared groups; those rows are dropped",
                     attribute, other[:5])

    if "id" in frame.columns:
        unsafe = ~frame["id"].str.match(SAFE_ID)
        if unsafe.any():
            _fail(csv, f"column 'id' has value(s) {list(frame['id'][unsafe][:5])} on line(s) "
                       f"{_lines(unsafe)}; use letters, digits, '.', '_' and '-' only")
        duplicated = frame["id"].duplicated()
        if duplicated.any():
            _fail(csv, f"column 'id' has duplicate value(s) "
                       f"{sorted(set(frame['id'][duplicated]))[:5]}")
    else:
        frame["id"] = [f"row{i + 2:06d}" for i in range(len(frame))]

    if "patient" in frame.columns:
        splits = frame.groupby("patient")["split"].nunique()
        leaked = list(splits[splits > 1].index[:5])
        if leaked:
            _fail(csv, f"column 'patient': patient(s) {leaked} appear in more than one split")

    paths = [Path(p) if Path(p).is_absolute() else csv.parent / p for p in frame["image"]]
    absent = pd.Series([not p.is_file() for p in paths], index=frame.index)
    if absent.any():
        _fail(csv, f"column 'image': {int(absent.sum())} file(s) not found, e.g. "
                   f"{list(frame['image'][absent][:3])} on line(s) {_lines(absent)} (paths are "
                   f"relative to the CSV's folder)")
    frame["path"] = paths
    return frame, csv


def build(name: str, cfg: dict, out_dir: Path) -> pd.DataFrame:
    frame, csv = read(name, cfg)
    keep = ["id", "split", "prompt", *cfg["attributes"], *cfg["labels"], "path"]
    if "patient" in frame.columns:
        keep.append("patient")
    frame = images.drop_unknown(frame[keep], cfg["attributes"], "attribute")
    loaders = {i: (f"{csv}: {p}", lambda p=p: images.open_image(p))
               for i, p in zip(frame["id"], frame["path"])}
    return images.write_rows(frame.drop(columns="path"), loaders, out_dir, cfg, name)
