"""`fairdiff cache-latents`: encode a split's images and prompts once; training reads only this.

Output: one safetensors file per dataset and split (results/latents/{dataset}/{split}/
latents.safetensors). The train split's cache holds the rows of every split in `train.splits`
(default [train]; the paper's run [train, val], as the authors fine-tune on both), in manifest
order; its metadata names them (`splits`). It holds
  latents          float32 [N, C, h, w]  VAE posterior mean x scaling_factor
  latents_flipped  float32 [N, C, h, w]  the same for the horizontally flipped image (only when
                                         train.random_flip is on)
  prompt_index     int64 [N]             row -> index into `text`
  text             float32 [P, L, D]     text-encoder hidden states of the P distinct prompts
  empty_text       float32 [1, L, D]     hidden states of the empty prompt (prompt dropout, CFG)
  groups           int64 [N, A]          group index per attribute, in the dataset's declared order
  labels           int64 [N, K]          class index per clinical label, in declared order
and, as JSON strings in the file's metadata: ids, prompts, attributes, labels, base, split (the
cache's name), splits (the manifest splits of its rows), scaling_factor.

The posterior mean is cached rather than a sample: the cache is shared by every arm and seed and
computed once, so a sample would freeze one arbitrary draw of encoder noise into all runs
without giving the per-step augmentation that sampling gives when encoding on the fly; the mean
is deterministic and is what the VAE's decoder reconstructs best.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from . import io, models, runtime
from .data import manifest
from .errors import FairDiffError

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_prompts(tokenizer, text_encoder, prompts: list[str], batch_size: int = 64):
    """Hidden states [P, L, D] exactly as StableDiffusionPipeline.encode_prompt computes them."""
    states = []
    limit = tokenizer.model_max_length
    for prompt, ids in zip(prompts, tokenizer(prompts, verbose=False).input_ids):
        if len(ids) > limit:
            # As diffusers' pipelines do: truncate to the text encoder's limit, and say so.
            dropped = tokenizer.decode(ids[limit - 1:-1])
            log.warning("prompt truncated to the tokenizer's %d tokens (model_max_length), "
                        "dropped: %r (prompt: %r)", limit, dropped, prompt)
    for i in range(0, len(prompts), batch_size):
        ids = tokenizer(prompts[i:i + batch_size], padding="max_length", truncation=True,
                        max_length=limit, return_tensors="pt").input_ids
        states.append(text_encoder(ids.to(text_encoder.device))[0].float())
    return torch.cat(states)


@torch.no_grad()
def encode_images(vae, images: np.ndarray, batch_size: int) -> torch.Tensor:
    """Scaled latents (posterior mean x scaling_factor) of uint8 [N, H, W, 3] images."""
    from tqdm import tqdm

    out = []
    for i in tqdm(range(0, len(images), batch_size), desc="latents", mininterval=5):
        x = models.to_tensor(images[i:i + batch_size]).to(vae.device, vae.dtype)
        out.append(vae.encode(x).latent_dist.mode().float().cpu())
    return torch.cat(out) * vae.config.scaling_factor


def cache(base: str, manifest_path: Path, split: str, dataset: dict, random_flip: bool,
          out: Path, batch_size: int = 64, splits: list[str] | None = None) -> dict:
    """Encode the rows of `splits` (default [split]) into the cache named `split`."""
    splits = list(splits or [split])
    frame = manifest.read(manifest_path, dataset["attributes"], dataset["labels"])
    frame = frame[frame["split"].isin(splits)].reset_index(drop=True)
    if not len(frame):
        raise FairDiffError(f"{manifest_path}: no rows in split(s) {splits}")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vae = models.load(base, "vae").to(device).eval()
    text_encoder = models.load(base, "text_encoder").to(device).eval()
    tokenizer = models.load(base, "tokenizer")

    images = models.read_images(manifest_path, frame, int(dataset["resolution"]))
    tensors = {"latents": encode_images(vae, images, batch_size)}
    if random_flip:
        tensors["latents_flipped"] = encode_images(vae, images[:, :, ::-1].copy(), batch_size)
    prompts = sorted(set(frame["prompt"]))
    position = {p: i for i, p in enumerate(prompts)}
    tensors["prompt_index"] = torch.tensor([position[p] for p in frame["prompt"]])
    tensors["text"] = encode_prompts(tokenizer, text_encoder, prompts).cpu()
    tensors["empty_text"] = encode_prompts(tokenizer, text_encoder, [""]).cpu()
    for key, declared in (("groups", dataset["attributes"]), ("labels", dataset["labels"])):
        tensors[key] = torch.tensor(np.stack(
            [frame[col].map({v: i for i, v in enumerate(values)}).to_numpy()
             for col, values in declared.items()], axis=1), dtype=torch.int64)
    metadata = {
        "ids": json.dumps(list(frame["id"])),
        "prompts": json.dumps(prompts),
        "attributes": json.dumps(dataset["attributes"]),
        "labels": json.dumps(dataset["labels"]),
        "base": base,
        "split": split,
        "splits": json.dumps(splits),
        "scaling_factor": repr(float(vae.config.scaling_factor)),
    }
    from safetensors.torch import save_file

    with io.atomic_path(out) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    log.info("cached %d rows of %s as the %s cache (%d prompts): latents %s, latent std %.3f",
             len(frame), "+".join(splits), split, len(prompts), tuple(tensors["latents"].shape),
             float(tensors["latents"].std()))
    return tensors


def read(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata with JSON fields decoded) of a latent cache file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FairDiffError(f"{path}: latent cache not found (run cache-latents)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        for key in ("ids", "prompts", "attributes", "labels"):
            meta[key] = json.loads(meta[key])
        meta["splits"] = json.loads(meta.get("splits") or json.dumps([meta.get("split")]))
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise FairDiffError(f"{path}: incomplete or corrupt latent cache ({err}); rebuild it "
                            f"(snakemake --forcerun cache_latents, or fairdiff cache-latents)"
                            ) from err
    return tensors, meta


def add_arguments(parser):
    from .cli import json_arg

    parser.add_argument("--base", required=True, help="diffusers model id or folder")
    parser.add_argument("--manifest", required=True, type=Path)
    parser.add_argument("--split", required=True, choices=manifest.SPLITS,
                        help="the cache's name (latents/{dataset}/{split}/)")
    parser.add_argument("--splits", nargs="+", choices=manifest.SPLITS, default=None,
                        help="manifest splits whose rows it holds (default: --split; "
                             "train.splits for the train cache)")
    parser.add_argument("--dataset", required=True, type=json_arg, help="the dataset's config")
    parser.add_argument("--random-flip", action="store_true",
                        help="also cache the latents of the flipped images (train.random_flip)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", required=True, type=Path, help="output .safetensors file")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args):
    runtime.set_threads(args.threads)
    cache(args.base, args.manifest, args.split, args.dataset, args.random_flip, args.out,
          args.batch_size, args.splits)
