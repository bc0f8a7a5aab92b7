"""Image sets (a manifest split or a samples folder's prompts.csv) and their demographic groups.

The images of an image set are read by `models.read_images(rows.attrs["source"], rows)`, the
package's one loader (RGB only, like the training stages).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import FairDiffError


def read_table(path: str | Path, split: str | None, attributes: dict, labels: dict) -> pd.DataFrame:
    """Rows of an image set: a manifest (restricted to `split`) or a samples folder's prompts.csv.

    Both carry the manifest columns; `image` is relative to the table's folder. Values outside
    the declared groups/classes are an error naming the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "prompts.csv"
    if not path.exists():
        raise FairDiffError(f"{path}: image table not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("id", "image", *attributes, *labels) if c not in frame.columns]
    if missing:
        raise FairDiffError(f"{path}: missing column(s) {missing}")
    if split is not None:
        if "split" not in frame.columns:
            raise FairDiffError(f"{path}: no 'split' column to select the '{split}' split")
        frame = frame[frame["split"] == split]
    for kind, declared in (("attribute", attributes), ("label", labels)):
        for column, values in declared.items():
            bad = sorted(set(frame[column]) - set(values))
            if bad:
                raise FairDiffError(f"{path}: {kind} '{column}' has value(s) {bad[:5]} outside "
                                    f"its declared values {values}")
    if frame.empty:
        raise FairDiffError(f"{path}: no images" + (f" in split '{split}'" if split else ""))
    frame = frame.reset_index(drop=True)
    frame.attrs["source"] = str(path)
    return frame


# PIL's default quality, which the authors' `img.save("....jpg")` uses
# (examples/text_to_image/evaluate_fairdiffusion.py:87-88; 4:2:0 chroma subsampling, also PIL's).
JPEG_QUALITY = 75


def jpeg_round_trip(images: np.ndarray, quality: int = JPEG_QUALITY) -> np.ndarray:
    """uint8 [N, H, W, 3] images encoded as JPEG and decoded again, in memory."""
    import io

    out = np.empty_like(images)
    for i, array in enumerate(images):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as img:
            out[i] = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return out


def undo_rotation(images: np.ndarray, degrees: float) -> np.ndarray:
    """uint8 [N, H, W, 3] images turned back by the data stage's `options.rotate` (degrees,
    counter-clockwise): the authors turn real and generated images back before any metric
    (examples/text_to_image/evaluate_fairdiffusion.py:79-80, PIL's rotate(90) after the -90
    of training). Multiples of 90 turn exactly; other angles as PIL's rotate on the same
    canvas (nearest neighbour, like the data stage)."""
    if degrees % 90 == 0:
        return np.ascontiguousarray(np.rot90(images, k=int(-degrees // 90) % 4, axes=(1, 2)))
    return np.stack([np.asarray(Image.fromarray(a).rotate(-degrees)) for a in images])


def read_upright(rows: pd.DataFrame, dataset: dict) -> np.ndarray:
    """uint8 [N, H, W, 3] images of an image table as the extractor sees them: turned back by
    the dataset's `options.rotate` (undo_rotation)."""
    from .. import models

    array = models.read_images(rows.attrs["source"], rows)
    rotate = float((dataset.get("options") or {}).get("rotate") or 0.0)
    return undo_rotation(array, rotate) if rotate else array


class UInt8Images(Dataset):
    """uint8 [N, H, W, 3] images as a Dataset of uint8 [3, H, W] tensors (torch-fidelity's input)."""

    def __init__(self, images: np.ndarray):
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


def groups(frame: pd.DataFrame, attributes: dict) -> Iterator[tuple[str, str, np.ndarray]]:
    """(attribute, group, boolean mask): ("all", "all") first, then every declared group."""
    yield "all", "all", np.ones(len(frame), dtype=bool)
    for attribute, values in attributes.items():
        column = frame[attribute].to_numpy()
        for group in values:
            yield attribute, group, column == group
