"""CheXpert (chest X-ray; Irvin et al. 2019) -> the common manifest.

CheXpert needs registration (Stanford AIMI), so it is never downloaded: point
`datasets.<name>.path` at the local copy. Published layout, read as downloaded::

    CheXpert-v1.0-small/          (CheXpert-v1.0-small.zip extracted; or CheXpert-v1.0/)
        train.csv, valid.csv      Path, Sex, Age, Frontal/Lateral, AP/PA, 14 observations
                                  (1.0 positive, 0.0 negative, -1.0 uncertain, blank not
                                  mentioned); Path relative to the folder above, e.g.
                                  CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg
        train/, valid/            patientNNNNN/studyN/viewN_{frontal,lateral}.jpg
    CHEXPERT DEMO.xlsx            the separate demographics download, beside that folder:
                                  PATIENT, GENDER, AGE_AT_CXR, PRIMARY_RACE, ETHNICITY (read
                                  with openpyxl; a CSV export of it works too)

`path` may name either folder: the one holding CheXpert-v1.0-small/ (and the sheet), or
CheXpert-v1.0-small/ itself. The sheet is looked for beside train.csv and one folder up.

Attributes and label (manifest value = word of the authors' prompt):
    gender            Male | Female from `Sex` (Unknown is dropped and counted)
    race              Asian | Black | White from PRIMARY_RACE: strings starting with "White"
                      ("White", "White, non-Hispanic", "White or Caucasian", ...), "Black"
                      ("Black or African American", "Black, Hispanic", ...) or "Asian"
                      ("Asian", "Asian, non-Hispanic", "Asian - Historical Conv", ...); every
                      other value (Other, Unknown, Native American, Pacific Islander, Patient
                      Refused, a patient missing from the sheet) is dropped and counted
    pleural_effusion  "Pleural Effusion" | "non Pleural Effusion" from the `Pleural Effusion`
                      column; uncertain (-1) follows options.uncertain: zeros (default, as the
                      authors: -1 and blank -> negative) | ones (-1 -> positive) | drop (-1 rows
                      dropped and counted); blank is negative under every policy

Prompt (the authors' template and words, data_handler_chexpert.py:40-55)::

    Chest Radiography image of a {Male|Female} {Asian|Black|White} patient diagnosed with
    {non Pleural Effusion|Pleural Effusion}

The authors read a pre-sampled table (chexpert_sample_{train_6000,val_1000,test_3000}.csv,
data_handler_chexpert.py:63-68) with race already Asian/Black/White (:114) and uncertain -1 set
to negative (:145-146); that table is not published, so the race grouping, the frontal-only
filter and the split here are ours.

Only frontal views are kept by default (options.frontal_only: true). train.csv and valid.csv
are pooled and split at the patient level with a seeded shuffle (options.split_fractions,
default train 0.7 / val 0.1 / test 0.2; options.split_seed, default 0), so no patient is in two
splits.

Options: uncertain, frontal_only, split_fractions, split_seed, csvs (default [train.csv,
valid.csv]), demographics (path relative to the folder of train.csv), the image options of
`images` (downsample, minmax, rotate, interpolation), workers.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pandas as pd

from ..errors import FairDiffError
from . import images

log = logging.getLogger(__name__)

PROMPT = "Chest Radiography image of a {gender} {race} patient diagnosed with {pleural_effusion}"
UNKNOWN = "unknown"
POSITIVE, NEGATIVE = "Pleural Effusion", "non Pleural Effusion"
LABEL_COLUMN = "Pleural Effusion"
POLICIES = ("zeros", "ones", "drop")
DEMOGRAPHICS = ("CHEXPERT DEMO.csv", "CHEXPERT DEMO.xlsx", "chexpert_demo.csv")
FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}
PATIENT = re.compile(r"(patient\d+)")


def race_group(primary_race) -> str:
    """PRIMARY_RACE string -> Asian | Black | White, else unknown."""
    text = str(primary_race).strip().lower()
    for prefix, group in (("white", "White"), ("black", "Black"), ("asian", "Asian")):
        if text.startswith(prefix):
            return group
    return UNKNOWN


def effusion(value, policy: str) -> str:
    """A CheXpert observation value (1, 0, -1, blank) as a class word under `policy`."""
    text = str(value).strip()
    try:
        number = float(text) if text else 0.0
    except ValueError:
        return UNKNOWN
    if number == -1.0:
        return {"zeros": NEGATIVE, "ones": POSITIVE, "drop": UNKNOWN}[policy]
    return POSITIVE if number == 1.0 else NEGATIVE


def locate(root: Path) -> Path:
    """The folder holding train.csv: `root` itself or its CheXpert-v1.0*/ subfolder."""
    if (root / "train.csv").is_file():
        return root
    inner = sorted(p.parent for p in root.glob("CheXpert-v1.0*/train.csv"))
    if len(inner) == 1:
        return inner[0]
    raise FairDiffError(f"{root}: no CheXpert train.csv here or in a CheXpert-v1.0*/ folder "
                        f"(found {len(inner)}); set path to the folder CheXpert-v1.0-small.zip "
                        f"was extracted into, or to CheXpert-v1.0-small/ itself")


def _demographics(root: Path, opts: dict) -> pd.DataFrame:
    if opts.get("demographics"):
        candidates = [root / opts["demographics"]]
    else:
        candidates = [folder / n for folder in (root, root.parent) for n in DEMOGRAPHICS]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        raise FairDiffError(f"{root}: CheXpert demographics sheet not found (tried "
                            f"{[str(c) for c in candidates]}; set options.demographics)")
    if path.suffix == ".xlsx":
        try:
            frame = pd.read_excel(path, dtype=str)
        except (ImportError, ValueError, OSError) as err:
            raise FairDiffError(f"{path}: cannot read the sheet ({err})") from err
    else:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("PATIENT", "PRIMARY_RACE") if c not in frame.columns]
    if missing:
        raise FairDiffError(f"{path}: missing column(s) {missing} (columns: {list(frame.columns)})")
    return frame.drop_duplicates("PATIENT").set_index("PATIENT")


def _image_base(root: Path, relative: str) -> tuple[Path, int] | None:
    """(folder, leading parts to strip) that make a `Path` entry an existing file.

    The CSVs list `CheXpert-v1.0[-small]/train/...`, relative to the folder above the dataset;
    a copy unpacked without that top folder is found too.
    """
    parts = Path(relative).parts
    for base, strip in ((root.parent, 0), (root, 0), (root, 1)):
        if base.joinpath(*parts[strip:]).exists():
            return base, strip
    return None


def _read_csvs(root: Path, opts: dict) -> pd.DataFrame:
    frames = []
    for name in opts.get("csvs") or ["train.csv", "valid.csv"]:
        path = root / name
        if not path.exists():
            if name == "valid.csv" and not opts.get("csvs"):
                continue
            raise FairDiffError(f"{path}: CheXpert CSV not found (options.csvs)")
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in ("Path", "Sex", "Frontal/Lateral", LABEL_COLUMN)
                   if c not in frame.columns]
        if missing:
            raise FairDiffError(f"{path}: missing column(s) {missing}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def build(name: str, cfg: dict, out_dir: Path) -> pd.DataFrame:
    opts = cfg.get("options") or {}
    policy = opts.get("uncertain", "zeros")
    if policy not in POLICIES:
        raise FairDiffError(f"datasets.{name}.options.uncertain: expected one of "
                            f"{list(POLICIES)}, got {policy!r}")
    root = locate(images.source_root(name, cfg))
    table = _read_csvs(root, opts)
    demo = _demographics(root, opts)

    if opts.get("frontal_only", True):
        frontal = table["Frontal/Lateral"].str.strip().str.lower() == "frontal"
        log.info("dropped %d lateral view(s) (options.frontal_only)", int((~frontal).sum()))
        table = table[frontal]

    records = table.to_dict("records")
    located = next((b for b in (_image_base(root, r["Path"]) for r in records[:100]) if b), None)
    if located is None:
        raise FairDiffError(f"{root}: the images listed in the CSVs were not found (expected "
                            f"CheXpert-v1.0*/train/patientNNNNN/... beside or inside {root})")
    base, strip = located
    rows, missing = [], []
    for record in records:
        relative = record["Path"]
        path = base.joinpath(*Path(relative).parts[strip:])
        if not path.exists():
            missing.append(relative)
            continue
        match = PATIENT.search(relative)
        patient = match.group(1) if match else relative
        race = race_group(demo.at[patient, "PRIMARY_RACE"]) if patient in demo.index else UNKNOWN
        sex = str(record["Sex"]).strip()
        row = {"id": "_".join(Path(relative).with_suffix("").parts[-3:]), "patient": patient,
               "gender": sex if sex in ("Male", "Female") else UNKNOWN, "race": race,
               "pleural_effusion": effusion(record[LABEL_COLUMN], policy), "path": path}
        row["prompt"] = PROMPT.format(**row)
        rows.append(row)
    if missing:
        log.warning("%d image(s) listed in the CSVs not found under %s (dropped), e.g. %s",
                    len(missing), root, missing[:3])
    if not rows:
        raise FairDiffError(f"{root}: none of the images listed in the CSVs was found")

    frame = pd.DataFrame(rows)
    if frame["id"].duplicated().any():
        raise FairDiffError(f"{root}: duplicate image ids, e.g. "
                            f"{frame['id'][frame['id'].duplicated()].iloc[0]}")
    path_of = dict(zip(frame["id"], frame["path"]))
    return images.split_patients_and_write(frame.drop(columns="path"), path_of, cfg, opts, name,
                                           FRACTIONS, out_dir)
