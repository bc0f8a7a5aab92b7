"""SynthFundus: determinism, the FairGenMed-like manifest, labels recovered by measurement (also
from degraded images), and the difficulty knob (minority groups harder at 1, equal at 0)."""

import copy
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from fairdiffusion.data import manifest, synthetic
from fairdiffusion.data.prepare import prepare
from fairdiffusion.errors import FairDiffError

# The authors' FairGenMed prompt, written out independently of the module: template
# data_handler.py:102, condition words :230-232 and :357-360, "normal vision loss" written
# "normal vision" (:370-371).
PROMPT = re.compile(
    r"SLO fundus image of a (Asian|Black|White) (Female|Male) (Non-Hispanic|Hispanic) patient "
    r"with the following conditions: (glaucoma|non-glaucoma), (normal vision|mild vision loss|"
    r"moderate vision loss|severe vision loss), (normal|borderline|abnormal) cup-disc ratio, "
    r"(positive|neutral|negative)")
VISION_WORDS = {"normal": "normal vision", "mild": "mild vision loss",
                "moderate": "moderate vision loss", "severe": "severe vision loss"}
BALANCED = {"race": [1 / 3, 1 / 3, 1 / 3]}
WHITE_ONLY = {"race": [0.0, 0.0, 1.0]}


def dataset_cfg(root, resolution=32, **synthetic_settings):
    cfg = copy.deepcopy(yaml.safe_load((root / "config.yaml").read_text())
                        ["datasets"]["synthfundus"])
    cfg["resolution"] = resolution
    cfg.setdefault("synthetic", {}).update({"n_train": 40, "n_val": 10, "n_test": 10, **synthetic_settings})
    return cfg


def accuracy_by_race(meta, measured):
    """Per label: overall accuracy and accuracy within each race group."""
    out = {}
    for label in synthetic.LABELS:
        hit = pd.Series(measured[label].to_numpy() == meta[label].to_numpy())
        out[label] = {"all": hit.mean(), **hit.groupby(meta["race"].to_numpy()).mean().to_dict()}
    return out


def degrade(images, rng):
    """The VAE proxy: 3x3 box blur, 2x down- then up-sampling, gaussian noise (sd 0.05)."""
    x = images.astype(float) / 255
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    x = sum(padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    n = len(x)
    x = x.reshape(n, h // 2, 2, w // 2, 2, 3).mean(axis=(2, 4)).repeat(2, axis=1).repeat(2, axis=2)
    x = x + rng.normal(0, 0.05, x.shape)
    return np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)


def test_same_seed_gives_byte_identical_dataset(tmp_path, root):
    cfg = dataset_cfg(root, seed=3)
    prepare("sf", cfg, tmp_path / "a")
    prepare("sf", cfg, tmp_path / "b")
    prepare("sf", dataset_cfg(root, seed=4), tmp_path / "c")
    a, b, c = ((tmp_path / d / "manifest.csv").read_bytes() for d in "abc")
    assert a == b
    frame = manifest.read(tmp_path / "a" / "manifest.csv")
    pngs = [(tmp_path / d / frame["image"][0]).read_bytes() for d in "abc"]
    for image in frame["image"]:
        assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()
    assert pngs[0] != pngs[2] and a != c


def test_manifest_follows_the_contract(tmp_path, root):
    cfg = dataset_cfg(root, resolution=48)
    prepare("sf", cfg, tmp_path / "sf")
    frame = manifest.read(tmp_path / "sf" / "manifest.csv", cfg["attributes"], cfg["labels"])
    assert frame.groupby("split").size().to_dict() == {"train": 40, "val": 10, "test": 10}
    assert frame["patient"].is_unique
    # every group and class occurs, so the prompt check below covers all of their words
    for column, values in {**cfg["attributes"], **cfg["labels"]}.items():
        assert set(frame[column]) == set(values), column
    for row in frame.itertuples():
        match = PROMPT.fullmatch(row.prompt)
        assert match, row.prompt
        assert match.groups() == (row.race, row.gender, row.ethnicity, row.glaucoma,
                                  VISION_WORDS[row.vision_loss], row.cup_disc,
                                  row.spherical_equivalent)
        with Image.open(tmp_path / "sf" / row.image) as image:
            assert image.mode == "RGB" and image.size == (48, 48)


def test_groups_and_labels_follow_fairgenmed_like_proportions():
    meta = synthetic.sample_metadata(20000, np.random.default_rng(0), difficulty=1.0)
    share = {a: meta[a].value_counts(normalize=True) for a in synthetic.ATTRIBUTES}
    assert share["race"]["White"] == pytest.approx(0.75, abs=0.02)
    assert share["race"]["Black"] == pytest.approx(0.15, abs=0.02)
    assert share["race"]["Asian"] == pytest.approx(0.10, abs=0.02)
    assert share["gender"]["Female"] == pytest.approx(0.50, abs=0.02)
    assert share["ethnicity"]["Non-Hispanic"] == pytest.approx(0.90, abs=0.02)
    glaucoma = (meta["glaucoma"] == "glaucoma").groupby(meta["cup_disc"]).mean()
    assert glaucoma["abnormal"] > 0.7 > 0.3 > glaucoma["normal"]
    for label, classes in synthetic.LABELS.items():
        assert set(meta[label]) == set(classes)


@pytest.mark.parametrize("resolution, difficulty", [(32, 1.0), (32, 0.0), (64, 1.0)])
def test_measure_recovers_every_label_in_every_race_group(resolution, difficulty):
    meta, images = synthetic.generate(300, resolution, seed=11, difficulty=difficulty,
                                      proportions=BALANCED)
    measured = synthetic.measure(images)
    assert list(measured.columns) == [*synthetic.LABELS, "race"]
    for label, acc in accuracy_by_race(meta, measured).items():
        assert min(acc.values()) >= 0.95, (label, acc)


@pytest.mark.parametrize("difficulty, floor", [(0.0, 0.9), (1.5, 0.7)])
def test_rendered_race_is_read_from_the_pigment(difficulty, floor):
    meta, images = synthetic.generate(900, 32, seed=4, difficulty=difficulty)
    race = synthetic.measure(images)["race"].to_numpy()
    for group in synthetic.ATTRIBUTES["race"]:
        mask = meta["race"].to_numpy() == group
        assert (race[mask] == group).mean() >= floor, group


@pytest.mark.parametrize("resolution", [32, 64])
def test_measure_survives_blur_noise_and_resampling_for_the_majority(resolution):
    meta, images = synthetic.generate(200, resolution, seed=12, proportions=WHITE_ONLY)
    measured = synthetic.measure(degrade(images, np.random.default_rng(0)))
    for label, acc in accuracy_by_race(meta, measured).items():
        assert acc["all"] >= 0.90, (label, acc)


def contrast_by_race(difficulty):
    """Mean measured cup contrast and wedge darkness per race group (clean 32 px images)."""
    meta, images = synthetic.generate(450, 32, seed=13, difficulty=difficulty,
                                      proportions=BALANCED)
    feats = synthetic.features(images)
    # Abnormal cups leave a rim too thin to split disc and cup steps reliably.
    cup = feats["cup_step"][meta["cup_disc"] != "abnormal"]
    wedge = feats["wedge"][meta["glaucoma"] == "glaucoma"]
    return (cup.groupby(meta["race"]).mean(), wedge.groupby(meta["race"]).mean(),
            feats["background"].groupby(meta["race"]).mean())


def test_difficulty_makes_darker_groups_harder_but_not_invisible():
    cup, wedge, background = contrast_by_race(1.0)
    assert background["White"] > background["Asian"] > background["Black"]
    for feature in (cup, wedge):
        assert feature["White"] > feature["Asian"] > feature["Black"]
        assert 0.45 < feature["Black"] / feature["White"] < 0.7
    cup, wedge, background = contrast_by_race(0.0)
    assert background["White"] > background["Asian"] > background["Black"]
    for feature in (cup, wedge):
        assert feature.max() / feature.min() < 1.1


def test_bad_config_and_bad_images_are_refused(tmp_path, root):
    cfg = dataset_cfg(root)
    cfg["labels"]["cup_disc"] = ["small", "large"]
    with pytest.raises(FairDiffError, match="labels"):
        synthetic.build("sf", cfg, tmp_path)
    with pytest.raises(FairDiffError, match="resolution"):
        synthetic.build("sf", dataset_cfg(root, resolution=16), tmp_path)
    with pytest.raises(FairDiffError, match="difficulty"):
        synthetic.build("sf", dataset_cfg(root, difficulty=-1), tmp_path)
    with pytest.raises(FairDiffError, match="measure"):
        synthetic.measure(np.zeros((2, 32, 32), np.uint8))
