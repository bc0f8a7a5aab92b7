"""Watching a training run (train.validation): sample grids of fixed prompts every N steps, and a
TensorBoard event file of the run (loss, lr, sigma per group, the grids). Off unless
train.validation.every is set. The CSVs of the run stay the source of truth.

Prompts: one per group of each attribute, from the train split (the latent cache the run trains
on): for each (attribute, group) in the config's order, the first cached row of that group not
chosen already, so the rows are distinct and the same in every arm and seed of a dataset. Each is
drawn images_per_prompt times with fixed seeds (sample.image_seed(0, row id, copy)): grids compare
across steps, arms and seeds.

Files, written while the run trains and carried into the published run folder at the end:
  validation/prompts.csv         the grid's rows, in order (attribute, group, id, prompt, seeds)
  validation/step-NNNNNNN.png    rows = prompts, columns = the seeds
  tensorboard/                   the event file (needs the optional extra: pip install -e
                                 ".[tensorboard]"; with validation.tensorboard off, none is written)

Training is never touched: the UNet sampled is a separate copy that gets the EMA (or raw) weights
before each grid, and sampling runs inside torch.random.fork_rng with its own generators, so the
trained weights are identical with validation on or off (tests/test_train.py).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import io, sample
from .errors import FairDiffError

# Seed of the grid images: fixed, so every run of a dataset draws the same noise.
GRID_SEED = 0
# Images per pipeline call: a large grid never needs the memory of one batch of all of them.
BATCH = 8


def choose_prompts(tensors: dict, meta: dict, attributes: dict) -> pd.DataFrame:
    """One distinct train-split row per group of each attribute (see the module docstring)."""
    groups = tensors["groups"]
    chosen, rows = set(), []
    for a, (attribute, names) in enumerate(attributes.items()):
        for g, group in enumerate(names):
            candidates = [int(i) for i in torch.nonzero(groups[:, a] == g).flatten()
                          if int(i) not in chosen]
            if not candidates:
                continue  # a group without (further) train rows has no row in the grid
            row = candidates[0]
            chosen.add(row)
            rows.append({"attribute": attribute, "group": group, "id": meta["ids"][row],
                         "prompt": meta["prompts"][int(tensors["prompt_index"][row])]})
    return pd.DataFrame(rows, columns=["attribute", "group", "id", "prompt"])


def summary_writer(log_dir: Path, purge_step: int | None):
    """torch's TensorBoard SummaryWriter, or a one-line error naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise FairDiffError(
            "train.validation.tensorboard is on but TensorBoard is not installed: "
            "pip install -e \".[tensorboard]\", or set train.validation.tensorboard: false "
            "(grids are written either way)") from err
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def grid(images: np.ndarray, rows: int) -> np.ndarray:
    """uint8 [rows*H, cols*W, 3] from [rows*cols, H, W, 3] images in row-major order."""
    n, h, w, c = images.shape
    cols = n // rows
    return images.reshape(rows, cols, h, w, c).transpose(0, 2, 1, 3, 4).reshape(
        rows * h, cols * w, c)


class Validation:
    """Grids and TensorBoard scalars of one run, on the main process (see the module docstring)."""

    def __init__(self, settings: dict, base: str, unet, tensors: dict, meta: dict,
                 attributes: dict, resolution: int, run_folder: Path, step: int, dtype):
        self.every, self.copies = settings["every"], settings["images_per_prompt"]
        self.steps, self.guidance = settings["num_inference_steps"], settings["guidance_scale"]
        self.use_ema = settings["weights"] == "ema"
        self.resolution, self.folder = resolution, run_folder / "validation"
        self.prompts = choose_prompts(tensors, meta, attributes)
        self.jobs = self.prompts.loc[self.prompts.index.repeat(self.copies)]
        self.seeds = [sample.image_seed(GRID_SEED, i, c) for i, c in
                      zip(self.jobs["id"], np.tile(np.arange(self.copies), len(self.prompts)))]
        # A run resumed at step s logs steps s+1... again: TensorBoard drops the earlier copies.
        self.writer = (summary_writer(run_folder / "tensorboard", step + 1 if step else None)
                       if settings["tensorboard"] else None)
        io.write_csv(self.folder / "prompts.csv", self.prompts.assign(
            seeds=[" ".join(map(str, self.seeds[i * self.copies:(i + 1) * self.copies]))
                   for i in range(len(self.prompts))]))
        with torch.random.fork_rng(devices=_devices()):
            self.unet = copy.deepcopy(unet).requires_grad_(False).eval()
            self.pipe = sample.build_pipeline(base, settings["scheduler"], self.unet, dtype)

    def due(self, step: int, max_steps: int) -> bool:
        return step % self.every == 0 or step == max_steps

    def grid(self, step: int, unet, ema) -> Path:
        """Sample the prompts with the current EMA (or raw) weights; write and log the grid."""
        source = ema.shadow_params if self.use_ema and ema is not None else unet.parameters()
        with torch.no_grad():
            for mine, theirs in zip(self.unet.parameters(), source):
                mine.copy_(theirs)
        prompts = list(self.jobs["prompt"])
        with torch.random.fork_rng(devices=_devices()):
            images = np.concatenate([
                sample.generate(self.pipe, prompts[i:i + BATCH], self.seeds[i:i + BATCH],
                                self.resolution, self.steps, self.guidance)
                for i in range(0, len(prompts), BATCH)])
        picture = grid(images, len(self.prompts))
        path = self.folder / f"step-{step:07d}.png"
        with io.atomic_path(path) as tmp:
            from PIL import Image

            Image.fromarray(picture).save(tmp, format="PNG")
        if self.writer is not None:
            self.writer.add_image("validation", picture, step, dataformats="HWC")
        return path

    def scalars(self, row: dict, sigma_row: dict | None) -> None:
        """TensorBoard scalars of one train_log row and the sigma of the step's weights."""
        if self.writer is None:
            return
        self.writer.add_scalar("train/loss", row["loss"], row["step"])
        self.writer.add_scalar("train/lr", row["lr"], row["step"])
        for name, value in (sigma_row or {}).items():
            if name.startswith("sigma_"):
                self.writer.add_scalar(f"sigma/{name[len('sigma_'):]}", value, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _devices() -> list:
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []
