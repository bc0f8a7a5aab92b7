"""UNet training throughput and model FLOP utilisation (MFU) on one GPU, SD 2.1 architecture.

Training steps of the SD 2.1 UNet (configs/sd21, random weights: speed does not depend on them)
at 512 px (64x64 latents), bf16 autocast over fp32 weights (what train.py gets from accelerate's
mixed_precision: bf16), on random cached latents and text states, with train.py's step: noise,
timesteps, v-prediction target, forward, backward, gradient clipping, AdamW, EMA (diffusers'
EMAModel with foreach, as train.py; no TF32, as train.py). Measures, in one call of under
10 minutes:

1. batch scan: the baseline step at each batch of --batches, until one runs out of memory;
   images/s, peak memory, MFU = UNet forward+backward FLOPs (counted on one step with
   torch.utils.flop_counter.FlopCounterMode) x images/s / the bf16 peak (--peak-tflops, 790:
   the performance issue's figure for an H200's 8192^3 bf16 matmul, not measured by this
   script); the scan stops at --budget-s too;
2. variants at the best batch of the scan, each changing one thing against the baseline (eager,
   NCHW, SDPA attention = diffusers' AttnProcessor2_0, AdamW foreach, EMA foreach):
   classic attention (AttnProcessor: what SDPA buys), fused AdamW, EMA per-tensor loop (what
   foreach buys), channels_last, torch.compile, and compile + fused AdamW + channels_last
   together; and on-the-fly encoding (VAE encode of 512 px images + text encoder each step, both
   frozen in bf16, the authors' way) for the caching ratio. A variant that runs out of memory is
   retried at half the batch; variants are skipped once --budget-s is spent, and a compile
   variant also when less than COMPILE_RESERVE_S of it is left (compiling takes minutes).

Prints a table of images/s, peak memory, MFU and the speed-up of each variant over the baseline;
writes unet_mfu.csv (unet_mfu_dry_run.csv for --dry-run) to $OUT when that variable is set, else
to results/bench/. --dry-run checks the code path on CPU with the tiny stack (32 px, batch 2,
2 steps, no torch.compile variants: Inductor needs minutes on a CPU; that path was checked once).
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))  # fairdiffusion.io without installing the package
CONFIGS = ROOT / "src" / "fairdiffusion" / "configs"


@dataclass(frozen=True)
class Variant:
    name: str
    attention: str = "sdpa"        # sdpa (AttnProcessor2_0) | classic (AttnProcessor)
    fused_adamw: bool = False
    ema_foreach: bool = True
    channels_last: bool = False
    compile: bool = False
    on_the_fly: bool = False


BASELINE = Variant("baseline")
VARIANTS = [
    replace(BASELINE, name="classic attention", attention="classic"),
    replace(BASELINE, name="fused AdamW", fused_adamw=True),
    replace(BASELINE, name="EMA per-tensor loop", ema_foreach=False),
    replace(BASELINE, name="channels_last", channels_last=True),
    replace(BASELINE, name="on-the-fly encoding", on_the_fly=True),
    replace(BASELINE, name="torch.compile", compile=True),
    replace(BASELINE, name="compile + fused AdamW + channels_last", compile=True,
            fused_adamw=True, channels_last=True),
]
# Seconds of --budget-s a compile variant needs left to start: Inductor compiles the SD 2.1 UNet's
# forward and backward for minutes before the first timed step.
COMPILE_RESERVE_S = 150.0


class Setup:
    """The stack's configs, device and precision."""

    def __init__(self, architecture: str, resolution: int, device: str):
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextConfig

        folder = CONFIGS / architecture
        self.device = torch.device(device)
        self.resolution = resolution
        self.vae_config = AutoencoderKL.load_config(folder / "vae")
        factor = 2 ** (len(self.vae_config["block_out_channels"]) - 1)
        self.latent = resolution // factor
        self.unet_config = dict(UNet2DConditionModel.load_config(folder / "unet"))
        self.unet_config["sample_size"] = self.latent
        self.text_config = CLIPTextConfig.from_pretrained(folder / "text_encoder")
        self.scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
        self.channels = self.unet_config["in_channels"]

    def autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def reset_peak(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def peak_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS, KiB

    def free(self):
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def make_step(setup: Setup, variant: Variant, batch: int):
    """A closure running one training step, and the UNet (for FLOP counting)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0
    from diffusers.training_utils import EMAModel
    from transformers import CLIPTextModel

    device = setup.device
    torch.manual_seed(0)
    with device:  # initialise on the device: 865 M parameters are slow to initialise on a CPU
        unet = UNet2DConditionModel.from_config(setup.unet_config)
    unet.set_attn_processor(AttnProcessor2_0() if variant.attention == "sdpa" else AttnProcessor())
    memory_format = torch.channels_last if variant.channels_last else torch.contiguous_format
    unet = unet.to(memory_format=memory_format).train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=0.01,
                                  fused=variant.fused_adamw or None)
    ema = EMAModel(unet.parameters(), decay=0.9999, foreach=variant.ema_foreach)
    ema.to(device)
    model = torch.compile(unet) if variant.compile else unet
    scheduler = setup.scheduler
    prediction = scheduler.config.prediction_type
    shape = (batch, setup.channels, setup.latent, setup.latent)
    length = setup.text_config.max_position_embeddings
    gen = torch.Generator(device).manual_seed(0)
    latents = torch.randn(shape, generator=gen, device=device)
    text = torch.randn(batch, length, setup.text_config.hidden_size, generator=gen, device=device)

    if not variant.on_the_fly:
        encode = None
    else:
        # frozen encoders in the training precision, as the authors' diffusers script casts them
        with device:
            vae = AutoencoderKL.from_config(setup.vae_config).to(torch.bfloat16).eval()
            text_encoder = CLIPTextModel(setup.text_config).to(torch.bfloat16).eval()
        vae = vae.to(memory_format=memory_format)
        pixels = torch.rand(batch, 3, setup.resolution, setup.resolution, generator=gen,
                            device=device).mul(2).sub(1).to(torch.bfloat16)
        pixels = pixels.to(memory_format=memory_format)
        ids = torch.randint(0, setup.text_config.vocab_size, (batch, length), generator=gen,
                            device=device)

        @torch.no_grad()
        def encode():
            x0 = vae.encode(pixels).latent_dist.sample(generator=gen).float()
            return x0 * vae.config.scaling_factor, text_encoder(ids)[0].float()

    def step():
        x0, cond = encode() if encode is not None else (latents, text)
        x0 = x0.contiguous(memory_format=memory_format)
        noise = torch.randn(x0.shape, generator=gen, device=device).contiguous(
            memory_format=memory_format)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch,), generator=gen,
                          device=device)
        noisy = scheduler.add_noise(x0, noise, t)
        target = noise if prediction == "epsilon" else scheduler.get_velocity(x0, noise, t)
        with setup.autocast():
            pred = model(noisy, t, encoder_hidden_states=cond).sample
        loss = torch.nn.functional.mse_loss(pred.float(), target.float(),
                                            reduction="none").mean(dim=(1, 2, 3)).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.step(unet.parameters())

    return step, unet


def unet_flops_per_image(setup: Setup, batch: int) -> float:
    """Forward + backward FLOPs of the UNet per image, counted on one eager step."""
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    with setup.device:
        unet = UNet2DConditionModel.from_config(setup.unet_config).train()
        x = torch.randn(batch, setup.channels, setup.latent, setup.latent)
        cond = torch.randn(batch, setup.text_config.max_position_embeddings,
                           setup.text_config.hidden_size)
        t = torch.randint(0, 1000, (batch,))
    with FlopCounterMode(display=False) as counter:
        with setup.autocast():
            pred = unet(x, t, encoder_hidden_states=cond).sample
        pred.float().square().mean().backward()
    flops = counter.get_total_flops() / batch
    del unet, x, cond, pred
    setup.free()
    return flops


def time_variant(setup: Setup, variant: Variant, batch: int, warmup: int, steps: int) -> dict:
    """Images/s and peak memory of one variant at one batch (raises on out-of-memory)."""
    setup.free()
    setup.reset_peak()
    step, _ = make_step(setup, variant, batch)
    start = time.perf_counter()
    for _ in range(warmup):   # compilation, autotuning, allocator warm-up
        step()
    setup.sync()
    warm_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    setup.sync()
    seconds = (time.perf_counter() - start) / steps
    return {"variant": variant.name, "batch": batch, "step_ms": seconds * 1e3,
            "images_per_s": batch / seconds, "peak_mem_gb": setup.peak_gb(),
            "warmup_s": warm_s}


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def main():
    import pandas as pd

    from fairdiffusion import io

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="CPU, tiny stack at 32 px, batch 2, 2 steps: checks the code path")
    parser.add_argument("--batches", default="8,16,24,32,48,64,96",
                        help="comma-separated batch sizes of the scan, increasing")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per measurement")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument("--peak-tflops", type=float, default=790.0,
                        help="bf16 peak TFLOP/s of the device (790: the issue's H200 figure)")
    parser.add_argument("--budget-s", type=float, default=360.0,
                        help="start no new measurement after this many seconds")
    args = parser.parse_args()

    began = time.perf_counter()
    if args.dry_run:
        torch.set_num_threads(1)
        setup, batches, args.warmup, args.steps = Setup("tiny", 32, "cpu"), [2], 1, 2
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run with --dry-run to check the code path on CPU")
        setup, batches = Setup("sd21", 512, "cuda"), [int(b) for b in args.batches.split(",")]
    device_name = torch.cuda.get_device_name() if setup.device.type == "cuda" else "cpu"
    print(f"device {device_name}; UNet at {setup.latent}x{setup.latent} latents, "
          f"torch {torch.__version__}", flush=True)

    flops = unet_flops_per_image(setup, batches[0])
    print(f"UNet forward+backward: {flops / 1e12:.3f} TFLOP per image", flush=True)

    rows = []

    def record(row: dict, stage: str):
        row.update(stage=stage, mfu=flops * row["images_per_s"] / (args.peak_tflops * 1e12))
        rows.append(row)
        print(f"{stage:9s} {row['variant']:48s} batch {row['batch']:4d}: "
              f"{row['images_per_s']:8.1f} images/s, {row['peak_mem_gb']:6.1f} GB, "
              f"MFU {row['mfu']:.1%} (warm-up {row['warmup_s']:.0f} s)", flush=True)

    for batch in batches:
        if rows and time.perf_counter() - began > args.budget_s:
            print(f"scan      stops before batch {batch}: --budget-s {args.budget_s:g} spent",
                  flush=True)
            break
        try:
            record(time_variant(setup, BASELINE, batch, args.warmup, args.steps), "scan")
        except RuntimeError as err:
            if not is_oom(err):
                raise
            print(f"scan      baseline batch {batch}: out of memory; scan stops", flush=True)
            break
    if not rows:
        sys.exit(f"the baseline does not fit at batch {batches[0]}")
    best = max(rows, key=lambda r: r["images_per_s"])
    base_rate, batch = best["images_per_s"], best["batch"]

    for variant in VARIANTS:
        if args.dry_run and variant.compile:
            # Inductor compiles for minutes on a CPU; the compile path was checked once there.
            print(f"skipped   {variant.name}: dry run", flush=True)
            continue
        left = args.budget_s - (time.perf_counter() - began)
        if left <= 0 or (variant.compile and left < COMPILE_RESERVE_S):
            print(f"skipped   {variant.name}: {max(left, 0):.0f} s of --budget-s "
                  f"{args.budget_s:g} left", flush=True)
            continue
        size = batch
        while size >= 1:
            try:
                record(time_variant(setup, variant, size, args.warmup, args.steps), "variant")
                break
            except RuntimeError as err:
                if not is_oom(err):
                    raise
                print(f"variant   {variant.name} batch {size}: out of memory, halving", flush=True)
                size //= 2

    table = pd.DataFrame(rows)
    # per-image speed-up against the baseline at the scan's best batch
    table["speedup"] = table["images_per_s"] / base_rate
    table["device"] = device_name
    table["flops_per_image"] = flops
    table["peak_tflops"] = args.peak_tflops
    out = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "results" / "bench"
    io.write_csv(out / ("unet_mfu_dry_run.csv" if args.dry_run else "unet_mfu.csv"), table)
    print()
    print(table[["stage", "variant", "batch", "images_per_s", "step_ms", "peak_mem_gb", "mfu",
                 "speedup"]].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    fly = table[table["variant"] == "on-the-fly encoding"]
    if len(fly):
        print(f"caching: on-the-fly encoding runs at {fly['speedup'].iloc[0]:.2f} x the cached "
              f"baseline's images/s (cached / on the fly = {1 / fly['speedup'].iloc[0]:.2f} x)")
    fastest = table.loc[table["images_per_s"].idxmax()]
    print(f"total {time.perf_counter() - began:.0f} s; best: {fastest['variant']} at batch "
          f"{fastest['batch']}: {fastest['images_per_s']:.1f} images/s, MFU {fastest['mfu']:.1%} "
          f"of {args.peak_tflops:g} TFLOP/s")


if __name__ == "__main__":
    main()
