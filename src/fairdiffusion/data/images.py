"""Shared helpers of the dataset adapters: images (find, load, square, write PNGs) and the few
table steps every adapter repeats (where the local copy lives, patient-level splits, dropping
rows).

Every adapter turns its source images into RGB PNGs of `resolution x resolution`, once, so every
later stage reads ready-made squares. By default the shorter side is resized to `resolution`
(Lanczos) and the centre cropped, as diffusers' `train_text_to_image.py --resolution
--center_crop` does at load time. The adapter options below (`datasets.<name>.options`, every
source) reproduce the authors' loaders instead, applied in their order:

    downsample: N     resize to N x N first, aspect not kept (data_handler_ham.py:95-97 and
                      data_handler_chexpert.py:130-132 resize to 200 x 200; PIL bilinear here,
                      skimage's anti-aliased bilinear there)
    minmax: true      min-max normalise each image to 0-255, truncating (their normalize_image,
                      train_text_to_image_proposed.py:516-527, applied at :802)
    rotate: D         turn by D degrees counter-clockwise, nearest neighbour, same canvas size
                      (their transforms.RandomRotation((-90, -90)), :792)
    interpolation: bilinear
                      torchvision Resize(resolution, BILINEAR) + CenterCrop(resolution), their
                      :793-794 (default lanczos: the PIL resize and crop above)

Source files may also sit inside zip archives under the dataset folder, as the published
archives arrive (HAM10000's image parts, FairGenMed's NPZ.zip): `find` lists them as `Member`s,
read in place, so a read-only copy (a Hugging Face cache) works unextracted.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
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


class Member(NamedTuple):
    """A file inside a zip archive: `archive` on disk, `name` the member's path in it."""

    archive: Path
    name: str

    def __str__(self) -> str:
        return f"{self.archive}:{self.name}"


class Preprocess(NamedTuple):
    """How a source image becomes the square PNG (see the module docstring)."""

    downsample: int | None = None
    minmax: bool = False
    rotate: float = 0.0
    interpolation: str = "lanczos"


INTERPOLATIONS = ("lanczos", "bilinear")


def preprocess(opts: dict, name: str) -> Preprocess:
    """The image options of `datasets.<name>.options` (unset = the default pipeline)."""
    chosen = Preprocess(opts.get("downsample"), bool(opts.get("minmax", False)),
                        float(opts.get("rotate", 0.0)), opts.get("interpolation", "lanczos"))
    if chosen.interpolation not in INTERPOLATIONS:
        raise FairDiffError(f"datasets.{name}.options.interpolation: expected one of "
                            f"{list(INTERPOLATIONS)}, got {chosen.interpolation!r}")
    if chosen.downsample is not None and int(chosen.downsample) < 1:
        raise FairDiffError(f"datasets.{name}.options.downsample: expected a size >= 1, got "
                            f"{chosen.downsample!r}")
    return chosen


def find(root: Path, pattern: str) -> dict[str, Path | Member]:
    """Every file under `root` whose name matches `pattern`, as {stem: where}, looking inside
    the zip archives under `root` too (one level). Sorted, the first of equal stems wins."""
    found: dict[str, Path | Member] = {}
    for path in sorted(Path(root).rglob(pattern)):
        found.setdefault(path.stem, path)
    for archive in sorted(Path(root).rglob("*.zip")):
        try:
            with zipfile.ZipFile(archive) as zf:
                names = sorted(zf.namelist())
        except (OSError, zipfile.BadZipFile) as err:
            raise FairDiffError(f"{archive}: cannot read the zip archive ({err})") from err
        for member in names:
            inner = Path(member)
            if inner.match(pattern) and not member.endswith("/"):
                found.setdefault(inner.stem, Member(archive, member))
    return found


def read_bytes(where: Path | Member) -> bytes:
    """The bytes of a file or of a zip member."""
    if isinstance(where, Member):
        with zipfile.ZipFile(where.archive) as zf:
            return zf.read(where.name)
    return Path(where).read_bytes()


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


def open_image(path: str | os.PathLike | Member) -> Image.Image:
    """Open an image file (or zip member) as 8-bit (16-bit and float greyscale are rescaled,
    not clipped)."""
    source = io.BytesIO(read_bytes(path)) if isinstance(path, Member) else path
    with Image.open(source) as image:
        image.load()
        if image.mode in ("I", "I;16", "I;16B", "F"):
            return array_to_image(np.asarray(image))
        return image.copy()


def minmax(image: Image.Image) -> Image.Image:
    """Min-max normalised to 0-255 as the authors' normalize_image (train_text_to_image_proposed.py
    :516-527): the same arithmetic, truncated to uint8. A flat image, which they would divide
    by zero, is returned unchanged."""
    array = np.array(image)
    low, high = array.min(), array.max()
    if high == low:
        return image
    return Image.fromarray(((array - low) / (high - low) * 255).astype(np.uint8))


def convert(image: Image.Image, resolution: int, how: Preprocess = Preprocess()) -> Image.Image:
    """A source image as the RGB `resolution x resolution` square, through `how`'s steps."""
    image = image.convert("RGB")
    if how.downsample:
        image = image.resize((int(how.downsample),) * 2, Image.Resampling.BILINEAR)
    if how.minmax:
        image = minmax(image)
    if how.interpolation == "lanczos" and not how.rotate:
        return square(image, resolution)
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    if how.rotate:
        image = F.rotate(image, how.rotate, InterpolationMode.NEAREST, expand=False, fill=0)
    if how.interpolation == "lanczos":
        return square(image, resolution)
    image = F.resize(image, resolution, InterpolationMode.BILINEAR)
    return F.center_crop(image, resolution)


def square(image: Image.Image, resolution: int) -> Image.Image:
    """RGB, shorter side resized to `resolution` (Lanczos), centre-cropped to `resolution x
    resolution`."""
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
              desc: str = "images", how: Preprocess = Preprocess()) -> None:
    """Convert every job to a square PNG (threads: PIL releases the GIL while decoding/resizing).

    A file that cannot be read raises FairDiffError naming it; the caller's atomic output folder
    is then discarded, so no partial dataset is published.
    """
    jobs = list(jobs)
    workers = workers or min(8, os.cpu_count() or 1)

    def write(job: Job) -> None:
        try:
            image = job.load()
        except (OSError, ValueError, UnidentifiedImageError, KeyError) as err:
            raise FairDiffError(f"{job.source}: cannot read the image ({err})") from err
        job.target.parent.mkdir(parents=True, exist_ok=True)
        convert(image, resolution, how).save(job.target, format="PNG")

    log.info("writing %d %s at %d px with %d thread(s)", len(jobs), desc, resolution, workers)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(write, jobs), total=len(jobs), desc=desc, unit="img",
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


def write_rows(frame, loaders: dict, out_dir: Path, cfg: dict, name: str):
    """Write the PNG of every row (`loaders[id] = (source, load)`) at the dataset's resolution,
    through its image options; set the `image` column."""
    opts = cfg.get("options") or {}
    jobs, rels = [], []
    for image_id, split in zip(frame["id"], frame["split"]):
        path, rel = target(out_dir, split, image_id)
        source, load = loaders[image_id]
        jobs.append(Job(source, load, path))
        rels.append(rel)
    write_all(jobs, int(cfg["resolution"]), opts.get("workers"), desc=f"{name} images",
              how=preprocess(opts, name))
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
    return write_rows(frame, loaders, out_dir, cfg, name)
