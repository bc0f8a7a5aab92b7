"""`fairdiff data`: turn a dataset's source into `manifest.csv` + `images/` (atomically).

Each source module provides `build(name, cfg, out_dir) -> DataFrame`: it writes RGB PNGs at the
dataset's resolution under `out_dir/images/` and returns manifest rows with `image` relative to
`out_dir`. This stage then drops rows with unknown attribute values, applies `limit`, validates
the contract (`manifest.validate`) and publishes the folder in one rename.
"""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

from .. import io
from . import images, manifest

log = logging.getLogger(__name__)

SOURCES = {
    "synthetic": "fairdiffusion.data.synthetic",
    "fairgenmed": "fairdiffusion.data.fairgenmed",
    "ham10000": "fairdiffusion.data.ham10000",
    "chexpert": "fairdiffusion.data.chexpert",
    "csv": "fairdiffusion.data.user_csv",
}


def add_arguments(parser):
    from ..cli import json_arg

    parser.add_argument("--name", required=True, help="dataset name (the {dataset} wildcard)")
    parser.add_argument("--dataset", required=True, type=json_arg,
                        help="the dataset's config section (JSON, or @file.yaml)")
    parser.add_argument("--out", required=True, type=Path,
                        help="output folder: manifest.csv, images/, run_info.json")


def prepare(name: str, cfg: dict, out: Path):
    source = importlib.import_module(SOURCES[cfg["source"]])
    with io.atomic_dir(out) as tmp:
        frame = source.build(name, cfg, tmp)
        frame = images.drop_unknown(frame, cfg["attributes"], "attribute")
        frame = apply_limit(frame, cfg.get("limit") or {})
        manifest.validate(frame, cfg["attributes"], cfg["labels"], f"dataset '{name}'")
        used = set(frame["image"])
        for png in (tmp / "images").rglob("*.png"):
            if str(png.relative_to(tmp)) not in used:
                png.unlink()
        frame.to_csv(tmp / "manifest.csv", index=False)
        io.write_json(tmp / "run_info.json", io.run_info({"name": name, "dataset": cfg}))
    counts = frame.groupby("split").size().to_dict()
    log.info("dataset %s: %s images per split", name, counts)
    return frame


def apply_limit(frame, limit: dict):
    """Keep the first `limit[split]` rows of each split (manifest order is deterministic)."""
    parts = []
    for split, rows in frame.groupby("split", sort=False):
        n = limit.get(split)
        parts.append(rows if n is None else rows.head(n))
    return frame.loc[sorted(i for p in parts for i in p.index)].reset_index(drop=True)


def run(args):
    prepare(args.name, args.dataset, args.out)
