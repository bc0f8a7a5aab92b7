"""Latent caching bench: a UNet training step on cached latents vs encoding on the fly.

Both ways run the same step on the same UNet and batch (noise and timesteps, UNet forward and
backward, gradient clipping, AdamW, EMA where the stack keeps one - what train.py does):

- cached (this pipeline): `fairdiff cache-latents` encodes every image and distinct prompt once
  (latents.encode_images and the text encoder, timed here as a one-off cost per image); a step
  only indexes the cached latents and text states;
- on the fly (the authors' train_text_to_image-style loop): every step tokenizes the batch's
  prompts, runs the frozen text encoder and VAE-encodes the batch's images (posterior sample x
  scaling factor), both under no_grad. Image decoding and transforms, which the authors' data
  loader also repeats every step, are not counted: the ratio is a lower bound.

Steps of the two ways alternate, so machine load hits both alike. The headline ratio is
(T + each way's median input time) on the fly / cached, T the median training part over the steps
of both ways (the same computation either way: pooling halves its noise); the ratio of the two
ways' median step times is printed beside it.
Stacks: the default tiny stack (configs/tiny, 32 px, batch 32 = train.batch_size, EMA on) and
the SD 2.1 architecture (configs/sd21, random weights - speed does not depend on them - at 256 px,
batch 1, AdamW without EMA: AdamW state and an EMA copy of 865 M parameters would not fit the
24 GB machine beside the text encoder and VAE). SD 2.1 prompts are tokenized by the tiny
tokenizer padded to 77 tokens (OpenAI's vocabulary cannot be downloaded here; the text encoder's
cost depends on the sequence length only). --quick runs the tiny stack only.
Writes results/bench/latent_caching.csv and prints the headline ratio of each stack last.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "src" / "fairdiffusion" / "configs"
# stack -> (architecture, resolution, batch, EMA, timed steps per way)
STACKS = {
    "tiny": ("tiny", 32, 32, True, 30),
    "sd21": ("sd21", 256, 1, False, 4),
}
POOL = 4  # rows in the data pool, in batches: steps draw random rows from it


def build(architecture: str, resolution: int):
    """VAE, UNet, text encoder, tokenizer and training scheduler with seeded random weights."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = CONFIGS / architecture
    torch.manual_seed(0)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder / "vae"))
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    unet_config = dict(UNet2DConditionModel.load_config(folder / "unet"))
    unet_config["sample_size"] = resolution // factor
    unet = UNet2DConditionModel.from_config(unet_config)
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))
    # configs/sd21 ships no tokenizer (see the module docstring)
    tokenizer = CLIPTokenizer.from_pretrained(CONFIGS / "tiny" / "tokenizer")
    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    return vae.eval(), unet, text_encoder.eval(), tokenizer, scheduler


def measure(stack: str, threads: int) -> list[dict]:
    from diffusers.training_utils import EMAModel

    from fairdiffusion import latents, models
    from fairdiffusion.data import synthetic

    architecture, resolution, batch, use_ema, steps = STACKS[stack]
    vae, unet, text_encoder, tokenizer, scheduler = build(architecture, resolution)
    length = text_encoder.config.max_position_embeddings
    frame, images = synthetic.generate(POOL * batch, resolution, seed=0)
    prompts = list(frame["prompt"])

    def tokens(texts):
        return tokenizer(texts, padding="max_length", truncation=True, max_length=length,
                         return_tensors="pt").input_ids

    # The one-off cost of the cache, as cache-latents computes it.
    start = time.perf_counter()
    cached_latents = latents.encode_images(vae, images, batch_size=64)
    distinct = sorted(set(prompts))
    with torch.no_grad():
        cached_text = torch.cat([text_encoder(tokens(distinct[i:i + 64]))[0]
                                 for i in range(0, len(distinct), 64)])
    cache_s = time.perf_counter() - start
    prompt_index = torch.tensor([distinct.index(p) for p in prompts])

    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=0.01)
    ema = EMAModel(unet.parameters(), decay=0.995, foreach=True) if use_ema else None
    prediction = scheduler.config.prediction_type
    total_t = scheduler.config.num_train_timesteps
    gen = torch.Generator().manual_seed(0)

    def train_step(x0, cond):
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, total_t, (batch,), generator=gen)
        noisy = scheduler.add_noise(x0, noise, t)
        target = noise if prediction == "epsilon" else scheduler.get_velocity(x0, noise, t)
        pred = unet(noisy, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target.float(),
                                            reduction="none").mean(dim=(1, 2, 3)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(unet.parameters())

    def cached_inputs(idx):
        return cached_latents[idx], cached_text[prompt_index[idx]]

    @torch.no_grad()
    def encoded_inputs(idx):
        pixels = models.to_tensor(images[idx.numpy()])
        x0 = vae.encode(pixels).latent_dist.sample(generator=gen) * vae.config.scaling_factor
        return x0, text_encoder(tokens([prompts[i] for i in idx.tolist()]))[0]

    ways = {"cached": cached_inputs, "on_the_fly": encoded_inputs}
    inputs_s = {way: [] for way in ways}
    train_s = {way: [] for way in ways}
    for _ in range(steps + 1):
        for way, get_inputs in ways.items():
            idx = torch.randint(0, len(images), (batch,), generator=gen)
            begin = time.perf_counter()
            x0, cond = get_inputs(idx)
            middle = time.perf_counter()
            train_step(x0, cond)
            inputs_s[way].append(middle - begin)
            train_s[way].append(time.perf_counter() - middle)
    # Step 0 of each way is a warm-up. The training part is the same computation both ways, so
    # its median over the steps of both ways is the least noisy estimate of it.
    train = statistics.median(train_s["cached"][1:] + train_s["on_the_fly"][1:])
    step_s = {way: statistics.median(a + b for a, b in zip(inputs_s[way][1:], train_s[way][1:]))
              for way in ways}
    inputs = {way: statistics.median(inputs_s[way][1:]) for way in ways}
    return [{"stack": stack, "way": way, "resolution": resolution, "batch": batch,
             "ema": use_ema, "threads": threads, "steps": steps, "step_s": step_s[way],
             "inputs_s": inputs[way], "train_s": statistics.median(train_s[way][1:]),
             "ratio_direct": step_s[way] / step_s["cached"],
             "ratio": (train + inputs[way]) / (train + inputs["cached"]),
             "cache_s_per_image": cache_s / len(images)} for way in ways]


def main():
    from fairdiffusion import io

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the tiny stack only")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for stack in ["tiny"] if args.quick else list(STACKS):
        rows += measure(stack, args.threads)
        frame = pd.DataFrame(rows)
        io.write_csv(ROOT / "results" / "bench" / "latent_caching.csv", frame)
    frame = frame.set_index(["stack", "way"])
    lines = []
    for stack in frame.index.unique("stack"):
        cached, fly = frame.loc[(stack, "cached")], frame.loc[(stack, "on_the_fly")]
        print(f"{stack}: batch {cached.batch} at {cached.resolution} px, {cached.threads} "
              f"thread(s), {cached.steps} steps each way: cached step {cached.step_s:.3g} s, "
              f"on the fly {fly.step_s:.3g} s (ratio of medians {fly.ratio_direct:.2f} x); "
              f"encoding {fly.inputs_s:.3g} s per step on the fly; training part "
              f"{cached.train_s:.3g} s (cached) / {fly.train_s:.3g} s (on the fly); the one-off "
              f"cache costs {cached.cache_s_per_image:.3g} s per image")
        lines.append(f"latent caching, {stack}: on-the-fly / cached step time = {fly.ratio:.2f} x "
                     f"(pooled training part + each way's inputs)")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
