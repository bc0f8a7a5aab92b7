"""The latent-diffusion stack: load a pretrained one, or build the tiny one (`fairdiff base-model`).

One code path for tiny and real models: every later stage loads the stack with `load(base, ...)`,
where `base` is a diffusers model id (e.g. stabilityai/stable-diffusion-2-1, resolved through the
Hugging Face cache, honouring HF_HOME and HF_HUB_OFFLINE) or a local diffusers folder.

With `model.pretrained: null`, `fairdiff base-model` builds the stack from the architecture
configs shipped in configs/<tiny_architecture>/ (AutoencoderKL, UNet2DConditionModel,
CLIPTextModel, DDPM scheduler, the offline tokenizer of tokenizer.py), trains the VAE on the
dataset's train split (a random decoder only gives noise), sets the VAE's scaling_factor to
1/std of its latents, trains the text encoder contrastively on the train split's (image,
prompt) pairs, as CLIP was trained (a random frozen text encoder gives prompts states the UNet
learns to follow only slowly, and how well depends on its initialisation), and saves everything
with save_pretrained as a stock StableDiffusionPipeline folder. For SynthFundus (whose labels
can be measured) it also measures the VAE ceiling: how often the labels measured on VAE
reconstructions of the val split match the truth, per group (vae_ceiling.csv, next to the same
accuracy on the real images) - a generated image cannot carry a label better than the
autoencoder reproduces it.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from . import io, runtime
from .data import manifest
from .errors import FairDiffError

log = logging.getLogger(__name__)

CONFIGS = Path(__file__).parent / "configs"
# The base stack is shared by every training seed, so its own seed is fixed.
BASE_SEED = 0


def load(base: str, component: str):
    """One component of a diffusers stack (vae, unet, text_encoder, tokenizer, scheduler)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    classes = {"vae": AutoencoderKL, "unet": UNet2DConditionModel, "text_encoder": CLIPTextModel,
               "tokenizer": CLIPTokenizer, "scheduler": DDPMScheduler}
    local = Path(base)
    if local.exists() and not (local / "model_index.json").exists():
        raise FairDiffError(f"model '{base}': folder has no model_index.json; expected a "
                            f"diffusers pipeline folder (save_pretrained layout)")
    try:
        return classes[component].from_pretrained(base, subfolder=component)
    except (OSError, ValueError) as err:
        where = "local folder" if local.exists() else "model id (Hugging Face cache: HF_HOME)"
        raise FairDiffError(f"model '{base}': could not load its {component} from this {where} "
                            f"- set model.pretrained to a downloaded diffusers model, or null for "
                            f"the tiny stack ({type(err).__name__}: {str(err).splitlines()[0]})"
                            ) from None


def read_images(table: str | Path, frame, resolution: int | None = None,
                resize: int | None = None) -> np.ndarray:
    """The images of a table's rows as uint8 [N, H, W, 3]; the package's one image loader.

    `table` is the CSV the rows come from (a manifest, or a samples folder's prompts.csv), whose
    folder the `image` paths are relative to. Every image must be RGB (and resolution x
    resolution when given), as the manifest contract says and as `fairdiff sample` writes them:
    another mode (grey, RGBA, palette) is refused, never converted, since it means the files
    were not written by this pipeline and a silent conversion would change what is measured.
    A missing, corrupt or non-image file is an error naming it. `resize`: resized (bilinear,
    antialiased) to resize x resize after the checks, as the classifiers read them (10000
    training images at 512 px would be 7.9 GB).
    """
    from PIL import Image

    images = []
    for name in frame["image"]:
        path = manifest.image_path(table, name)
        if not path.exists():
            raise FairDiffError(f"{path}: image listed in {table} not found")
        try:
            with Image.open(path) as image:
                image.load()
                mode, size = image.mode, image.size
                array = np.asarray(image)
        except OSError as err:
            raise FairDiffError(f"{path}: cannot read the image ({err}); rebuild it (fairdiff "
                                f"data for a dataset, fairdiff sample for samples)") from err
        if mode != "RGB" or (resolution is not None and size != (resolution, resolution)):
            expected = f"{resolution}x{resolution} " if resolution is not None else ""
            raise FairDiffError(f"{path}: image is {mode} {size[0]}x{size[1]}, expected {expected}"
                                f"RGB (the manifest contract); rebuild it (fairdiff data for a "
                                f"dataset, fairdiff sample for samples)")
        if resize is not None and size != (resize, resize):
            array = np.asarray(Image.fromarray(array).resize((resize, resize),
                                                             Image.Resampling.BILINEAR))
        images.append(array)
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
        raise FairDiffError(f"{table}: images have different sizes {sorted(sizes)[:3]}; "
                            f"expected one resolution")
    return np.stack(images)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] in [-1, 1] (the VAE's input range)."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float [N, 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3] (rounded like diffusers' pipelines)."""
    images = (images / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    return (images * 255).round().to(torch.uint8).numpy()


def build_tiny(architecture: str, resolution: int):
    """The untrained tiny stack from configs/<architecture>/ (seeded); components that folder
    lacks come from configs/tiny/."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = CONFIGS / architecture
    if not folder.is_dir():
        raise FairDiffError(f"model.tiny_architecture '{architecture}': no folder {folder}")

    def part(name: str) -> Path:
        """A variant folder holds the components it changes; the others are tiny's."""
        return folder / name if (folder / name).exists() else CONFIGS / "tiny" / name

    torch.manual_seed(BASE_SEED)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(part("vae")))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    if resolution % factor:
        raise FairDiffError(f"dataset resolution {resolution} is not a multiple of the VAE's "
                            f"downsampling factor {factor}")
    vae.register_to_config(sample_size=resolution)
    unet_config = dict(UNet2DConditionModel.load_config(part("unet")))
    unet_config["sample_size"] = resolution // factor
    unet = UNet2DConditionModel.from_config(unet_config)
    tokenizer = CLIPTokenizer.from_pretrained(part("tokenizer"))
    text_config = CLIPTextConfig.from_pretrained(part("text_encoder"))
    if text_config.max_position_embeddings < tokenizer.model_max_length:
        raise FairDiffError(f"{part('text_encoder')}: max_position_embeddings "
                            f"{text_config.max_position_embeddings} < tokenizer model_max_length "
                            f"{tokenizer.model_max_length}")
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDPMScheduler.from_pretrained(part("scheduler"))
    return {"vae": vae, "unet": unet, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler": scheduler}


def fit(loss_of_step, parameters, steps: int, learning_rate: float, weight_decay: float,
        what: str, config_key: str) -> list[float]:
    """AdamW with a one-cycle learning rate (10 % warm-up) over `steps` calls of loss_of_step();
    stops at a non-finite loss, naming the config key to lower. Returns the losses."""
    from tqdm import tqdm

    optimizer = torch.optim.AdamW(parameters, lr=learning_rate, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=learning_rate,
                                                   total_steps=steps, pct_start=0.1)
    losses = []
    for _ in tqdm(range(steps), desc=what, mininterval=5):
        loss = loss_of_step()
        if not torch.isfinite(loss):
            raise FairDiffError(f"{what} training: non-finite loss at step {len(losses)}; lower "
                                f"{config_key}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def train_vae(vae, images: torch.Tensor, steps: int, batch_size: int, learning_rate: float,
              seed: int = BASE_SEED) -> list[float]:
    """Reconstruction training (MSE + a tiny KL term, like SD's VAE), one-cycle learning rate."""
    generator = torch.Generator().manual_seed(seed)

    def loss_of_step():
        batch = images[torch.randint(len(images), (batch_size,), generator=generator)].to(
            vae.device)
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=generator)).sample
        return torch.nn.functional.mse_loss(recon, batch) + 1e-6 * posterior.kl().mean()

    vae.train()
    losses = fit(loss_of_step, vae.parameters(), steps, learning_rate, 0.0, "VAE",
                 "model.vae.learning_rate")
    vae.eval()
    return losses


def train_text_encoder(text_encoder, tokenizer, latents: torch.Tensor, prompts: list[str],
                       steps: int, batch_size: int, learning_rate: float,
                       seed: int = BASE_SEED) -> list[float]:
    """CLIP-style contrastive training of the text encoder on (image latent, prompt) pairs.

    An image tower (a small CNN on the scaled latents, discarded afterwards) and the text
    encoder's pooled output are projected into a shared space. For each batch of images, the
    logits are scaled cosine similarities between its images and its distinct prompts: each
    image's target is its own prompt, each prompt's targets are its images (images that share a
    prompt are not negatives of each other). One-cycle learning rate, like the VAE. The loss's
    floor is above 0 (the entropy of a prompt's spread over its images), so its value depends on
    the batch size.
    """
    device = latents.device
    unique, inverse = np.unique(np.asarray(prompts, dtype=object), return_inverse=True)
    # CLIP's attention is causal: the states of a prompt's tokens (and its pooled end-of-text
    # state) do not depend on padding after it, so padding to the longest prompt gives the
    # states the latent cache's max_length padding gives (up to float rounding).
    ids = tokenizer(list(unique), padding="longest", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    ids, inverse = ids.to(device), torch.from_numpy(inverse).to(device)
    dim, width = text_encoder.config.projection_dim, text_encoder.config.hidden_size
    channels = latents.shape[1]
    with torch.random.fork_rng(devices=[]):   # seeded heads, the caller's RNG left as it was
        torch.manual_seed(seed)
        tower = torch.nn.Sequential(
            torch.nn.Conv2d(channels, 64, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.Conv2d(64, 128, 3, stride=2, padding=1), torch.nn.SiLU(),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(128, dim))
        text_projection = torch.nn.Linear(width, dim, bias=False)
    tower, text_projection = tower.to(device), text_projection.to(device)
    # CLIP's learnable temperature: logit scale 1/0.07 at the start, capped at 100
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    parameters = [*text_encoder.parameters(), *tower.parameters(),
                  *text_projection.parameters(), log_scale]
    generator = torch.Generator().manual_seed(seed)
    normalize = torch.nn.functional.normalize

    def loss_of_step():
        rows = torch.randint(len(latents), (batch_size,), generator=generator).to(device)
        distinct, own = torch.unique(inverse[rows], return_inverse=True)
        text = normalize(text_projection(text_encoder(ids[distinct]).pooler_output), dim=-1)
        image = normalize(tower(latents[rows]), dim=-1)
        logits = log_scale.exp().clamp(max=100) * image @ text.T          # [images, prompts]
        images_of = torch.nn.functional.one_hot(own, len(distinct)).T.float()
        return (torch.nn.functional.cross_entropy(logits, own)
                + torch.nn.functional.cross_entropy(
                    logits.T, images_of / images_of.sum(1, keepdim=True))) / 2

    text_encoder.train()
    losses = fit(loss_of_step, parameters, steps, learning_rate, 0.01, "text encoder",
                 "model.text_encoder.learning_rate")
    text_encoder.eval()
    return losses


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Unscaled latents: the mean of the VAE's posterior (deterministic), on the CPU."""
    return torch.cat([vae.encode(images[i:i + batch_size].to(vae.device)).latent_dist.mode().cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def decode(vae, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([vae.decode(latents[i:i + batch_size].to(vae.device)).sample.cpu()
                      for i in range(0, len(latents), batch_size)])


def label_accuracy(measured, frame, attributes: dict, labels: list[str]) -> list[dict]:
    """Share of rows whose measured label equals the manifest's, overall and per group."""
    rows = []
    keys = [("all", "all", np.ones(len(frame), bool))]
    for attribute, groups in attributes.items():
        keys += [(attribute, g, (frame[attribute] == g).to_numpy()) for g in groups]
    for attribute, group, mask in keys:
        for label in labels:
            hit = measured[label].astype(str).to_numpy() == frame[label].to_numpy()
            rows.append({"attribute": attribute, "group": group, "label": label,
                         "n": int(mask.sum()),
                         "accuracy": float(hit[mask].mean()) if mask.any() else math.nan})
    return rows


def vae_ceiling(vae, real: np.ndarray, frame, attributes: dict, labels: dict):
    """Measured-label accuracy on real images and on their VAE reconstructions, per group."""
    import pandas as pd
    from .data.synthetic import measure

    recon = to_uint8(decode(vae, encode(vae, to_tensor(real))))
    measured_real = measure(real)
    measured_recon = measure(recon)
    names = [n for n in labels if n in measured_real.columns]
    table = pd.DataFrame(label_accuracy(measured_real, frame, attributes, names)).rename(
        columns={"accuracy": "real_accuracy"})
    table["reconstruction_accuracy"] = [
        r["accuracy"] for r in label_accuracy(measured_recon, frame, attributes, names)]
    # in the VAE's [-1, 1] range, comparable with its training loss
    mse = float(np.mean(((recon.astype(np.float64) - real) / 127.5) ** 2))
    return table, mse


def save_stack(stack: dict, out: Path) -> None:
    """Save a stack as a stock StableDiffusionPipeline folder (model_index.json + components)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**stack, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(out, safe_serialization=True)


def build_base(name: str, dataset: dict, model: dict, manifest_path: Path, out: Path) -> dict:
    """`fairdiff base-model`: build the tiny stack, train its VAE and text encoder, measure the
    VAE ceiling, save."""
    frame = manifest.read(manifest_path, dataset["attributes"], dataset["labels"])
    stack = build_tiny(model["tiny_architecture"], int(dataset["resolution"]))
    train = frame[frame["split"] == "train"]
    images = to_tensor(read_images(manifest_path, train, int(dataset["resolution"])))
    settings = model["vae"]
    # The rule asks for a GPU on a cluster: the VAE and text encoder train there (the CPU run is
    # unchanged; on a GPU neither is bit-identical to a CPU build).
    stack["vae"].to("cuda" if torch.cuda.is_available() else "cpu")
    log.info("training the VAE on %d images for %d steps on %s", len(images), settings["steps"],
             stack["vae"].device)
    losses = train_vae(stack["vae"], images, settings["steps"], settings["batch_size"],
                       settings["learning_rate"])
    latents = encode(stack["vae"], images)
    scaling = float(1.0 / latents.std())
    stack["vae"].register_to_config(scaling_factor=scaling)
    log.info("VAE: final loss %.5f, latent std %.4f -> scaling_factor %.4f",
             np.mean(losses[-20:]), 1 / scaling, scaling)
    text = model["text_encoder"]
    text_losses = []
    if text["steps"]:
        log.info("training the text encoder on %d image-prompt pairs (%d distinct prompts) for "
                 "%d steps", len(train), train["prompt"].nunique(), text["steps"])
        device = stack["vae"].device
        text_losses = train_text_encoder(
            stack["text_encoder"].to(device), stack["tokenizer"], (latents * scaling).to(device),
            list(train["prompt"]), text["steps"], text["batch_size"], text["learning_rate"])
        stack["text_encoder"].to("cpu")
        log.info("text encoder: contrastive loss %.4f -> %.4f", np.mean(text_losses[:20]),
                 np.mean(text_losses[-20:]))

    val = frame[frame["split"] == "val"]
    if not len(val):
        val = frame[frame["split"] == "test"]
    ceiling, mse = None, None
    if dataset["source"] == "synthetic":
        ceiling, mse = vae_ceiling(stack["vae"], read_images(manifest_path, val), val,
                                   dataset["attributes"], dataset["labels"])
        worst = ceiling.loc[ceiling["reconstruction_accuracy"].idxmin()]
        log.info("VAE ceiling (%s split): reconstruction MSE %.5f; lowest label accuracy %.3f "
                 "(%s, %s=%s)", val["split"].iloc[0], mse, worst["reconstruction_accuracy"],
                 worst["label"], worst["attribute"], worst["group"])
    stack["vae"].to("cpu")
    with io.atomic_dir(out) as tmp:
        save_stack(stack, tmp)
        if ceiling is not None:
            ceiling.insert(0, "split", val["split"].iloc[0])
            ceiling.insert(0, "dataset", name)
            ceiling.to_csv(tmp / "vae_ceiling.csv", index=False)
        io.write_json(tmp / "run_info.json", io.run_info(
            {"name": name, "model": model, "resolution": dataset["resolution"],
             "vae_final_loss": float(np.mean(losses[-20:])), "vae_scaling_factor": scaling,
             "vae_reconstruction_mse": mse,
             "text_encoder_final_loss": float(np.mean(text_losses[-20:])) if text_losses
             else None}))
    return {"scaling_factor": scaling, "mse": mse, "ceiling": ceiling}


def add_arguments(parser):
    from .cli import json_arg

    parser.add_argument("--name", required=True, help="dataset name")
    parser.add_argument("--dataset", required=True, type=json_arg, help="the dataset's config")
    parser.add_argument("--model", required=True, type=json_arg, help="the model config section")
    parser.add_argument("--manifest", required=True, type=Path, help="the dataset's manifest.csv")
    parser.add_argument("--out", required=True, type=Path, help="output diffusers folder")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args):
    runtime.set_threads(args.threads)
    if args.model.get("pretrained"):
        raise FairDiffError(f"model.pretrained is '{args.model['pretrained']}': the base stack is "
                            f"loaded from it, there is nothing to build")
    build_base(args.name, args.dataset, args.model, args.manifest, args.out)
