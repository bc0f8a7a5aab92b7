"""FairGenMed (SLO fundus, glaucoma; Luo et al.) -> the common manifest.

Published layout (Hugging Face `harvardairobotics/FairGenMed`, CC BY-NC-ND 4.0, non-commercial
research only), read as downloaded::

    ReadMe/data_summary.csv                  filename, use, md_severity, cdr_status,
                                             near_vision_refraction_stage / se_status, ...
    Dataset/{Training,Validation,Test}/NPZ.zip   data_NNNNN.npz, one subject each (the split
                                             is the folder), the SLO photos beside them

The npz files and the SLO photos (`slo_fundus_NNNNN.jpg`, or `slo_NNNNN.jpg` as in the sister
release Harvard-FairVision) are found anywhere under each split folder, extracted or still
inside a zip archive there (read in place). The authors' own copy, `{train,val,test}/` with
`data_summary.csv` at the root (data_handler.py:218-219, train_text_to_image_proposed.py:
742-743), is read too; split folders are looked for at the root and under `Dataset/`.

Encodings (npz scalars; -1 or anything else = unknown, dropped and counted):
    race      0 Asian, 1 Black, 2 White, or the long name ("Black or African American",
              "White or Caucasian", "Asian")
    male      0 Female, 1 Male                  (older releases: key `gender`)
    hispanic  0 Non-Hispanic, 1 Hispanic        (older releases: key `ethnicity`)
    glaucoma  0 non-glaucoma, 1 glaucoma

Clinical words of the prompt, from data_summary.csv (a value is either the word itself, a
synonym below, or an integer code = the position in the class list):
    vision_loss           <- md_severity (visual-field mean-deviation severity):
                             normal | mild (early) | moderate | severe (advanced)
    cup_disc              <- cdr_status: normal | borderline | abnormal
    spherical_equivalent  <- near_vision_refraction_stage (or `se_status` where a release
                             has it): positive (hyperopia) | neutral (emmetropia) |
                             negative (myopia)
`rnflt_status` is not part of the authors' prompt and is not used. `options.columns` renames
the source columns (label -> CSV column).

Prompt (the authors' template, data_handler.py:102 and :354-371, exactly)::

    SLO fundus image of a {race} {gender} {ethnicity} patient with the following conditions:
    {glaucoma}, {normal vision | mild vision loss | moderate vision loss | severe vision loss},
    {cup_disc} cup-disc ratio, {spherical_equivalent}

`prompt(row)` builds it; SynthFundus uses the same function.

Image: the authors train on the published photo, `slo_fundus_NNNNN.jpg` (data_handler.py:354
returns its path; train_text_to_image_proposed.py:802 opens it). Their loader also reads the
npz array `slo_fundus`, transposes it and resizes it to 200 px (data_handler.py:293-304), but
that array is never returned (:373): the transpose and the 200 px resize do not reach
training. `options.image: jpg` reads the photo as they do (configs/paper.yaml, with the image
options of `images`: minmax, rotate -90, bilinear). The default, `options.image: npz`, uses the
array as stored (200 x 200 in the Harvard releases, vs the photo's 512 x 664);
`npz_orientation` (transpose | rot90 | rot180 | rot270) turns it. Every split is converted the
same way, so real and generated images always share one orientation.

Options: image, npz_orientation, columns, summary (path of data_summary.csv relative to the
root), split_dirs ({split: folder}; default train/Training, val/Validation, test/Test), the
image options of `images` (downsample, minmax, rotate, interpolation), workers.
"""

from __future__ import annotations

import io
import logging
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..errors import FairDiffError
from . import images

log = logging.getLogger(__name__)

# The authors' prompt: data_handler.py:102 (template), :357-360 (glaucoma words), :230-232
# (condition words) and :370-371 ("normal vision loss" is written "normal vision").
PROMPT = ("SLO fundus image of a {race} {gender} {ethnicity} patient with the following "
          "conditions: {glaucoma}, {vision}, {cup_disc} cup-disc ratio, {spherical_equivalent}")

UNKNOWN = "unknown"
RACE = ["Asian", "Black", "White"]
RACE_NAMES = {"asian": "Asian", "black": "Black", "black or african american": "Black",
              "white": "White", "white or caucasian": "White"}
GENDER = ["Female", "Male"]
ETHNICITY = ["Non-Hispanic", "Hispanic"]
GLAUCOMA = ["non-glaucoma", "glaucoma"]

# label -> (class words in code order, synonyms seen in ophthalmic summaries)
LABELS = {
    "vision_loss": (["normal", "mild", "moderate", "severe"],
                    {"early": "mild", "advanced": "severe"}),
    "cup_disc": (["normal", "borderline", "abnormal"], {}),
    "spherical_equivalent": (["positive", "neutral", "negative"],
                             {"hyperopia": "positive", "hyperopic": "positive",
                              "emmetropia": "neutral", "emmetropic": "neutral",
                              "myopia": "negative", "myopic": "negative"}),
}
COLUMNS = {"vision_loss": "md_severity", "cup_disc": "cdr_status",
           "spherical_equivalent": "near_vision_refraction_stage"}
COLUMN_FALLBACKS = {"spherical_equivalent": "se_status"}

SPLIT_DIRS = {"train": ("train", "Training"), "val": ("val", "Validation"),
              "test": ("test", "Test")}
ORIENTATIONS = {
    "as_stored": lambda a: a,
    "transpose": lambda a: np.swapaxes(a, 0, 1),
    "rot90": lambda a: np.rot90(a, 1),
    "rot180": lambda a: np.rot90(a, 2),
    "rot270": lambda a: np.rot90(a, 3),
}


def prompt(row) -> str:
    """The authors' prompt of a row holding the attribute and label words (SynthFundus too)."""
    loss = row["vision_loss"]
    vision = "normal vision" if loss == "normal" else f"{loss} vision loss"
    return PROMPT.format(vision=vision, **row)


def code_or_word(value, classes: list[str], synonyms: dict | None = None) -> str:
    """A stored value (integer code, number, word or synonym) as its class word, else unknown."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str):
        text = value.strip()
        lowered = {c.lower(): c for c in classes}
        if text.lower() in lowered:
            return lowered[text.lower()]
        if synonyms and text.lower() in synonyms:
            return synonyms[text.lower()]
        try:
            value = float(text)
        except ValueError:
            return UNKNOWN
    try:
        number = float(value)
    except (TypeError, ValueError):
        return UNKNOWN
    if np.isnan(number) or number != int(number) or not 0 <= number < len(classes):
        return UNKNOWN
    return classes[int(number)]


def race_word(value) -> str:
    """race as an int code (0 Asian, 1 Black, 2 White) or the long string name."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.strip().lower() in RACE_NAMES:
        return RACE_NAMES[value.strip().lower()]
    return code_or_word(value, RACE)


def _scalar(data, keys: tuple[str, ...], path: Path):
    for key in keys:
        if key in data.files:
            return data[key].item() if data[key].size == 1 else UNKNOWN
    raise FairDiffError(f"{path}: none of the keys {list(keys)} found (keys: {data.files})")


def _summary(root: Path, opts: dict) -> pd.DataFrame:
    candidates = [opts["summary"]] if opts.get("summary") else ["data_summary.csv",
                                                                "ReadMe/data_summary.csv"]
    for candidate in candidates:
        path = root / candidate
        if path.exists():
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
            if "filename" not in frame.columns:
                raise FairDiffError(f"{path}: no 'filename' column (columns: "
                                    f"{list(frame.columns)})")
            return frame.drop_duplicates("filename").set_index("filename")
    raise FairDiffError(f"{root}: data_summary.csv not found (tried {candidates}; set "
                        f"options.summary to its path relative to the dataset folder)")


def _columns(summary: pd.DataFrame, opts: dict, where: Path) -> dict:
    chosen, given = {}, opts.get("columns") or {}
    for label, default in COLUMNS.items():
        column = given.get(label, default)
        if label not in given and column not in summary.columns and label in COLUMN_FALLBACKS:
            column = COLUMN_FALLBACKS[label]
        if column not in summary.columns:
            raise FairDiffError(f"{where}: data_summary.csv has no column '{column}' for "
                                f"{label} (set options.columns.{label})")
        chosen[label] = column
    return chosen


def _split_dirs(root: Path, opts: dict) -> dict:
    given = opts.get("split_dirs")
    found = {}
    for split, defaults in SPLIT_DIRS.items():
        if given and split in given and given[split] is None:
            continue
        if given and given.get(split):
            names = [given[split]]
        else:
            names = [*defaults, *(f"Dataset/{d}" for d in defaults)]
        folder = next((root / n for n in names if (root / n).is_dir()), None)
        if folder is None:
            raise FairDiffError(f"{root}: no {split} folder (tried {names}; set "
                                f"options.split_dirs.{split})")
        found[split] = folder
    return found


def _load_npz(where):
    """np.load of an npz file or zip member (a member is read into memory)."""
    if isinstance(where, images.Member):
        return np.load(io.BytesIO(images.read_bytes(where)), allow_pickle=False)
    return np.load(where, allow_pickle=False)


def _loader(npz, jpg, opts: dict):
    if opts.get("image", "npz") == "jpg":
        return str(jpg), lambda: images.open_image(jpg)
    orient = ORIENTATIONS[opts.get("npz_orientation", "as_stored")]

    def load():
        with _load_npz(npz) as data:
            return images.array_to_image(orient(data["slo_fundus"]))

    return f"{npz}:slo_fundus", load


def build(name: str, cfg: dict, out_dir: Path) -> pd.DataFrame:
    opts = cfg.get("options") or {}
    if opts.get("image", "npz") not in ("npz", "jpg"):
        raise FairDiffError(f"datasets.{name}.options.image: expected npz or jpg, "
                            f"got {opts['image']!r}")
    if opts.get("npz_orientation", "as_stored") not in ORIENTATIONS:
        raise FairDiffError(f"datasets.{name}.options.npz_orientation: expected one of "
                            f"{list(ORIENTATIONS)}, got {opts['npz_orientation']!r}")
    root = images.source_root(name, cfg)
    summary = _summary(root, opts)
    columns = _columns(summary, opts, root)
    log.info("FairGenMed is licensed CC BY-NC-ND 4.0: non-commercial research use only")

    subjects = []                                   # (split, stem, npz, jpg)
    for split, folder in _split_dirs(root, opts).items():
        jpgs = images.find(folder, "slo_*.jpg") if opts.get("image") == "jpg" else {}
        for stem, npz in images.find(folder, "data_*.npz").items():
            number = stem.removeprefix("data_")
            jpg = jpgs.get(f"slo_fundus_{number}") or jpgs.get(f"slo_{number}")
            if opts.get("image") == "jpg" and jpg is None:
                raise FairDiffError(f"{folder}: no slo_fundus_{number}.jpg for {npz} "
                                    f"(options.image: jpg reads the published photo; "
                                    f"options.image: npz the array inside the npz)")
            subjects.append((split, stem, npz, jpg))

    def groups(subject):
        npz = subject[2]
        try:
            with _load_npz(npz) as data:
                return (race_word(_scalar(data, ("race",), npz)),
                        code_or_word(_scalar(data, ("male", "gender"), npz), GENDER),
                        code_or_word(_scalar(data, ("hispanic", "ethnicity"), npz), ETHNICITY),
                        code_or_word(_scalar(data, ("glaucoma",), npz), GLAUCOMA))
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise FairDiffError(f"{npz}: cannot read the npz ({err})") from err

    # Threads: a zipped npz is decompressed whole (its OCT volume too) to read four scalars,
    # and zlib releases the GIL.
    workers = opts.get("workers") or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        scalars = list(tqdm(pool.map(groups, subjects), total=len(subjects), mininterval=2.0,
                            desc=f"{name} npz", unit="file"))
    rows, loaders, missing_summary = [], {}, 0
    for (split, stem, npz, jpg), (race, gender, ethnicity, glaucoma) in zip(subjects, scalars):
        row = {"id": stem, "split": split, "patient": stem, "race": race, "gender": gender,
               "ethnicity": ethnicity, "glaucoma": glaucoma}
        if f"{stem}.npz" in summary.index:
            record = summary.loc[f"{stem}.npz"]
            for label, column in columns.items():
                classes, synonyms = LABELS[label]
                row[label] = code_or_word(record[column], classes, synonyms)
        else:
            missing_summary += 1
            row.update({label: UNKNOWN for label in LABELS})
        row["prompt"] = prompt(row)
        rows.append(row)
        loaders[stem] = _loader(npz, jpg, opts)
    if not rows:
        raise FairDiffError(f"{root}: no data_*.npz files in the split folders")
    if missing_summary:
        log.info("%d npz file(s) have no data_summary.csv row (their labels are unknown)",
                 missing_summary)

    frame = pd.DataFrame(rows)
    frame = images.drop_unknown(frame, cfg["attributes"], "attribute")
    frame = images.drop_unknown(frame, cfg["labels"], "label")
    return images.write_rows(frame, loaders, out_dir, cfg, name)
