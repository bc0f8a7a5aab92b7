"""`fairdiff sample`: generate images for a split's prompts with a trained UNet.

Prompts: test split - every row, `images_per_prompt` times (the quality metrics compare them with
the real test images); train split - the first `train_prompts` rows after a shuffle seeded by the
training seed (the train-on-synthetic classifiers), one image each.

Every image has its own seed, derived from (seed, source row id, copy index), and its own
generator, so any image can be regenerated alone (`generate` with a one-element list) and a batch
gives the same pixels up to floating-point noise. The pipeline is a stock StableDiffusionPipeline
built from the base stack with the trained UNet: sample.weights picks the EMA weights (unet_ema/,
or unet/ when the run kept none) or the raw ones (unet/, what the authors evaluate);
sample.scheduler a sampler, or `pipeline` for the base model's own scheduler as stored with it;
sample.dtype the precision on a GPU (always float32 on CPU).

Resume: images go into a hidden partial folder beside the output (not a declared output, so it
survives a failed job); images already there are skipped when they were made by the same model
weights and settings (else the folder is cleared); the folder is published by a rename once
prompts.csv is written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zlib
from pathlib import Path

import numpy as np
import torch

from . import io, models, runtime
from .data import manifest
from .errors import FairDiffError

log = logging.getLogger(__name__)

# Samplers by config name: diffusers class and options; `pipeline` keeps the base's own scheduler.
SCHEDULERS = {
    "pipeline": None,
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    "euler": ("EulerDiscreteScheduler", {}),
    "dpm": ("DPMSolverMultistepScheduler", {}),
}


def image_seed(seed: int, source_id: str, copy: int) -> int:
    """Seed of one generated image, stable across processes (crc32, not Python's hash)."""
    key = [int(seed), zlib.crc32(str(source_id).encode()), int(copy)]
    return int(np.random.SeedSequence(key).generate_state(1, np.uint64)[0] >> 1)


WEIGHTS = {"ema": ("unet_ema", "unet"), "raw": ("unet",)}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def unet_folder(model_dir: Path, weights: str = "ema") -> Path:
    """The UNet to sample from: `ema` - the EMA weights when the run kept them, else the raw
    ones; `raw` - the raw training weights."""
    names = WEIGHTS[weights]
    for name in names:
        if (model_dir / name / "config.json").exists():
            return model_dir / name
    raise FairDiffError(f"{model_dir}: no {' or '.join(f'{n}/' for n in names)} folder "
                        f"(sample.weights: {weights}; run train first)")


def dtype_of(name: str) -> torch.dtype:
    """sample.dtype on a GPU; float32 on CPU, where half precision is slow or unsupported."""
    return DTYPES[name] if torch.cuda.is_available() else torch.float32


def build_pipeline(base: str, scheduler: str, unet=None, dtype=torch.float32):
    """StableDiffusionPipeline of the base stack with `unet` (default: the base's own) and the
    chosen sampler, in `dtype`, on the GPU when there is one. Training's validation samples
    through it too."""
    import diffusers
    from diffusers import StableDiffusionPipeline

    models.load(base, "scheduler")  # a clear error when the base stack is missing
    kwargs = {} if unet is None else {"unet": unet.to(dtype)}
    pipe = StableDiffusionPipeline.from_pretrained(
        base, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        torch_dtype=dtype, **kwargs)
    if SCHEDULERS[scheduler] is not None:
        name, extra = SCHEDULERS[scheduler]
        pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config, **extra)
    pipe.vae.enable_slicing()
    pipe.set_progress_bar_config(disable=True)
    return pipe.to("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(base: str, model_dir: Path | None, scheduler: str, weights: str = "ema",
                  dtype: str = "float32"):
    """The pipeline of a trained run folder's UNet (the base's own UNet when model_dir is None)."""
    from diffusers import UNet2DConditionModel

    unet = None
    if model_dir is not None:
        unet = UNet2DConditionModel.from_pretrained(unet_folder(model_dir, weights),
                                                    torch_dtype=dtype_of(dtype))
    return build_pipeline(base, scheduler, unet, dtype_of(dtype))


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], resolution: int, steps: int,
             guidance_scale: float) -> np.ndarray:
    """uint8 [N, H, W, 3] images, image i drawn with a generator seeded by seeds[i]."""
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    images = pipe(prompt=list(prompts), height=resolution, width=resolution,
                  num_inference_steps=steps, guidance_scale=guidance_scale,
                  generator=generators, output_type="np").images
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def plan(frame, split: str, settings: dict, seed: int, manifest_path: Path | str = "manifest"):
    """The images to generate: source rows, copy index, file name and seed, in a fixed order."""
    rows = frame[frame["split"] == split].reset_index(drop=True)
    if not len(rows):
        raise FairDiffError(f"{manifest_path}: no rows in split '{split}'")
    if split == "test":
        copies = settings["images_per_prompt"]
    else:
        order = np.random.default_rng(seed).permutation(len(rows))
        rows = rows.iloc[order[:settings["train_prompts"]]].reset_index(drop=True)
        copies = 1
    jobs = rows.loc[rows.index.repeat(copies)].reset_index(drop=True)
    jobs["copy"] = np.tile(np.arange(copies), len(rows))
    jobs["source_id"] = jobs["id"]
    jobs["id"] = [f"{s}_{c}" for s, c in zip(jobs["source_id"], jobs["copy"])]
    jobs["image"] = [f"{i:06d}.png" for i in range(len(jobs))]
    jobs["seed"] = [image_seed(seed, s, c) for s, c in zip(jobs["source_id"], jobs["copy"])]
    return jobs


def sample(base: str, model_dir: Path, manifest_path: Path, split: str, dataset: dict,
           settings: dict, seed: int, out: Path) -> Path:
    from PIL import Image
    from tqdm import tqdm

    frame = manifest.read(manifest_path, dataset["attributes"], dataset["labels"])
    jobs = plan(frame, split, settings, seed, manifest_path)
    partial = out.parent / f".{out.name}.partial"
    # Images left by an earlier attempt are reused only if they come from the same model,
    # settings and plan (the weights' hash, not their path, identifies the model; images are
    # named by position, so the plan's prompts and seeds are part of the key).
    from .train import file_hash

    unet = unet_folder(model_dir, settings["weights"])
    weights = unet / "diffusion_pytorch_model.safetensors"
    key = json.dumps({"base": base, "weights": file_hash(weights) if weights.exists() else None,
                      "split": split, "sample": settings, "seed": seed,
                      "resolution": dataset["resolution"],
                      "plan": hashlib.sha256(jobs[["id", "prompt", "seed"]].to_csv(
                          index=False).encode()).hexdigest()}, sort_keys=True)
    if partial.exists() and (not (partial / "key.json").exists()
                             or (partial / "key.json").read_text() != key):
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    (partial / "key.json").write_text(key)
    todo = jobs[[not (partial / name).exists() for name in jobs["image"]]]
    log.info("%s: %d images (%d already in %s)", split, len(jobs), len(jobs) - len(todo), partial)
    pipe = load_pipeline(base, model_dir, settings["scheduler"], settings["weights"],
                         settings["dtype"])
    batch = settings["batch_size"]
    for start in tqdm(range(0, len(todo), batch), desc=f"sample {split}", mininterval=5,
                      unit="batch"):
        chunk = todo.iloc[start:start + batch]
        images = generate(pipe, list(chunk["prompt"]), list(chunk["seed"]),
                          int(dataset["resolution"]), settings["num_inference_steps"],
                          settings["guidance_scale"])
        for name, image in zip(chunk["image"], images):
            with io.atomic_path(partial / name) as tmp:
                Image.fromarray(image).save(tmp, format="PNG")
    columns = [c for c in frame.columns if c != "copy"] + ["source_id", "copy", "seed"]
    jobs[columns].to_csv(partial / "prompts.csv", index=False)
    io.write_json(partial / "run_info.json", io.run_info(
        {"base": base, "model": str(model_dir), "unet": str(unet),
         "split": split, "sample": settings, "seed": seed}))
    if out.exists():
        shutil.rmtree(out)
    os.replace(partial, out)
    return out


def add_arguments(parser):
    from .cli import json_arg

    parser.add_argument("--base", required=True, help="diffusers model id or folder")
    parser.add_argument("--model", required=True, type=Path,
                        help="trained run folder (unet/ and optionally unet_ema/)")
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--split", required=True, choices=("train", "test"))
    parser.add_argument("--dataset", required=True, type=json_arg, help="the dataset's config")
    parser.add_argument("--sample", required=True, type=json_arg, help="the sample config section")
    parser.add_argument("--seed", required=True, type=int, help="the training seed")
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args):
    runtime.set_threads(args.threads)
    sample(args.base, args.model, args.manifest, args.split, args.dataset, args.sample,
           args.seed, args.out)
