"""HAM10000 (dermoscopy; Tschandl et al. 2018) -> the common manifest.

Published layout (Harvard Dataverse doi:10.7910/DVN/DBW86T, its "download all" zip unpacked;
every file is found anywhere under the root)::

    HAM10000_metadata.csv (or .tab, the Dataverse archival form)
        lesion_id, image_id, dx, dx_type, age, sex, localization
    HAM10000_images_part_1.zip, HAM10000_images_part_2.zip   ISIC_*.jpg (read inside the
        zips, or extracted, e.g. HAM10000_images_part_1/ISIC_*.jpg as `fairdiff download`
        leaves them)
    (the archive's other files, ISIC2018 test images and segmentations, are not used)

Attributes and label (manifest value -> word of the authors' prompt):
    gender      Female | Male from `sex` (unknown sex is dropped and counted)
    age         under_60 -> "Age under 60", 60_or_older -> "Age equal 60 or older"
                (age < 60 vs >= 60; a missing age is dropped and counted)
    malignancy  malignant when dx is mel, bcc or akiec; benign for nv, bkl, df, vasc

Prompt (the authors' template and words, data_handler_ham.py:24-42)::

    Dermoscopic image of a {Male|Female} {Age under 60|Age equal 60 or older} patient with the
    following diagnostic category: {benign|malignant}

The gender word is the patient's gender and the age words the patient's age group. (The
published handler appends [age, gender] (data_handler_ham.py:80-81) but reads the gender word
from attr[0] and the age words from attr[1] (:32-33), crossing them; the same handler forces
every split to read new_train.csv (:54) and reports a length of 10 (:116-117), so it is not
the code behind the paper's HAM10000 results, and its crossing is not reproduced.)

HAM10000 has no official train/val/test split and several images per lesion, so the split is
drawn here at the lesion level (`lesion_id`, the only patient-like key the dataset has; stored
in the `patient` column), after unknown rows are dropped: a seeded shuffle of the lesions cut
by `options.split_fractions` (default train 0.7, val 0.1, test 0.2) with `options.split_seed`
(default 0).

Options: metadata (path relative to the root), split_fractions, split_seed, the image options
of `images` (downsample, minmax, rotate, interpolation), workers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import FairDiffError
from . import images

log = logging.getLogger(__name__)

PROMPT = ("Dermoscopic image of a {gender} {age_words} patient with the following diagnostic "
          "category: {malignancy}")
UNKNOWN = "unknown"
AGE_WORDS = {"under_60": "Age under 60", "60_or_older": "Age equal 60 or older"}
MALIGNANT = {"mel", "bcc", "akiec"}
BENIGN = {"nv", "bkl", "df", "vasc"}
SEX = {"male": "Male", "female": "Female"}
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
COLUMNS = ("lesion_id", "image_id", "dx", "age", "sex")


def age_group(age) -> str:
    try:
        age = float(age)
    except (TypeError, ValueError):
        return UNKNOWN
    if np.isnan(age):
        return UNKNOWN
    return "under_60" if age < 60 else "60_or_older"


def malignancy(dx) -> str:
    dx = str(dx).strip().lower()
    return "malignant" if dx in MALIGNANT else "benign" if dx in BENIGN else UNKNOWN


def _metadata(root: Path, opts: dict) -> tuple[pd.DataFrame, Path]:
    if opts.get("metadata"):
        path = root / opts["metadata"]
        if not path.exists():
            raise FairDiffError(f"{path}: HAM10000 metadata not found (options.metadata)")
    else:
        found = sorted(p for p in root.rglob("HAM10000_metadata*")
                       if p.suffix in (".csv", ".tab", ""))
        if not found:
            raise FairDiffError(f"{root}: HAM10000_metadata.csv not found (set "
                                f"options.metadata to its path relative to the dataset folder)")
        path = found[0]
    sep = "\t" if path.suffix == ".tab" else ","
    frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise FairDiffError(f"{path}: missing column(s) {missing} (columns: {list(frame.columns)})")
    return frame, path


def build(name: str, cfg: dict, out_dir: Path) -> pd.DataFrame:
    opts = cfg.get("options") or {}
    root = images.source_root(name, cfg)
    meta, meta_path = _metadata(root, opts)
    files = images.find(root, "ISIC_*.jpg")

    rows, missing = [], []
    for record in meta.itertuples(index=False):
        if record.image_id not in files:
            missing.append(record.image_id)
            continue
        row = {"id": record.image_id, "patient": record.lesion_id,
               "gender": SEX.get(str(record.sex).strip().lower(), UNKNOWN),
               "age": age_group(record.age), "malignancy": malignancy(record.dx)}
        row["prompt"] = PROMPT.format(age_words=AGE_WORDS.get(row["age"], UNKNOWN), **row)
        rows.append(row)
    if missing:
        log.warning("%d image(s) listed in %s not found under %s (dropped), e.g. %s",
                    len(missing), meta_path.name, root, missing[:3])
    if not rows:
        raise FairDiffError(f"{root}: none of the images listed in {meta_path} was found "
                            f"(expected ISIC_*.jpg in HAM10000_images_part_{{1,2}}[.zip])")

    frame = pd.DataFrame(rows)
    return images.split_patients_and_write(frame, files, cfg, opts, name, FRACTIONS, out_dir)
