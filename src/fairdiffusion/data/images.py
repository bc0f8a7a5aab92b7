"""Shared helpers of the dataset adapters: images (load, square, write PNGs) and the few table
steps every adapter repeats (where the local copy lives, patient-level splits, dropping rows).

Every adapter turns its source images into RGB PNGs of `resolution x resolution`: the shorter
side is resized to `resolution` (Lanczos), then the centre is cropped, as diffusers'
`train_text_to_image.py --resolution --center_crop` does at load time. Doing it once here means
every later stage reads ready-made squares.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from ..errors import FairDiffError

log = logging.getLogger(__name__)


class Job(NamedTuple):
    """One image to convert: where it comes from (for messages), how to load it, where it goes."""

    source: str
    load: Callable[[], Image.Image]
    target: Path


def array_to_image(array: np.ndarray) -> Image.Image:
    """A 2-D (grey) or H x W x {1,3} array as an 8-bit PIL image.

    uint8 is taken as is; floats in [0, 1] are scaled by 255; any other range is min-max scaled
    (SLO arrays are stored as uint8 or float depending on the release).
    """
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] != 3):
        raise ValueError(f"expected an H x W or H x W x 3 image array, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        low, high = float(array.min()), float(array.max())
        if low >= 0.0 and high <= 1.0:
            array = array * 255.0
        elif high > low:
            array = (array - low) * (255.0 / (high - low))
        else:
            array = np.zeros_like(array)
        array = np.clip(np.rint(array), 0, 255).astype(np.uint8)
    return Image.fromarray(array)


def open_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as 8-bit (16-bit and float greyscale are rescaled, not clipped)."""
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "F"):
            return array_to_image(np.asarray(image))
        return image.copy()


def square(image: Image.Image, resolution: int) -> Image.Image:
    """RGB, shorter side resized to `resolution`, centre-cropped to `resolution x resolution`."""
    image = image.convert("RGB")
    width, height = image.size
    scale = resolution / min(width, height)
    size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    left = (size[0] - resolution) // 2
    top = (size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def write_all(jobs: Iterable[Job], resolution: int, workers: int | None = None,
              desc: str = "images") -> None:
    """Convert every job to a square PNG (threads: PIL releases the GIL while decoding/resizing).

    A file that cannot be read raises FairDiffError naming it; the caller's atomic output folder
    is then discarded, so no partial dataset is published.
    """
    jobs = list(jobs)
    workers = workers or min(8, os.cpu_count() or 1)

    def convert(job: Job) -> None:
        try:
            image = job.load()
        except (OSError, ValueError, UnidentifiedImageError, KeyError) as err:
            raise FairDiffError(f"{job.source}: cannot read the image ({err})") from err
        job.target.parent.mkdir(parents=True, exist_ok=True)
        square(image, resolution).save(job.target, format="PNG")

    log.info("writing %d %s at %d px with %d thread(s)", len(jobs), desc, resolution, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(convert, jobs), total=len(jobs), desc=desc, unit="img",
                      mininterval=2.0):
            pass


def target(out_dir: Path, split: str, image_id: str) -> tuple[Path, str]:
    """The PNG path of an image and its path relative to the manifest folder."""
    rel = f"images/{split}/{image_id}.png"
    return Path(out_dir) / rel, rel


def source_root(name: str, cfg: dict) -> Path:
    """The dataset's local copy: `path` when set, else where `fairdiff download` puts it."""
    root = Path(cfg.get("path") or Path("resources") / name)
    if not root.is_dir():
        key = f"datasets.{name}.path"
        raise FairDiffError(f"{root}: dataset folder not found (set {key} to the local copy, or "
                            f"leave it null to download into resources/{name})")
    return root


def patient_split(patients: Iterable[str], fractions: dict, seed: int, where: str) -> dict:
    """Assign each distinct patient to train/val/test with a seeded shuffle (patient-level split).

    `fractions` maps split -> fraction (normalised to sum to 1); the same patients, fractions and
    seed always give the same assignment.
    """
    fractions = {s: float(fractions.get(s, 0.0)) for s in ("train", "val", "test")}
    if any(f < 0 for f in fractions.values()) or fractions["train"] <= 0 or fractions["test"] <= 0:
        raise FairDiffError(f"{where}: split fractions must be >= 0 with train and test > 0, "
                            f"got {fractions}")
    total = sum(fractions.values())
    unique = np.array(sorted(set(map(str, patients))))
    order = np.random.default_rng(seed).permutation(len(unique))
    bounds = np.cumsum([fractions["train"], fractions["val"]]) / total * len(unique)
    n_train, n_val = (int(round(b)) for b in bounds)
    split_of = {}
    for rank, index in enumerate(order):
        split_of[unique[index]] = "train" if rank < n_train else "val" if rank < n_val else "test"
    return split_of


def drop_unknown(frame, declared: dict, what: str):
    """Drop rows whose value in a declared column is not one of its groups/classes (counted)."""
    keep = np.ones(len(frame), dtype=bool)
    for column, values in declared.items():
        if column not in frame.columns:
            continue
        unknown = ~frame[column].astype(str).isin(values).to_numpy()
        if unknown.any():
            log.info("dropped %d row(s) with an unknown or undeclared %s %s",
                     int(unknown.sum()), what, column)
        keep &= ~unknown
    return frame[keep].reset_index(drop=True)


def write_rows(frame, loaders: dict, out_dir: Path, resolution: int, workers: int | None,
               desc: str):
    """Write the PNG of every row (`loaders[id] = (source, load)`); set the `image` column."""
    jobs, rels = [], []
    for image_id, split in zip(frame["id"], frame["split"]):
        path, rel = target(out_dir, split, image_id)
        source, load = loaders[image_id]
        jobs.append(Job(source, load, path))
        rels.append(rel)
    write_all(jobs, resolution, workers, desc=desc)
    frame = frame.copy()
    frame["image"] = rels
    first = ["id", "split", "image", "prompt"]
    return frame[first + [c for c in frame.columns if c not in first]]


def split_patients_and_write(frame, path_of: dict, cfg: dict, opts: dict, name: str,
                             fractions: dict, out_dir: Path):
    """The shared tail of the adapters that split by patient: drop rows whose attribute or
    label value is not declared, split the patients that remain (so the fractions describe the
    data actually used; `datasets.<name>.options.split_fractions/split_seed` override), write
    every row's PNG from `path_of[id]`."""
    frame = drop_unknown(frame, cfg["attributes"], "attribute")
    frame = drop_unknown(frame, cfg["labels"], "label")
    split_of = patient_split(frame["patient"], opts.get("split_fractions") or fractions,
                             int(opts.get("split_seed", 0)),
                             f"datasets.{name}.options.split_fractions")
    frame.insert(1, "split", frame["patient"].map(split_of))
    loaders = {i: (str(path_of[i]), lambda p=path_of[i]: open_image(p)) for i in frame["id"]}
    return write_rows(frame, loaders, out_dir, cfg["resolution"], opts.get("workers"),
                      desc=f"{name} images")
