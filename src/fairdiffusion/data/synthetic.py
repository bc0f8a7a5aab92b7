"""SynthFundus: a procedural fundus-like dataset whose clinical labels are drawn, hence measurable.

The pipeline's embedded default dataset. It mimics FairGenMed (SLO fundus photographs, glaucoma)
in its attributes, group imbalance and prompt template, but every clinical label is a large,
coarse structure in the image, so `measure` can read the labels back from any image (real or
generated) and the evaluation can score the semantic correctness of generated images exactly.

Image (a disc-centred view; lengths below in units of the image side, angles in image
coordinates: 0 deg = right = temporal side, 90 deg = down = inferior):

- background: fundus pigment colour (by race, see below) times a smooth choroidal texture and a
  smooth illumination field (a small linear gradient and a vignette), plus fine pixel noise;
- optic disc: a bright yellow-pink disc of radius ~0.32 (+-4 %) near the centre (the same
  colour in every group, 75 % opaque over the background), and four thin decorative vessels
  leaving it upwards, downwards and nasally (left), away from every measured zone;
- cup_disc: a paler, whiter cup inside the disc; cup radius / disc radius is
  0.30 (normal) / 0.55 (borderline) / 0.80 (abnormal), +-0.04;
- glaucoma: a dark wedge-shaped nerve-fibre-layer defect running from the disc margin to the
  inferotemporal (bottom-right) corner; present iff glaucoma. Glaucoma is drawn from the cup
  class like in real data (P(glaucoma | cup) = 0.15 / 0.50 / 0.85), but it is visible, and
  measured, only through the wedge;
- vision_loss: pale yellow atrophic lesions (large blobs, radius ~0.10) in 0 / 1 / 2 / 3 of the
  three other corners (normal / mild / moderate / severe), which corners at random; vision loss is
  drawn from glaucoma (glaucoma patients have more and worse loss);
- spherical_equivalent: a peripapillary crescent on the temporal (right) side of the disc:
  pale (atrophic conus, myopia) = negative, none = neutral, dark (pigment crescent) = positive.

Groups (proportions like FairGenMed): race White 75 % / Black 15 % / Asian 10 %, gender
Female / Male 50 / 50, ethnicity Non-Hispanic / Hispanic 90 / 10; labels are drawn independently
of the groups. Race sets the fundus pigmentation: lighter orange-red for White, intermediate for
Asian, darker brown-red for Black; Hispanic fundi are 10 % darker. Gender changes nothing and is
a control attribute (any gap found along it is noise).

`difficulty` (d >= 0, default 1) makes the darker-pigmented groups harder, as in real fundus
photography: the contrast of the cup, lesions, wedge and crescent is multiplied by
1 - 0.45 d (Black), 1 - 0.25 d (Asian), times 1 - 0.10 d for Hispanic (floored at 0.1), and the
appearance varies more within the group (texture, pigment, illumination and pixel-noise
amplitudes times 1 + e, with e = 1.0 d for Black, 0.5 d for Asian, + 0.3 d for Hispanic). At
d = 0 all groups are equally easy (they differ only in pigment colour; the measured cup and wedge
contrasts are equal); at d = 1 the Black group's cup contrast is 55 % of the White group's
(Asian 75 %): clearly visible, yet harder to learn. d > 1 exaggerates the effect.

Measurement (`features`, then `classify`; `measure` does both). A tiny VAE (32 px -> 8 x 8
latents) must not erase the labels, so the structures are large and the levels far apart, and
the measurement averages over many pixels of a grey image (0.2 R + 0.5 G + 0.3 B): the disc
centre is a thresholded centroid; disc and cup radii come from a least-squares fit of two
Gaussian-blurred discs to the radial profile, the blur fitted too, so blur does not bias the
radii (cup_disc = their ratio, thresholds halfway between the drawn ratios); wedge, lesions and
crescent are mean grey levels of their zones once the fitted disc and a per-image background
model (plane + vignette, fitted outside every drawn structure) are taken away, thresholded
halfway between "absent" and the faintest group's level. It works at any resolution >= 32 and
survives blur, noise and down/up-sampling (the tests check all of this per race group).

Generation is vectorised numpy from one `numpy.random.Generator` seeded by `synthetic.seed`
(the same seed gives byte-identical PNGs and manifest); 4000 images at 32 px take seconds.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from ..errors import FairDiffError
from . import fairgenmed

log = logging.getLogger(__name__)

ATTRIBUTES = {
    "race": ["Asian", "Black", "White"],
    "gender": ["Female", "Male"],
    "ethnicity": ["Non-Hispanic", "Hispanic"],
}
LABELS = {
    "glaucoma": ["non-glaucoma", "glaucoma"],
    "vision_loss": ["normal", "mild", "moderate", "severe"],
    "cup_disc": ["normal", "borderline", "abnormal"],
    "spherical_equivalent": ["positive", "neutral", "negative"],
}
PROPORTIONS = {
    "race": [0.10, 0.15, 0.75],
    "gender": [0.50, 0.50],
    "ethnicity": [0.90, 0.10],
}
MIN_RESOLUTION = 32

# Label model: P(cup class), P(glaucoma | cup), P(vision loss | glaucoma), P(spherical eq.).
P_CUP = [0.45, 0.30, 0.25]
P_GLAUCOMA_GIVEN_CUP = [0.15, 0.50, 0.85]
P_VISION_GIVEN_GLAUCOMA = [[0.70, 0.18, 0.08, 0.04], [0.25, 0.30, 0.25, 0.20]]
P_SPHERICAL = [0.25, 0.45, 0.30]

# Appearance by group (race order: Asian, Black, White). Pigment = background RGB in [0, 1].
PIGMENT = np.array([[0.62, 0.30, 0.15], [0.42, 0.24, 0.14], [0.80, 0.38, 0.18]])
HISPANIC_PIGMENT = 0.90
CONTRAST_LOSS = np.array([0.25, 0.45, 0.0])  # contrast = 1 - loss * difficulty
HISPANIC_CONTRAST_LOSS = 0.10
EXTRA_VARIETY = np.array([0.5, 1.0, 0.0])  # variety amplitudes x (1 + extra * difficulty)
HISPANIC_EXTRA_VARIETY = 0.3
MIN_CONTRAST = 0.1
# Base amplitudes of the within-group variety (multiplied by 1 + extra variety).
TEXTURE_SD = 0.02  # relative, smooth choroidal texture on the background
TEXTURE_GRID = 16  # texture control points per side (fixed, so images look alike at any size)
PIGMENT_SD = 0.05  # relative, per-image brightness of the pigment
HUE_SD = 0.03  # relative, per-channel pigment jitter
GRADIENT_SD = 0.03  # relative illumination change per unit of image side
NOISE_SD = 0.008  # pixel noise, in [0, 1] intensity units

# Geometry (image-side units) and additive colours of the structures (RGB).
DISC_RADIUS = 0.32
DISC_RADIUS_JITTER = 0.04
CENTRE_JITTER = 0.02
CUP_RATIO = np.array([0.30, 0.55, 0.80])
CUP_RATIO_JITTER = 0.04
LESION_ANGLES = np.deg2rad([135.0, 225.0, 315.0])
LESION_DISTANCE = 0.58
LESION_RADIUS = 0.10
WEDGE_ANGLE = np.deg2rad(45.0)
WEDGE_HALF_WIDTH = np.deg2rad(11.0)
WEDGE_ANGLE_JITTER = np.deg2rad(4.0)
WEDGE_START = 0.04  # gap between disc margin and wedge
CRESCENT_HALF_ANGLE = np.deg2rad(38.0)
CRESCENT_WIDTH = 0.13
VESSEL_ANGLES = np.deg2rad([100.0, 170.0, 190.0, 262.0])
VESSEL_WIDTH = 0.022
VESSEL_SHADE = np.array([0.75, 0.6, 0.6])
DISC_COLOUR = np.array([0.95, 0.62, 0.38])  # blended over the background
DISC_OPACITY = 0.75
CUP_COLOUR = np.array([0.04, 0.22, 0.30])
LESION_COLOUR = np.array([0.22, 0.25, 0.10])
WEDGE_COLOUR = np.array([-0.22, -0.18, -0.09])
PALE_CRESCENT_COLOUR = np.array([0.18, 0.19, 0.07])
DARK_CRESCENT_COLOUR = np.array([-0.20, -0.16, -0.08])

# Measurement: the grey level read from RGB, and the decision thresholds on the features (grey
# levels against the local background). Each threshold lies halfway between "absent" (0) and
# the mean level of the faintest group (Black at difficulty 1) on clean 32 px images.
GREY = np.array([0.2, 0.5, 0.3])
# The fitted background level over the drawn pigment's grey (the vignette darkens the field the
# fit averages over): 0.912 for every group, measured on 1500 images at difficulty 0.
BACKGROUND_GAIN = 0.912
CUP_RATIO_THRESHOLDS = (CUP_RATIO[:-1] + CUP_RATIO[1:]) / 2
WEDGE_THRESHOLD = 0.04
LESION_THRESHOLD = 0.05
CRESCENT_THRESHOLDS = (-0.035, 0.04)  # dark (positive SE) below, pale (negative SE) above
# Candidates of the radial fit (image-side units) and blurs tried (Gaussian sd in pixels).
FIT_RADIUS = 0.46
FIT_DISC_RADII = np.arange(0.22, 0.421, 0.005)
FIT_CUP_RADII = np.arange(0.04, 0.40, 0.005)
FIT_BLURS_PX = (0.4, 0.9, 1.5, 2.3)


def sample_metadata(n: int, rng: np.random.Generator, difficulty: float,
                    proportions: dict | None = None) -> pd.DataFrame:
    """Draw groups, labels and appearance parameters of `n` images (one row per image).

    `proportions` overrides the group proportions of some attributes (e.g. a race-balanced
    evaluation set); the label model is always the one of the module docstring.
    """
    props = {**PROPORTIONS, **(proportions or {})}
    idx = {a: rng.choice(len(ATTRIBUTES[a]), size=n, p=props[a]) for a in ATTRIBUTES}
    cup = rng.choice(3, size=n, p=P_CUP)
    glaucoma = (rng.random(n) < np.take(P_GLAUCOMA_GIVEN_CUP, cup)).astype(int)
    cum = np.cumsum(P_VISION_GIVEN_GLAUCOMA, axis=1)[glaucoma]
    vision = (rng.random(n)[:, None] > cum[:, :-1]).sum(axis=1)
    spherical = rng.choice(3, size=n, p=P_SPHERICAL)

    race, hispanic = idx["race"], idx["ethnicity"] == 1
    contrast = (1 - CONTRAST_LOSS[race] * difficulty) * np.where(
        hispanic, 1 - HISPANIC_CONTRAST_LOSS * difficulty, 1.0)
    variety = 1 + (EXTRA_VARIETY[race] + HISPANIC_EXTRA_VARIETY * hispanic) * difficulty
    pigment = PIGMENT[race] * np.where(hispanic, HISPANIC_PIGMENT, 1.0)[:, None]
    pigment = pigment * (1 + PIGMENT_SD * variety * rng.standard_normal(n))[:, None]
    pigment = pigment * (1 + HUE_SD * variety[:, None] * rng.standard_normal((n, 3)))
    # Which corners carry the lesions: the first `vision` slots of a random order.
    order = np.argsort(rng.random((n, 3)), axis=1)
    lesions = (np.argsort(order, axis=1) < vision[:, None]).astype(int)

    frame = pd.DataFrame({a: np.array(ATTRIBUTES[a])[idx[a]] for a in ATTRIBUTES})
    for label, classes in LABELS.items():
        values = {"glaucoma": glaucoma, "vision_loss": vision, "cup_disc": cup,
                  "spherical_equivalent": spherical}[label]
        frame[label] = np.array(classes)[values]
    frame["prompt"] = [fairgenmed.prompt(row) for row in frame.to_dict("records")]
    params = {
        "contrast": np.maximum(contrast, MIN_CONTRAST),
        "variety": variety,
        "pigment_r": pigment[:, 0], "pigment_g": pigment[:, 1], "pigment_b": pigment[:, 2],
        "centre_x": rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, n),
        "centre_y": rng.uniform(-CENTRE_JITTER, CENTRE_JITTER, n),
        "disc_radius": DISC_RADIUS * (1 + DISC_RADIUS_JITTER * rng.uniform(-1, 1, n)),
        "cup_ratio": CUP_RATIO[cup] + rng.uniform(-CUP_RATIO_JITTER, CUP_RATIO_JITTER, n),
        "glaucoma_wedge": glaucoma,
        "wedge_angle": WEDGE_ANGLE + rng.uniform(-WEDGE_ANGLE_JITTER, WEDGE_ANGLE_JITTER, n),
        "lesion_0": lesions[:, 0], "lesion_1": lesions[:, 1], "lesion_2": lesions[:, 2],
        "lesion_scale": rng.uniform(0.9, 1.1, n),
        "crescent": 1 - spherical,  # +1 dark (positive SE), 0 none, -1 pale (negative SE)
        "crescent_width": CRESCENT_WIDTH * rng.uniform(0.85, 1.15, n),
        "gradient_x": GRADIENT_SD * variety * rng.standard_normal(n),
        "gradient_y": GRADIENT_SD * variety * rng.standard_normal(n),
        "vignette": rng.uniform(0.3, 0.6, n),
        "texture_seed": rng.integers(0, 2**63, n),
        **{f"vessel_angle_{k}": a + np.deg2rad(rng.uniform(-6, 6, n))
           for k, a in enumerate(VESSEL_ANGLES)},
        **{f"vessel_bend_{k}": rng.uniform(-0.8, 0.8, n) for k in range(len(VESSEL_ANGLES))},
    }
    return pd.concat([frame, pd.DataFrame(params)], axis=1)


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Anti-aliased step: 0 for x << 0, 1 for x >> 0, linear over `width`."""
    return np.clip(0.5 + x / width, 0.0, 1.0)


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angle difference wrapped into [-pi, pi)."""
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _grid(resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in image-side units, origin at the centre (x right, y down)."""
    c = (np.arange(resolution) + 0.5) / resolution - 0.5
    return np.meshgrid(c, c, indexing="xy")


def _texture(seeds: np.ndarray, resolution: int) -> np.ndarray:
    """Smooth unit-variance random fields [n, R, R]: a coarse Gaussian grid, bilinearly upsampled.

    The grid depends only on the image's seed, so an image looks the same at any resolution.
    """
    coarse = np.stack([np.random.default_rng(int(s)).standard_normal((TEXTURE_GRID, TEXTURE_GRID))
                       for s in seeds])
    pos = np.clip((np.arange(resolution) + 0.5) / resolution * TEXTURE_GRID - 0.5, 0,
                  TEXTURE_GRID - 1)
    lo = np.minimum(pos.astype(int), TEXTURE_GRID - 2)
    frac = pos - lo
    up = np.zeros((resolution, TEXTURE_GRID))
    up[np.arange(resolution), lo] = 1 - frac
    up[np.arange(resolution), lo + 1] = frac
    field = up @ coarse @ up.T
    field -= field.mean(axis=(1, 2), keepdims=True)
    return field / field.std(axis=(1, 2), keepdims=True)


def render(params: pd.DataFrame, resolution: int, rng: np.random.Generator) -> np.ndarray:
    """Draw the images of `sample_metadata` rows: uint8 [n, R, R, 3] (pixel noise from `rng`)."""
    p = {k: np.asarray(params[k])[:, None, None] for k in params.columns
         if pd.api.types.is_numeric_dtype(params[k])}
    gx, gy = _grid(resolution)
    edge = 1.0 / resolution
    dx, dy = gx - p["centre_x"], gy - p["centre_y"]
    rho = np.hypot(dx, dy)
    theta = np.arctan2(dy, dx)
    r_disc = p["disc_radius"]
    contrast = p["contrast"][..., None]

    background = np.stack([p["pigment_r"], p["pigment_g"], p["pigment_b"]], axis=-1)
    texture = _texture(params["texture_seed"].to_numpy(), resolution)
    image = background * (1 + TEXTURE_SD * p["variety"] * texture)[..., None]
    disc = DISC_OPACITY * _ramp(r_disc - rho, edge)[..., None]
    image = image * (1 - disc) + disc * DISC_COLOUR
    # Decorative vessels: four thin, slightly curved dark-red lines leaving the disc on the
    # nasal (left), superior and inferior sides, away from every measured zone.
    for k in range(len(VESSEL_ANGLES)):
        curve = p[f"vessel_angle_{k}"] + p[f"vessel_bend_{k}"] * (rho - r_disc)
        off = _wrap(theta - curve)
        vessel = _ramp(VESSEL_WIDTH / 2 - rho * np.abs(off), edge) * _ramp(rho - r_disc, edge)
        image = image * (1 - vessel[..., None] * (1 - VESSEL_SHADE))
    cup = _ramp(p["cup_ratio"] * r_disc - rho, edge)
    image = image + contrast * cup[..., None] * CUP_COLOUR

    angle_off = _wrap(theta - p["wedge_angle"])
    wedge = (_ramp(WEDGE_HALF_WIDTH * rho - np.abs(angle_off) * rho, edge)
             * _ramp(rho - r_disc - WEDGE_START, edge) * p["glaucoma_wedge"])
    image = image + contrast * wedge[..., None] * WEDGE_COLOUR

    for slot, angle in enumerate(LESION_ANGLES):
        lx, ly = LESION_DISTANCE * np.cos(angle), LESION_DISTANCE * np.sin(angle)
        dist = np.hypot(gx - lx, gy - ly)
        blob = _ramp(LESION_RADIUS * p["lesion_scale"] - dist, edge) * p[f"lesion_{slot}"]
        image = image + contrast * blob[..., None] * LESION_COLOUR

    crescent = (_ramp(CRESCENT_HALF_ANGLE * rho - np.abs(theta) * rho, edge)
                * _ramp(rho - r_disc, edge) * _ramp(r_disc + p["crescent_width"] - rho, edge))
    colour = np.where(p["crescent"][..., None] > 0, DARK_CRESCENT_COLOUR, PALE_CRESCENT_COLOUR)
    image = image + contrast * (crescent * np.abs(p["crescent"]))[..., None] * colour

    illumination = (1 + p["gradient_x"] * gx + p["gradient_y"] * gy
                    - p["vignette"] * (gx ** 2 + gy ** 2))
    image = image * illumination[..., None]
    noise = rng.standard_normal(image.shape[:3]) * (NOISE_SD * p["variety"])
    image = image + noise[..., None]
    return np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)


def generate(n: int, resolution: int, seed: int, difficulty: float = 1.0,
             proportions: dict | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    """`n` SynthFundus images in memory: (metadata + parameters, uint8 [n, R, R, 3]).

    Everything is drawn from one generator seeded with `seed`, in a fixed order, so the same
    arguments give the same images bit for bit.
    """
    rng = np.random.default_rng(seed)
    meta = sample_metadata(n, rng, difficulty, proportions)
    images = np.empty((n, resolution, resolution, 3), np.uint8)
    chunk = max(1, 2**21 // resolution**2)  # bounds the float work arrays to ~100 MB
    for start in range(0, n, chunk):
        images[start:start + chunk] = render(meta.iloc[start:start + chunk], resolution, rng)
    return meta, images


def _check_config(cfg: dict) -> None:
    for key, expected in (("attributes", ATTRIBUTES), ("labels", LABELS)):
        declared = {k: list(v) for k, v in (cfg.get(key) or {}).items()}
        if declared != expected:
            raise FairDiffError(f"datasets.*.{key}: source 'synthetic' produces {expected}, "
                                f"but the config declares {declared}")
    if cfg["resolution"] < MIN_RESOLUTION:
        raise FairDiffError(f"datasets.*.resolution: SynthFundus needs at least "
                            f"{MIN_RESOLUTION} px, got {cfg['resolution']}")
    difficulty = (cfg.get("synthetic") or {}).get("difficulty", 1.0)
    if not difficulty >= 0:
        raise FairDiffError(f"datasets.*.synthetic.difficulty: expected a number >= 0, got "
                            f"{difficulty}")


def build(name: str, cfg: dict, out_dir: Path) -> pd.DataFrame:
    """Write SynthFundus PNGs under out_dir/images/{split}/ and return the manifest rows."""
    _check_config(cfg)
    syn = cfg.get("synthetic") or {}
    sizes = {"train": syn.get("n_train", 3000), "val": syn.get("n_val", 300),
             "test": syn.get("n_test", 600)}
    n = sum(sizes.values())
    log.info("generating %d SynthFundus images for %s (seed %s, difficulty %s)", n, name,
             syn.get("seed", 0), syn.get("difficulty", 1.0))
    meta, images = generate(n, cfg["resolution"], syn.get("seed", 0), syn.get("difficulty", 1.0))
    frame = meta[[*ATTRIBUTES, *LABELS, "prompt"]].copy()
    frame.insert(0, "id", [f"sf_{i:05d}" for i in range(n)])
    frame.insert(1, "split", np.repeat(list(sizes), list(sizes.values())))
    frame.insert(2, "image", [f"images/{s}/{i}.png" for s, i in zip(frame["split"], frame["id"])])
    frame["patient"] = [f"p{i:05d}" for i in range(n)]  # one image per patient
    out_dir = Path(out_dir)
    for split in sizes:
        (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
    for path, image in tqdm(zip(frame["image"], images), total=n, desc="SynthFundus PNGs",
                            disable=n < 1000):
        Image.fromarray(image).save(out_dir / path, format="PNG")
    return frame.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------
# Measurement


def _box_blur(x: np.ndarray, k: int) -> np.ndarray:
    """Mean over a k x k window (edge-padded) of [n, H, W]."""
    if k <= 1:
        return x
    pad = k // 2
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    c = padded.cumsum(axis=1).cumsum(axis=2)
    c = np.pad(c, ((0, 0), (1, 0), (1, 0)))
    h, w = x.shape[1:]
    return (c[:, k:k + h, k:k + w] - c[:, :h, k:k + w] - c[:, k:k + h, :w] + c[:, :h, :w]) / k**2


def _disc_centre(grey: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre of the bright disc: the centroid of the pixels 30 % of the way or more from the
    background to the bright top. x is re-estimated from the top and bottom sectors only, where
    the temporal crescent cannot pull it (the crescent is symmetric in y, so y is unbiased)."""
    smooth = _box_blur(grey, max(3, grey.shape[1] // 16 + 1) | 1)
    central = np.hypot(gx, gy) < 0.42
    vals = smooth[:, central]
    x, y = gx[central], gy[central]
    background = np.median(smooth.reshape(len(grey), -1), axis=1)
    top = np.percentile(vals, 95, axis=1)
    mask = (vals > (background + 0.3 * (top - background))[:, None]).astype(float)
    count = np.maximum(mask.sum(axis=1), 1)
    cx, cy = (mask * x).sum(axis=1) / count, (mask * y).sum(axis=1) / count
    for _ in range(4):
        vertical = mask * (np.abs(y - cy[:, None]) > np.abs(x - cx[:, None]))
        cx = (vertical * x).sum(axis=1) / np.maximum(vertical.sum(axis=1), 1)
    return cx, cy


def features(images: np.ndarray) -> pd.DataFrame:
    """Continuous measurements of SynthFundus images (uint8 [N, H, W, 3], square, H >= 32).

    Lengths are in image-side units, brightness in grey levels (0.2 R + 0.5 G + 0.3 B, in
    [0, 1]). Columns: centre_x, centre_y, disc_radius; cup_ratio (cup radius / disc radius);
    blur (Gaussian sd of the disc edges); background, disc_step, cup_step (levels of the radial
    fit: the cup step is the cup's contrast against the rim); wedge (darkness of the
    inferotemporal wedge zone against the local background); crescent (brightness of the
    temporal crescent zone: > 0 pale, < 0 dark); lesion_0..2 (brightness of the three corner
    lesion zones).
    """
    images = np.asarray(images)
    if (images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3
            or images.shape[1] != images.shape[2] or len(images) == 0):
        raise FairDiffError(f"measure: expected uint8 images [N >= 1, H, W, 3] (square), got "
                            f"{images.dtype} {images.shape}")
    if images.shape[1] < MIN_RESOLUTION:
        raise FairDiffError(f"measure: images must be at least {MIN_RESOLUTION} px, got "
                            f"{images.shape[1]}")
    chunk = max(1, 2**18 // images.shape[1] ** 2)  # bounds the memory (~100 MB)
    return pd.concat([_features(images[i:i + chunk]) for i in range(0, len(images), chunk)],
                     ignore_index=True)


def _features(images: np.ndarray) -> pd.DataFrame:
    n, res = images.shape[:2]
    grey = (images.astype(np.float64) / 255.0) @ GREY
    gx, gy = _grid(res)
    cx, cy = _disc_centre(grey, gx, gy)
    dx, dy = gx[None] - cx[:, None, None], gy[None] - cy[:, None, None]
    rho, theta = np.hypot(dx, dy), np.arctan2(dy, dx)
    flat_grey = grey.reshape(n, -1)

    fit, disc_model = _fit_disc(flat_grey, rho.reshape(n, -1), theta.reshape(n, -1), res)
    r_disc = fit["disc_radius"]

    # Take the fitted (blurred) disc and cup away, then model the background per image (plane
    # + vignette) from pixels outside every drawn structure: the zone features below are then
    # brightness changes against the local background, free of the disc's blurred edge.
    without_disc = flat_grey - disc_model
    zones = _zones(rho, theta, gx, gy, r_disc)
    footprints = _zones(rho, theta, gx, gy, r_disc, margin=fit["blur"])
    outside = ~np.any(np.stack(list(footprints.values())), axis=0)
    basis = np.stack([np.ones_like(gx), gx, gy, gx**2 + gy**2]).reshape(4, -1)
    w = outside.reshape(n, -1).astype(float)
    lhs = np.einsum("np,ip,jp->nij", w, basis, basis) + 1e-9 * np.eye(4)
    rhs = np.einsum("np,ip,np->ni", w, basis, without_disc)
    coef = np.linalg.solve(lhs, rhs[..., None])[..., 0]
    residual = without_disc - coef @ basis

    def zone_mean(mask):
        m = mask.reshape(n, -1).astype(float)
        return (m * residual).sum(axis=1) / np.maximum(m.sum(axis=1), 1)

    out = pd.DataFrame({"centre_x": cx, "centre_y": cy, **fit,
                        "wedge": -zone_mean(zones["wedge"]),
                        "crescent": zone_mean(zones["crescent"])})
    for slot in range(len(LESION_ANGLES)):
        out[f"lesion_{slot}"] = zone_mean(zones[f"lesion_{slot}"])
    return out


def _zones(rho, theta, gx, gy, r_disc, margin=None) -> dict[str, np.ndarray]:
    """Boolean masks [n, H, W] of where each structure is drawn: its inner part (measured), or,
    given a `margin` per image (the blur), its footprint: whole extent plus 0.03 plus the margin
    (left out of the background model)."""
    r = r_disc[:, None, None]
    wedge_off = np.abs(_wrap(theta - WEDGE_ANGLE))
    footprint = margin is not None
    if footprint:
        pad = 0.03 + margin[:, None, None]
        zones = {
            "disc": rho < r + pad,
            "wedge": (rho * wedge_off < rho * (WEDGE_HALF_WIDTH + WEDGE_ANGLE_JITTER) + pad)
            & (rho > r),
            "crescent": (rho * np.abs(theta) < rho * CRESCENT_HALF_ANGLE + pad)
            & (rho < r + 1.15 * CRESCENT_WIDTH + pad),
        }
    else:
        zones = {
            "wedge": (wedge_off < 0.6 * WEDGE_HALF_WIDTH) & (rho > r + WEDGE_START + 0.04)
            & (rho < r + 0.32),
            "crescent": (np.abs(theta) < 0.7 * CRESCENT_HALF_ANGLE) & (rho > r + 0.03)
            & (rho < r + 0.7 * CRESCENT_WIDTH),
        }
    for slot, angle in enumerate(LESION_ANGLES):
        dist = np.hypot(gx - LESION_DISTANCE * np.cos(angle), gy - LESION_DISTANCE * np.sin(angle))
        size = 1.1 * LESION_RADIUS + pad if footprint else 0.75 * LESION_RADIUS
        zones[f"lesion_{slot}"] = np.broadcast_to(dist < size, rho.shape)
    return zones


def _fit_disc(grey: np.ndarray, rho: np.ndarray, theta: np.ndarray,
              res: int) -> tuple[dict, np.ndarray]:
    """Least-squares fit of background + disc step + cup step to each image's radial profile.

    The steps are discs blurred by a Gaussian (exact radial profile), so the radii stay right
    on blurred images: a grid search over disc radius, cup radius and blur; for each triple the
    three levels are linear, so all triples and images are solved at once from binned sums.
    Pixels in the temporal crescent and glaucoma wedge sectors, and beyond the disc's
    surroundings, are left out. Returns the fitted values and the fitted disc + cup (without
    the background level) at every pixel [n, P].
    """
    n = grey.shape[0]
    use = (rho < FIT_RADIUS) & ~((theta > -np.deg2rad(55)) & (theta < np.deg2rad(65)))
    width, centres = _radial_bins(res)
    nbins = len(centres)
    index = np.minimum((rho / width).astype(int), nbins - 1) + nbins * np.arange(n)[:, None]
    weight = np.bincount(index[use], minlength=n * nbins).reshape(n, nbins).astype(float)
    total = np.bincount(index[use], weights=grey[use], minlength=n * nbins).reshape(n, nbins)
    disc_all, cup_all = _blurred_steps(res)
    shape = (n, len(FIT_DISC_RADII), len(FIT_CUP_RADII))
    valid = (FIT_CUP_RADII[None, :] < 0.97 * FIT_DISC_RADII[:, None])[None]
    rows = np.arange(n)
    best_score = np.full(n, np.inf)
    best_blur, best_disc, best_cup = (np.zeros(n, int) for _ in range(3))
    best_levels = np.zeros((n, 3))
    for b, (disc_b, cup_b) in enumerate(zip(disc_all, cup_all)):
        s1 = weight.sum(axis=1)[:, None, None]
        sd = (weight @ disc_b.T)[:, :, None]
        sc = (weight @ cup_b.T)[:, None, :]
        sdd = (weight @ (disc_b ** 2).T)[:, :, None]
        scc = (weight @ (cup_b ** 2).T)[:, None, :]
        sdc = (weight[:, None, :] * disc_b[None]) @ cup_b.T
        sy = total.sum(axis=1)[:, None, None]
        syd = (total @ disc_b.T)[:, :, None]
        syc = (total @ cup_b.T)[:, None, :]
        lhs = np.stack([np.broadcast_to(a, shape) for a in
                        (s1, sd, sc, sd, sdd, sdc, sc, sdc, scc)], axis=-1).reshape(*shape, 3, 3)
        rhs = np.stack([np.broadcast_to(a, shape) for a in (sy, syd, syc)], axis=-1)
        beta = np.linalg.solve(lhs + 1e-9 * np.eye(3), rhs[..., None])[..., 0]
        # Sum of squared residuals up to a per-image constant: -(beta . rhs).
        score = np.where(valid, -(beta * rhs).sum(axis=-1), np.inf).reshape(n, -1)
        pick = score.argmin(axis=1)
        better = score[rows, pick] < best_score
        i_disc, i_cup = np.unravel_index(pick, shape[1:])
        best_score = np.where(better, score[rows, pick], best_score)
        best_blur = np.where(better, b, best_blur)
        best_disc = np.where(better, i_disc, best_disc)
        best_cup = np.where(better, i_cup, best_cup)
        best_levels = np.where(better[:, None], beta[rows, i_disc, i_cup], best_levels)
    fit = {"disc_radius": FIT_DISC_RADII[best_disc],
           "cup_ratio": FIT_CUP_RADII[best_cup] / FIT_DISC_RADII[best_disc],
           "blur": np.asarray(FIT_BLURS_PX)[best_blur] / res,
           "background": best_levels[:, 0], "disc_step": best_levels[:, 1],
           "cup_step": best_levels[:, 2]}
    profile = (best_levels[:, 1:2] * disc_all[best_blur, best_disc]
               + best_levels[:, 2:3] * cup_all[best_blur, best_cup])
    return fit, profile[rows[:, None], index - nbins * rows[:, None]]


@functools.lru_cache(maxsize=8)
def _radial_bins(res: int) -> tuple[float, np.ndarray]:
    """Radial bins of half a pixel out to the image corners: (bin width, bin centres)."""
    width = 0.5 / res
    return width, (np.arange(int(np.ceil(0.75 / width))) + 0.5) * width


@functools.lru_cache(maxsize=8)
def _blurred_steps(res: int) -> tuple[np.ndarray, np.ndarray]:
    """Radial profiles [blurs, radii, bins] of unit discs of every candidate disc / cup radius.

    A disc of radius a blurred by an isotropic Gaussian (sd s) has, at distance r from its
    centre, the value P(|X| <= a) for X ~ N((r, 0), s^2 I): a non-central chi-square CDF.
    """
    from scipy.stats import ncx2

    r = _radial_bins(res)[1]
    sd = np.asarray(FIT_BLURS_PX)[:, None, None] / res

    def profile(radii):
        return ncx2.cdf((radii[None, :, None] / sd) ** 2, 2, (r[None, None, :] / sd) ** 2)

    return profile(FIT_DISC_RADII), profile(FIT_CUP_RADII)


def classify(feats: pd.DataFrame) -> pd.DataFrame:
    """Clinical labels (class names) from `features`, with thresholds between the drawn levels."""
    lesions = feats[[f"lesion_{s}" for s in range(len(LESION_ANGLES))]].to_numpy()
    crescent = feats["crescent"].to_numpy()
    index = {
        "glaucoma": (feats["wedge"].to_numpy() > WEDGE_THRESHOLD).astype(int),
        "vision_loss": (lesions > LESION_THRESHOLD).sum(axis=1),
        "cup_disc": np.searchsorted(CUP_RATIO_THRESHOLDS, feats["cup_ratio"].to_numpy()),
        "spherical_equivalent": np.where(crescent < CRESCENT_THRESHOLDS[0], 0,
                                         np.where(crescent > CRESCENT_THRESHOLDS[1], 2, 1)),
    }
    return pd.DataFrame({label: np.array(LABELS[label])[index[label]] for label in LABELS})


def rendered_race(feats: pd.DataFrame) -> np.ndarray:
    """The race whose pigment an image shows: its fitted background level (`features`) is
    nearest, in log, to BACKGROUND_GAIN x the grey of one (race, ethnicity) pigment. A
    diagnostic of whether a generator renders the group at all (real test images: 0.75-0.97 right at
    difficulty 1.5, lower where pigments overlap)."""
    greys = PIGMENT @ GREY
    levels = np.log(BACKGROUND_GAIN * np.concatenate([greys, HISPANIC_PIGMENT * greys]))
    races = np.array(ATTRIBUTES["race"] * 2)
    nearest = np.abs(np.log(np.maximum(feats["background"].to_numpy(), 1e-6))[:, None]
                     - levels[None]).argmin(axis=1)
    return races[nearest]


def measure(images: np.ndarray) -> pd.DataFrame:
    """Recover the clinical labels of SynthFundus images (uint8 [N, H, W, 3]) by measurement,
    and the race their pigment shows (column `race`, see `rendered_race`)."""
    feats = features(images)
    return classify(feats).assign(race=rendered_race(feats))
