"""Sampling bench: batched generation vs one pipeline call per image, in images per second.

The tiny stack (configs/tiny, random weights: speed does not depend on them) is built and saved
in a temporary folder, then loaded by the product's sample.load_pipeline with config.yaml's
sample settings (scheduler, num_inference_steps, guidance_scale, batch_size) at the default
dataset's resolution. Two ways, both through sample.generate with per-image seeded generators:

- batched (this pipeline): sample.batch_size prompts per pipeline call;
- per image (the authors' generation script): one pipeline call per image.

Rounds of the two ways alternate, so machine load hits both alike; the median rate of each is
reported. Also times batched calls with the VAE decoding the batch at once (sample.py decodes
one image at a time: enable_slicing), and checks that batched and per-image images match up to
floating-point noise. Target: batched >= 4x per image on CPU. Writes results/bench/sampling.csv
and prints the ratio last.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TARGET = 4.0


def main():
    from fairdiffusion import io, models, sample
    from fairdiffusion.config import validate
    from fairdiffusion.data import synthetic

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=None,
                        help="images per batched round (default: sample.batch_size)")
    parser.add_argument("--single-images", type=int, default=16,
                        help="images per per-image round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    config = validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
    settings = config["sample"]
    dataset = next(iter(config["datasets"].values()))
    resolution, batch = int(dataset["resolution"]), int(settings["batch_size"])
    n_batched = args.images or batch
    # The per-image images are the first batched ones, compared pixel by pixel.
    n_single = min(args.single_images, n_batched)
    frame, _ = synthetic.generate(n_batched, resolution, seed=0)
    prompts = list(frame["prompt"])
    seeds = [sample.image_seed(0, str(i), 0) for i in range(n_batched)]

    def run(pipe, n, per_call):
        start = time.perf_counter()
        out = np.concatenate([
            sample.generate(pipe, prompts[i:i + per_call], seeds[i:i + per_call], resolution,
                            settings["num_inference_steps"], settings["guidance_scale"])
            for i in range(0, n, per_call)])
        return n / (time.perf_counter() - start), out

    with tempfile.TemporaryDirectory(prefix="fairdiff-bench-") as tmp:
        models.save_stack(models.build_tiny(config["model"]["tiny_architecture"], resolution),
                          Path(tmp))
        pipe = sample.load_pipeline(tmp, None, settings["scheduler"])
        sample.generate(pipe, prompts[:2], seeds[:2], resolution,
                        settings["num_inference_steps"], settings["guidance_scale"])  # warm-up
        rates = {"batched": [], "per_image": [], "batched_unsliced_vae": []}
        for _ in range(args.rounds):
            rate, batched = run(pipe, n_batched, batch)
            rates["batched"].append(rate)
            rate, single = run(pipe, n_single, 1)
            rates["per_image"].append(rate)
            pipe.vae.disable_slicing()
            rates["batched_unsliced_vae"].append(run(pipe, n_batched, batch)[0])
            pipe.vae.enable_slicing()
    mismatch = int(np.abs(batched[:len(single)].astype(int) - single.astype(int)).max())

    per_image = statistics.median(rates["per_image"])
    frame = pd.DataFrame([
        {"way": way, "images_per_s": statistics.median(r),
         "ratio": statistics.median(r) / per_image,
         "images": n_single if way == "per_image" else n_batched,
         "batch_size": 1 if way == "per_image" else batch, "rounds": args.rounds,
         "scheduler": settings["scheduler"], "steps": settings["num_inference_steps"],
         "guidance_scale": settings["guidance_scale"], "resolution": resolution,
         "threads": args.threads, "max_pixel_difference": mismatch}
        for way, r in rates.items()])
    io.write_csv(ROOT / "results" / "bench" / "sampling.csv", frame)
    for row in frame.itertuples():
        print(f"{row.way}: {row.images_per_s:.1f} images/s ({row.ratio:.2f} x per image)")
    print(f"batched and per-image images differ by at most {mismatch} / 255 per pixel")
    ratio = frame.set_index("way").loc["batched", "ratio"]
    print(f"sampling: batched / per-image images per second = {ratio:.2f} x "
          f"({ratio / TARGET:.2f} x the {TARGET:g} x target), {settings['scheduler']} "
          f"{settings['num_inference_steps']} steps, batch {batch}, {args.threads} thread(s)")


if __name__ == "__main__":
    main()
