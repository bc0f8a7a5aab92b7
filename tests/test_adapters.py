"""Dataset adapters on small fixtures written in each published layout, as downloaded (with its
quirks): manifests whose prompts are the authors' wording for every class."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fairdiffusion.data import download, manifest, prepare
from fairdiffusion.errors import FairDiffError

FUNDUS_ATTRS = {"race": ["Asian", "Black", "White"], "gender": ["Female", "Male"],
                "ethnicity": ["Non-Hispanic", "Hispanic"]}
FUNDUS_LABELS = {"glaucoma": ["non-glaucoma", "glaucoma"],
                 "vision_loss": ["normal", "mild", "moderate", "severe"],
                 "cup_disc": ["normal", "borderline", "abnormal"],
                 "spherical_equivalent": ["positive", "neutral", "negative"]}


def quadrant_image(size=16) -> np.ndarray:
    """Dark square with its top-right quadrant bright (shows any rotation or transpose)."""
    array = np.full((size, size), 20, dtype=np.uint8)
    array[: size // 2, size // 2:] = 230
    return array


def bright_quadrant(png) -> str:
    grey = np.asarray(Image.open(png).convert("L"), dtype=float)
    h, w = grey.shape
    top, bottom, left, right = slice(0, h // 2), slice(h // 2, h), slice(0, w // 2), slice(w // 2, w)
    means = {"top-left": grey[top, left].mean(), "top-right": grey[top, right].mean(),
             "bottom-left": grey[bottom, left].mean(), "bottom-right": grey[bottom, right].mean()}
    return max(means, key=means.get)


def save_jpg(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95)


# --- FairGenMed --------------------------------------------------------------------------------

# filename -> (split, race, male, hispanic, glaucoma, md_severity, cdr_status, near_vision_...)
FAIRGENMED = {
    "data_00001.npz": ("train", 0, 1, 0, 1, "mild", "borderline", "myopia"),
    "data_00002.npz": ("train", "Black or African American", 0, 1, 0, "normal", "normal", "0"),
    "data_00003.npz": ("train", 2, 1, -1, 1, "severe", "abnormal", "neutral"),   # hispanic unknown
    "data_00004.npz": ("train", -1, 0, 0, 0, "moderate", "normal", "hyperopia"),  # race unknown
    "data_00005.npz": ("train", "White or Caucasian", 0, 0, 1, "3", "2", "negative"),
    "data_00006.npz": ("val", 1, 1, 0, 0, "normal", "borderline", "emmetropia"),
    "data_00007.npz": ("test", "Asian", 0, 0, 1, "moderate", "abnormal", "positive"),
    "data_00008.npz": ("test", 0, 1, 1, 0, "normal", "normal", "myopia"),
}


SPLIT_FOLDERS = {"authors": {"train": "train", "val": "val", "test": "test"},
                 "hub": {"train": "Dataset/Training", "val": "Dataset/Validation",
                         "test": "Dataset/Test"}}


def make_fairgenmed(root, layout="authors", photo=None):
    """FairGenMed in the authors' layout ({train,val,test}/ with data_summary.csv at the root,
    data_handler.py:218-219, 354) or as the Hub serves it (ReadMe/data_summary.csv,
    Dataset/{Training,Validation,Test}/ with the npz files in NPZ.zip and the photos zipped
    too). `photo(array)` gives the JPG's pixels (default: the array transposed)."""
    rows, members = [], {}
    for filename, (split, race, male, hispanic, glaucoma, md, cdr, se) in FAIRGENMED.items():
        folder = root / SPLIT_FOLDERS[layout][split]
        folder.mkdir(parents=True, exist_ok=True)
        image = quadrant_image()
        npz, jpg = folder / filename, folder / filename.replace("data_", "slo_fundus_").replace(
            ".npz", ".jpg")
        np.savez(npz, slo_fundus=image, race=np.array(race), male=np.array(male),
                 hispanic=np.array(hispanic), glaucoma=np.array(glaucoma),
                 maritalstatus=np.array(-1), language=np.array(0))
        save_jpg(jpg, photo(image) if photo else image.T.copy())
        members.setdefault(folder, []).extend([npz, jpg])
        rows.append({"filename": filename, "use": split, "md_severity": md, "cdr_status": cdr,
                     "near_vision_refraction_stage": se, "rnflt_status": "normal"})
    summary = root / ("ReadMe/data_summary.csv" if layout == "hub" else "data_summary.csv")
    summary.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(summary, index=False)
    if layout == "hub":
        for folder, files in members.items():
            for archive, suffix in (("NPZ.zip", ".npz"), ("SLO.zip", ".jpg")):
                with zipfile.ZipFile(folder / archive, "w") as zf:
                    for path in files:
                        if path.suffix == suffix:
                            zf.write(path, path.name)
                            path.unlink()


def fairgenmed_cfg(root, **options):
    return {"source": "fairgenmed", "resolution": 8, "path": str(root),
            "attributes": FUNDUS_ATTRS, "labels": FUNDUS_LABELS, "limit": {},
            "options": options}


def authors_fairgenmed_prompt(race, gender, ethnicity, glaucoma, md, cdr, se):
    """Their string, built as data_handler.py builds it: y_str (:357-369), then "normal vision
    loss" -> "normal vision" (:370-371), in the template of :102."""
    y_str = f"{glaucoma}, {md} vision loss, {cdr} cup-disc ratio, {se}"
    y_str = y_str.replace("normal vision loss", "normal vision")
    return (f"SLO fundus image of a {race} {gender} {ethnicity} patient with the following "
            f"conditions: {y_str}")


@pytest.mark.parametrize("layout", ["authors", "hub"])
def test_fairgenmed_manifest_prompts_and_unknowns(tmp_path, caplog, layout):
    make_fairgenmed(tmp_path / "src", layout)
    with caplog.at_level(logging.INFO):
        frame = prepare.prepare("fairgenmed", fairgenmed_cfg(tmp_path / "src"), tmp_path / "out")
    assert "dropped 1 row(s) with an unknown or undeclared attribute race" in caplog.text
    assert "dropped 1 row(s) with an unknown or undeclared attribute ethnicity" in caplog.text
    read = manifest.read(tmp_path / "out" / "manifest.csv", FUNDUS_ATTRS, FUNDUS_LABELS)
    assert len(read) == len(frame) == 6
    assert set(read["id"]) == {f"data_0000{i}" for i in (1, 2, 5, 6, 7, 8)}
    by_id = read.set_index("id")
    # hand-written from data_handler.py:102 and :354-371
    assert by_id.loc["data_00001", "prompt"] == (
        "SLO fundus image of a Asian Male Non-Hispanic patient with the following conditions: "
        "glaucoma, mild vision loss, borderline cup-disc ratio, negative")
    assert by_id.loc["data_00002", "prompt"] == (
        "SLO fundus image of a Black Female Hispanic patient with the following conditions: "
        "non-glaucoma, normal vision, normal cup-disc ratio, positive")
    # every group and class occurs, each row in the authors' wording
    for column, values in {**FUNDUS_ATTRS, **FUNDUS_LABELS}.items():
        assert set(read[column]) == set(values), column
    for row in read.itertuples():
        assert row.prompt == authors_fairgenmed_prompt(
            row.race, row.gender, row.ethnicity, row.glaucoma, row.vision_loss, row.cup_disc,
            row.spherical_equivalent)
    # integer codes in data_summary.csv index the class lists; long race names are understood
    assert by_id.loc["data_00005", ["race", "vision_loss", "cup_disc"]].tolist() == [
        "White", "severe", "abnormal"]
    assert by_id.loc["data_00006", "spherical_equivalent"] == "neutral"
    assert by_id.loc["data_00007", "spherical_equivalent"] == "positive"
    assert dict(read.groupby("split").size()) == {"train": 3, "val": 1, "test": 2}
    for rel in read["image"]:
        with Image.open(tmp_path / "out" / rel) as image:
            assert image.mode == "RGB" and image.size == (8, 8)


@pytest.mark.parametrize("options, expected", [
    ({}, "top-right"),                                  # the npz array as stored
    ({"npz_orientation": "transpose"}, "bottom-left"),
    ({"npz_orientation": "rot90"}, "top-left"),
    ({"image": "jpg"}, "bottom-left"),                  # the photo is the transposed array
    ({"image": "jpg", "rotate": -90}, "top-left"),      # then turned clockwise
])
def test_fairgenmed_orientation(tmp_path, options, expected):
    make_fairgenmed(tmp_path / "src", "hub")
    frame = prepare.prepare("fairgenmed", fairgenmed_cfg(tmp_path / "src", **options),
                            tmp_path / "out")
    for rel in frame["image"]:
        assert bright_quadrant(tmp_path / "out" / rel) == expected


def authors_normalize_image(image):
    """train_text_to_image_proposed.py:516-527, restated."""
    array = np.array(image)
    low, high = np.min(array), np.max(array)
    return Image.fromarray(((array - low) / (high - low) * 255).astype(np.uint8))


def test_fairgenmed_paper_options_give_the_authors_training_image(tmp_path):
    """image jpg + minmax + rotate -90 + bilinear = their preprocess_train up to ToTensor
    (train_text_to_image_proposed.py:790-802), pixel for pixel, on a non-square photo."""
    from torchvision import transforms

    rng = np.random.default_rng(0)
    make_fairgenmed(tmp_path / "src", "authors",
                    photo=lambda a: rng.integers(40, 200, (22, 17), dtype=np.uint8))
    cfg = fairgenmed_cfg(tmp_path / "src", image="jpg", minmax=True, rotate=-90,
                         interpolation="bilinear")
    cfg["resolution"] = 12
    frame = prepare.prepare("fairgenmed", cfg, tmp_path / "out")
    theirs = transforms.Compose([
        transforms.RandomRotation((-90, -90)),
        transforms.Resize(12, interpolation=transforms.InterpolationMode.BILINEAR),
        transforms.CenterCrop(12),
    ])
    for row in frame.itertuples():
        jpg = tmp_path / "src" / row.split / f"slo_fundus_{row.id.removeprefix('data_')}.jpg"
        expected = theirs(authors_normalize_image(Image.open(jpg).convert("RGB")))
        ours = Image.open(tmp_path / "out" / row.image)
        assert np.array_equal(np.asarray(ours), np.asarray(expected)), row.id
        # each step matters: without the stretch, or with the default resize, it differs
        unstretched = theirs(Image.open(jpg).convert("RGB"))
        assert not np.array_equal(np.asarray(ours), np.asarray(unstretched))
    default = prepare.prepare("fairgenmed", {**cfg, "options": {"image": "jpg", "minmax": True,
                                                               "rotate": -90}}, tmp_path / "d")
    assert any(not np.array_equal(np.asarray(Image.open(tmp_path / "out" / a)),
                                  np.asarray(Image.open(tmp_path / "d" / b)))
               for a, b in zip(frame["image"], default["image"]))


def test_fairgenmed_missing_photo_is_named(tmp_path):
    make_fairgenmed(tmp_path / "src")
    (tmp_path / "src" / "val" / "slo_fundus_00006.jpg").unlink()
    with pytest.raises(FairDiffError, match=r"no slo_fundus_00006.jpg for .*data_00006.npz"):
        prepare.prepare("fairgenmed", fairgenmed_cfg(tmp_path / "src", image="jpg"),
                        tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_fairgenmed_missing_summary_column_is_named(tmp_path):
    make_fairgenmed(tmp_path / "src")
    summary = pd.read_csv(tmp_path / "src" / "data_summary.csv")
    summary.drop(columns="cdr_status").to_csv(tmp_path / "src" / "data_summary.csv", index=False)
    with pytest.raises(FairDiffError, match="cdr_status.*options.columns.cup_disc"):
        prepare.prepare("fairgenmed", fairgenmed_cfg(tmp_path / "src"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- HAM10000 ----------------------------------------------------------------------------------

def make_ham(root, n_lesions=40, zipped=False):
    """HAM10000 as the Dataverse archive unpacks (zipped=True: the image parts still zipped,
    HAM10000_images_part_{1,2}.zip, beside the ISIC2018 test images' zip), or with the parts
    extracted (as `fairdiff download` leaves them)."""
    rows, dx_cycle = [], ["nv", "mel", "bkl", "bcc", "akiec", "df", "vasc"]
    image_number = 24306
    for lesion in range(n_lesions):
        for _ in range(1 + lesion % 2):                      # some lesions have two images
            image_id = f"ISIC_{image_number:07d}"
            image_number += 1
            sex = ["male", "female"][lesion % 2] if lesion != 3 else "unknown"
            age = "" if lesion == 5 else str(30 + 5 * (lesion % 9))   # 30..70
            rows.append({"lesion_id": f"HAM_{lesion:07d}", "image_id": image_id,
                         "dx": dx_cycle[lesion % 7], "dx_type": "histo", "age": age, "sex": sex,
                         "localization": "back"})
            part = 1 if image_number % 2 else 2
            save_jpg(root / f"HAM10000_images_part_{part}" / f"{image_id}.jpg",
                     np.full((12, 16, 3), lesion * 5, dtype=np.uint8))
    save_jpg(root / "ISIC2018_Task3_Test_Images" / "ISIC_0034524.jpg",   # not in the metadata
             np.zeros((12, 16, 3), dtype=np.uint8))
    pd.DataFrame(rows).to_csv(root / "HAM10000_metadata.csv", index=False)
    if zipped:
        for folder in sorted(root.glob("*_Images*")) + sorted(root.glob("*_images_part_*")):
            with zipfile.ZipFile(root / f"{folder.name}.zip", "w") as zf:
                for jpg in sorted(folder.iterdir()):
                    zf.write(jpg, jpg.name)
                    jpg.unlink()
            folder.rmdir()
    return pd.DataFrame(rows)


HAM_ATTRS = {"gender": ["Female", "Male"], "age": ["under_60", "60_or_older"]}
HAM_LABELS = {"malignancy": ["benign", "malignant"]}


def ham_cfg(root, **options):
    return {"source": "ham10000", "resolution": 8, "path": str(root), "attributes": HAM_ATTRS,
            "labels": HAM_LABELS, "limit": {}, "options": options}


@pytest.mark.parametrize("zipped", [True, False])
def test_ham10000_manifest(tmp_path, zipped):
    meta = make_ham(tmp_path / "src", zipped=zipped)
    assert zipped == (tmp_path / "src" / "HAM10000_images_part_1.zip").exists()
    frame = prepare.prepare("ham", ham_cfg(tmp_path / "src"), tmp_path / "out")
    dropped = meta["lesion_id"].isin(["HAM_0000003", "HAM_0000005"]).sum()   # sex / age unknown
    assert len(frame) == len(meta) - dropped
    read = manifest.read(tmp_path / "out" / "manifest.csv", HAM_ATTRS, HAM_LABELS)
    assert read.groupby("patient")["split"].nunique().max() == 1
    row = read[read["patient"] == "HAM_0000001"].iloc[0]          # mel, female, 35
    assert row["malignancy"] == "malignant" and row["age"] == "under_60"
    row = read[read["patient"] == "HAM_0000008"].iloc[0]          # mel, male, 70
    assert row["malignancy"] == "malignant" and row["age"] == "60_or_older"
    benign = read[read["patient"] == "HAM_0000002"].iloc[0]       # bkl
    assert benign["malignancy"] == "benign"
    # every class, in the authors' words (data_handler_ham.py:26-28, :40), hand-written
    expected = {
        ("Male", "under_60", "benign"): "Dermoscopic image of a Male Age under 60 patient with "
        "the following diagnostic category: benign",
        ("Male", "under_60", "malignant"): "Dermoscopic image of a Male Age under 60 patient "
        "with the following diagnostic category: malignant",
        ("Male", "60_or_older", "benign"): "Dermoscopic image of a Male Age equal 60 or older "
        "patient with the following diagnostic category: benign",
        ("Male", "60_or_older", "malignant"): "Dermoscopic image of a Male Age equal 60 or older "
        "patient with the following diagnostic category: malignant",
        ("Female", "under_60", "benign"): "Dermoscopic image of a Female Age under 60 patient "
        "with the following diagnostic category: benign",
        ("Female", "under_60", "malignant"): "Dermoscopic image of a Female Age under 60 patient "
        "with the following diagnostic category: malignant",
        ("Female", "60_or_older", "benign"): "Dermoscopic image of a Female Age equal 60 or "
        "older patient with the following diagnostic category: benign",
        ("Female", "60_or_older", "malignant"): "Dermoscopic image of a Female Age equal 60 or "
        "older patient with the following diagnostic category: malignant",
    }
    found = {(r.gender, r.age, r.malignancy): r.prompt for r in read.itertuples()}
    assert found == expected


def stripes(width=24, height=8) -> np.ndarray:
    """Red, green and blue thirds, left to right."""
    array = np.zeros((height, width, 3), dtype=np.uint8)
    for k in range(3):
        array[:, k * width // 3:(k + 1) * width // 3, k] = 255
    return array


def test_downsample_squashes_the_whole_image_before_the_crop(tmp_path):
    """options.downsample resizes to N x N first, aspect not kept (data_handler_ham.py:95-97),
    so the sides survive the centre crop; without it they are cropped away."""
    make_ham(tmp_path / "src")
    for jpg in (tmp_path / "src").rglob("ISIC_*.jpg"):
        Image.fromarray(stripes()).save(jpg.with_suffix(".png"))
        jpg.with_suffix(".png").replace(jpg)          # lossless pixels under the .jpg name
    squashed = prepare.prepare("ham", ham_cfg(tmp_path / "src", downsample=8), tmp_path / "a")
    cropped = prepare.prepare("ham", ham_cfg(tmp_path / "src"), tmp_path / "b")
    left, right = (np.asarray(Image.open(tmp_path / "a" / squashed["image"][0]))[:, i]
                   for i in (0, -1))
    assert left[:, 0].min() > 200 and right[:, 2].min() > 200            # red ... blue
    middle = np.asarray(Image.open(tmp_path / "b" / cropped["image"][0]))
    assert middle[:, :, 1].min() > 200 and middle[:, :, [0, 2]].max() < 60   # green only


def test_ham10000_split_is_seeded_and_patient_level(tmp_path):
    make_ham(tmp_path / "src")
    fractions = {"train": 0.5, "val": 0.25, "test": 0.25}
    first = prepare.prepare("ham", ham_cfg(tmp_path / "src", split_fractions=fractions),
                            tmp_path / "a")
    again = prepare.prepare("ham", ham_cfg(tmp_path / "src", split_fractions=fractions),
                            tmp_path / "b")
    other = prepare.prepare("ham", ham_cfg(tmp_path / "src", split_fractions=fractions,
                                           split_seed=1), tmp_path / "c")
    assert first[["id", "split"]].equals(again[["id", "split"]])
    assert not first[["id", "split"]].equals(other[["id", "split"]])
    # the 38 lesions left after dropping unknown sex/age are cut 19/9.5/9.5
    lesions = first.groupby("split")["patient"].nunique()
    assert lesions.sum() == 38 and lesions["train"] == 19 and abs(lesions["val"] - 9.5) == 0.5


# --- CheXpert ----------------------------------------------------------------------------------

# patient -> (PRIMARY_RACE or None when missing from the sheet, Sex)
CHEX_PATIENTS = {
    "patient00001": ("White, non-Hispanic", "Male"),
    "patient00002": ("Black or African American", "Female"),
    "patient00003": ("Asian - Historical Conv", "Male"),
    "patient00004": ("Other", "Female"),
    "patient00005": ("Native Hawaiian or Other Pacific Islander", "Male"),
    "patient00006": ("White or Caucasian", "Unknown"),
    "patient00007": ("Asian, Hispanic", "Female"),
    "patient00008": (None, "Male"),
    "patient00009": ("Black, non-Hispanic", "Male"),
    "patient00010": ("White", "Female"),
}
EFFUSION = ["1.0", "0.0", "-1.0", ""]


def make_chexpert(tmp_path):
    """CheXpert-v1.0-small.zip as extracted (train.csv, valid.csv, train/, valid/ in
    CheXpert-v1.0-small/, Path relative to the folder above) with the demographics download,
    CHEXPERT DEMO.xlsx, beside it: a real .xlsx written with openpyxl."""
    from openpyxl import Workbook

    root = tmp_path / "CheXpert-v1.0-small"
    rows = []
    sheet = Workbook()
    sheet.active.append(["PATIENT", "GENDER", "AGE_AT_CXR", "PRIMARY_RACE", "ETHNICITY"])
    for n, (patient, (race, sex)) in enumerate(CHEX_PATIENTS.items()):
        split = "valid" if n == 9 else "train"
        for view, orientation in (("view1_frontal", "Frontal"), ("view2_lateral", "Lateral")):
            rel = f"CheXpert-v1.0-small/{split}/{patient}/study1/{view}.jpg"
            save_jpg(tmp_path / rel, np.full((20, 16), 10 * n, dtype=np.uint8))
            rows.append({"Path": rel, "Sex": sex, "Age": "60", "Frontal/Lateral": orientation,
                         "AP/PA": "AP" if orientation == "Frontal" else "",
                         "No Finding": "", "Pleural Effusion": EFFUSION[n % 4]})
        if race is not None:
            sheet.active.append([patient, sex, 60, race, "Non-Hispanic/Non-Latino"])
    table = pd.DataFrame(rows)
    table[table["Path"].str.contains("/train/")].to_csv(root / "train.csv", index=False)
    table[table["Path"].str.contains("/valid/")].to_csv(root / "valid.csv", index=False)
    sheet.save(tmp_path / "CHEXPERT DEMO.xlsx")
    return root


CHEX_ATTRS = {"gender": ["Female", "Male"], "race": ["Asian", "Black", "White"]}
CHEX_LABELS = {"pleural_effusion": ["non Pleural Effusion", "Pleural Effusion"]}


def chex_cfg(root, **options):
    options.setdefault("split_fractions", {"train": 0.4, "val": 0.2, "test": 0.4})
    return {"source": "chexpert", "resolution": 8, "path": str(root), "attributes": CHEX_ATTRS,
            "labels": CHEX_LABELS, "limit": {}, "options": options}


@pytest.mark.parametrize("at", ["extracted_into", "CheXpert-v1.0-small"])
def test_chexpert_manifest(tmp_path, at):
    inner = make_chexpert(tmp_path)
    path = inner if at == "CheXpert-v1.0-small" else tmp_path
    frame = prepare.prepare("chexpert", chex_cfg(path), tmp_path / "out")
    # frontal only; dropped: Other (4), Pacific Islander (5), Unknown sex (6), no demographics (8)
    kept = {"patient00001", "patient00002", "patient00003", "patient00007", "patient00009",
            "patient00010"}
    assert set(frame["patient"]) == kept and len(frame) == len(kept)
    assert frame["id"].str.endswith("view1_frontal").all()
    read = manifest.read(tmp_path / "out" / "manifest.csv", CHEX_ATTRS, CHEX_LABELS)
    by_patient = read.set_index("patient")
    assert by_patient.loc["patient00003", "race"] == "Asian"      # "Asian - Historical Conv"
    assert by_patient.loc["patient00003", "pleural_effusion"] == "non Pleural Effusion"  # -1
    assert by_patient.loc["patient00007", "race"] == "Asian"      # "Asian, Hispanic"
    assert by_patient.loc["patient00010", "race"] == "White"      # from valid.csv
    assert read.groupby("patient")["split"].nunique().max() == 1
    # the authors' words for every class (data_handler_chexpert.py:42-44, :53), hand-written
    for column, values in {**CHEX_ATTRS, **CHEX_LABELS}.items():
        assert set(read[column]) == set(values), column
    assert by_patient["prompt"].to_dict() == {
        "patient00001": "Chest Radiography image of a Male White patient diagnosed with "
                        "Pleural Effusion",
        "patient00002": "Chest Radiography image of a Female Black patient diagnosed with non "
                        "Pleural Effusion",
        "patient00003": "Chest Radiography image of a Male Asian patient diagnosed with non "
                        "Pleural Effusion",
        "patient00007": "Chest Radiography image of a Female Asian patient diagnosed with non "
                        "Pleural Effusion",
        "patient00009": "Chest Radiography image of a Male Black patient diagnosed with "
                        "Pleural Effusion",
        "patient00010": "Chest Radiography image of a Female White patient diagnosed with non "
                        "Pleural Effusion",
    }


def test_chexpert_without_its_sheet_or_csvs_names_what_is_missing(tmp_path):
    inner = make_chexpert(tmp_path)
    (tmp_path / "CHEXPERT DEMO.xlsx").unlink()
    with pytest.raises(FairDiffError, match=r"demographics sheet not found.*CHEXPERT DEMO.xlsx"):
        prepare.prepare("chexpert", chex_cfg(inner), tmp_path / "out")
    with pytest.raises(FairDiffError, match=r"no CheXpert train.csv.*CheXpert-v1.0-small"):
        prepare.prepare("chexpert", chex_cfg(inner / "train"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_chexpert_uncertain_policies_and_lateral_views(tmp_path):
    root = make_chexpert(tmp_path)
    ones = prepare.prepare("c", chex_cfg(root, uncertain="ones"), tmp_path / "ones")
    assert ones.set_index("patient").loc["patient00003", "pleural_effusion"] == "Pleural Effusion"
    assert ones.set_index("patient").loc["patient00007", "pleural_effusion"] == "Pleural Effusion"
    drop = prepare.prepare("c", chex_cfg(root, uncertain="drop"), tmp_path / "drop")
    assert {"patient00003", "patient00007"}.isdisjoint(drop["patient"])
    assert len(drop) == 4
    both = prepare.prepare("c", chex_cfg(root, frontal_only=False), tmp_path / "both")
    assert len(both) == 12 and both.groupby("patient")["split"].nunique().max() == 1
    with pytest.raises(FairDiffError, match="options.uncertain"):
        prepare.prepare("c", chex_cfg(root, uncertain="maybe"), tmp_path / "bad")


# --- source: csv -------------------------------------------------------------------------------

def make_user_csv(tmp_path, **overrides):
    rows = []
    for i in range(8):
        image = f"imgs/{i}.png"
        (tmp_path / "imgs").mkdir(exist_ok=True)
        Image.fromarray(np.full((10, 14, 3), i * 20, dtype=np.uint8)).save(tmp_path / image)
        rows.append({"image": image, "split": ["train", "train", "val", "test"][i % 4],
                     "sex": ["F", "M"][i % 2], "site": "arm", "grade": ["low", "high"][i % 2 == 0],
                     "patient": f"p{i}"})
    frame = pd.DataFrame(rows)
    for column, value in overrides.items():
        frame.loc[0, column] = value
    frame.to_csv(tmp_path / "mine.csv", index=False)
    return tmp_path / "mine.csv"


def csv_cfg(path, **options):
    return {"source": "csv", "resolution": 8, "attributes": {"sex": ["F", "M"]},
            "labels": {"grade": ["low", "high"]}, "limit": {},
            "options": {"csv": str(path), **options}}


def test_user_csv_with_prompt_template(tmp_path):
    path = make_user_csv(tmp_path, sex="unknown")
    frame = prepare.prepare("mine", csv_cfg(path, prompt_template="photo of {site}, {sex}, "
                                                                 "{grade} grade"),
                            tmp_path / "out")
    assert len(frame) == 7                                      # the unknown sex row dropped
    assert frame["prompt"].iloc[0] == "photo of arm, M, low grade"
    assert set(frame["id"]) == {f"row{i:06d}" for i in range(3, 10)}
    with Image.open(tmp_path / "out" / frame["image"].iloc[0]) as image:
        assert image.size == (8, 8)


@pytest.mark.parametrize("overrides, options, message", [
    ({}, {}, r"mine.csv: missing column 'prompt' \(or set options.prompt_template\)"),
    ({"split": "training"}, {"prompt_template": "{site}"}, r"mine.csv: column 'split'.*training"),
    ({"grade": "medium"}, {"prompt_template": "{site}"}, r"mine.csv: column 'grade'.*medium"),
    ({"image": "imgs/nope.png"}, {"prompt_template": "{site}"},
     r"mine.csv: column 'image'.*nope.png"),
    ({}, {"prompt_template": "{colour}"}, r"mine.csv: options.prompt_template uses \{colour\}"),
    ({"patient": "p2"}, {"prompt_template": "{site}"}, r"mine.csv: column 'patient'.*p2"),
])
def test_user_csv_errors_name_the_csv_and_column(tmp_path, overrides, options, message):
    path = make_user_csv(tmp_path, **overrides)
    with pytest.raises(FairDiffError, match=message):
        prepare.prepare("mine", csv_cfg(path, **options), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_dataset_folder_names_the_config_key(tmp_path):
    with pytest.raises(FairDiffError, match=r"datasets.ham.path"):
        prepare.prepare("ham", ham_cfg(tmp_path / "absent"), tmp_path / "out")


def test_chexpert_copy_in_resources_is_accepted_in_its_zip_layout(tmp_path):
    """path: null -> resources/chexpert/, filled by hand in the published layout: the download
    rule's check accepts it and records the sha256 of the CSVs and of the sheet."""
    out = tmp_path / "resources" / "chexpert"
    make_chexpert(out)
    record = download.download("chexpert", {"source": "chexpert"}, out)
    assert record == json.loads((out / "download.done").read_text())
    assert set(record["sha256"]) == {"CHEXPERT DEMO.xlsx", "CheXpert-v1.0-small/train.csv",
                                     "CheXpert-v1.0-small/valid.csv"}
    assert record["sha256"]["CHEXPERT DEMO.xlsx"] == hashlib.sha256(
        (out / "CHEXPERT DEMO.xlsx").read_bytes()).hexdigest()
    assert len(prepare.prepare("chexpert", chex_cfg(out), tmp_path / "out")) == 6
