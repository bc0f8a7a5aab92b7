"""`fairdiff train`: fine-tune the UNet on cached latents with one arm's loss weighting.

Runs as a plain command or under `accelerate launch` (multi-GPU). Per optimiser step: draw a
batch of cached latents and text states (prompt dropout -> the empty prompt's states), noise and
timesteps; predict the noise (or v, when the scheduler's prediction_type says so); per-sample loss
l_i = MSE averaged over C, H, W; loss = mean_i(w_i l_i) with w from the method hook
(method.make_weighting); then weighting.observe(gathered unweighted losses,
groups, timesteps, step). AdamW, constant LR after a linear warm-up, gradient clipping and
accumulation, EMA of the weights (diffusers EMAModel), mixed precision on GPU only.

Seed pairing: data order, noise, timesteps, prompt dropout and flips are drawn from generators
keyed by (seed, stream, micro-batch index, rank) - the same in every arm for a given seed, and
independent of the method's own randomness (which method.py keys separately). Because every draw
is a function of the step, a resumed run draws exactly what the uninterrupted run would have.

Checkpoints (results/checkpoints/{dataset}/{method}/seed{seed}/checkpoint-NNNNNNN/, not a declared
output, so a failed job's successor resumes): UNet, optimizer, EMA and method state as
safetensors plus JSON for their plain values, LR-schedule state, step, elapsed time and the log
rows so far - no pickle. A run restarted with the same command resumes from the latest one; a
checkpoint written with different training-relevant settings is refused (a hash is stored).
max_steps, checkpoint_every and log_every are not part of the hash: the LR is constant after
warm-up, so a longer run continues a shorter one exactly.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from . import io, latents, models, runtime
from .errors import FairDiffError

log = logging.getLogger(__name__)

# Settings that do not change what is computed (see the module docstring).
UNHASHED = ("max_steps", "checkpoint_every", "log_every")
# Independent random streams of the training loop (method.py has its own).
DATA_STREAM, STEP_STREAM = 1, 2
KEEP_CHECKPOINTS = 2


def generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from a tuple of integers (numpy SeedSequence hashing)."""
    seed = np.random.SeedSequence([int(k) for k in key]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(seed))


class BatchOrder:
    """Row indices of global batch q: positions [qB, (q+1)B) of the concatenation of per-epoch
    permutations, each permutation seeded by (seed, epoch). A pure function of q."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {e: p for e, p in self._perms.items() if e >= epoch - 1}
            self._perms[epoch] = torch.randperm(self.n, generator=generator(
                self.seed, DATA_STREAM, epoch))
        return self._perms[epoch]

    def __call__(self, q: int) -> torch.Tensor:
        pos = torch.arange(q * self.batch_size, (q + 1) * self.batch_size)
        return torch.stack([self._perm(int(p) // self.n)[int(p) % self.n] for p in pos])


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted names of the settings that differ between two nested dicts."""
    keys = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys += changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.append(f"{prefix}{key}")
    return keys


def file_hash(path: Path) -> str:
    return io.sha256_file(path)[:16]


# -- checkpoints: tensors in safetensors, plain values in JSON ----------------------------------


def _split_state(state: dict) -> tuple[dict, dict]:
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()
               if isinstance(v, torch.Tensor)}
    plain = {k: v for k, v in state.items() if not isinstance(v, torch.Tensor)}
    return tensors, plain


def save_parts(folder: Path, name: str, tensors: dict, plain: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(plain, sort_keys=True))


def load_parts(folder: Path, name: str) -> tuple[dict, dict]:
    from safetensors.torch import load_file

    return (load_file(str(folder / f"{name}.safetensors")),
            json.loads((folder / f"{name}.json").read_text()))


def optimizer_parts(optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_state(tensors: dict, plain: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    return {"state": state, "param_groups": plain["param_groups"]}


def ema_parts(ema) -> tuple[dict, dict]:
    sd = ema.state_dict()
    tensors = {f"shadow.{i:05d}": p.detach().cpu().contiguous()
               for i, p in enumerate(sd.pop("shadow_params"))}
    return tensors, sd


def ema_state(tensors: dict, plain: dict) -> dict:
    return {**plain, "shadow_params": [tensors[k] for k in sorted(tensors)]}


def latest_checkpoint(folder: Path) -> Path | None:
    done = sorted(p for p in folder.glob("checkpoint-*") if (p / "state.json").exists())
    return done[-1] if done else None


# -- the run ---------------------------------------------------------------------------------------


def train(latents_path: Path, base: str, dataset: dict, settings: dict, method: str,
          fair_bayes: dict, seed: int, out: Path, checkpoints: Path) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import broadcast, gather
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    from .method import make_weighting

    tensors, meta = latents.read(latents_path)
    if meta.get("split", "train") != "train":
        raise FairDiffError(f"{latents_path}: a cache of the '{meta['split']}' split; training "
                            f"reads the train split's")
    # Order matters: the columns of `groups` follow the attributes' order.
    if list(meta["attributes"].items()) != list(dataset["attributes"].items()):
        raise FairDiffError(f"{latents_path}: cached attributes {meta['attributes']} differ from "
                            f"the dataset config's {dataset['attributes']}; re-run cache-latents")
    if settings["random_flip"] and "latents_flipped" not in tensors:
        raise FairDiffError(f"{latents_path}: train.random_flip is on but the cache has no "
                            f"flipped latents; re-run cache-latents with --random-flip")

    mixed = settings["mixed_precision"] if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=mixed,
                              gradient_accumulation_steps=settings["gradient_accumulation_steps"])
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    accum, batch_size = settings["gradient_accumulation_steps"], settings["batch_size"]

    run_settings = {
        "train": {k: v for k, v in settings.items() if k not in UNHASHED},
        "method": method, "fair_bayes": fair_bayes, "seed": seed, "base": base,
        "latents": file_hash(latents_path), "num_processes": world,
        "attributes": dataset["attributes"],
    }
    config_hash = settings_hash(run_settings)

    unet = models.load(base, "unet")
    scheduler = models.load(base, "scheduler")
    prediction = scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise FairDiffError(f"model '{base}': scheduler prediction_type '{prediction}' is not "
                            f"supported (epsilon, v_prediction)")
    if settings["gradient_checkpointing"]:
        unet.enable_gradient_checkpointing()
    unet.train()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=settings["learning_rate"],
                                  weight_decay=settings["weight_decay"])
    # Linear warm-up over lr_warmup_steps, then constant; the first step already gets lr / warmup.
    warmup = max(1, settings["lr_warmup_steps"])
    lr_schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: min(1.0, (i + 1) / warmup))
    ema = None
    if settings["use_ema"]:
        # foreach: one fused update instead of one kernel per tensor (2.8x faster here).
        ema = EMAModel(unet.parameters(), decay=settings["ema_decay"], foreach=True,
                       model_cls=type(unet), model_config=unet.config)
    weighting = make_weighting(
        method, dataset["attributes"], fair_bayes, seed, rank,
        broadcast=(lambda t: broadcast(t.to(device)).cpu()) if world > 1 else None,
        data_groups=tensors["groups"])

    # window: losses of the steps since the last train_log row.
    step, elapsed, log_rows, trajectory, window = 0, 0.0, [], [], []
    resume = latest_checkpoint(checkpoints)
    if resume is not None:
        state = json.loads((resume / "state.json").read_text())
        if state["config_hash"] != config_hash:
            raise FairDiffError(f"{resume}: checkpoint written with different training settings "
                                f"({', '.join(changed_keys(state['settings'], run_settings))}); "
                                f"delete {checkpoints} to start over")
        if state["step"] > settings["max_steps"]:
            raise FairDiffError(f"{resume}: checkpoint at step {state['step']} is past "
                                f"train.max_steps {settings['max_steps']}; delete {checkpoints} "
                                f"to start over")
        from safetensors.torch import load_file

        unet.load_state_dict(load_file(str(resume / "unet.safetensors")))
        optimizer.load_state_dict(optimizer_state(*load_parts(resume, "optimizer")))
        lr_schedule.load_state_dict(json.loads((resume / "lr_schedule.json").read_text()))
        if ema is not None:
            ema.load_state_dict(ema_state(*load_parts(resume, "ema")))
        method_tensors, method_plain = load_parts(resume, "method")
        weighting.load_state_dict({**method_tensors, **method_plain})
        step, elapsed = state["step"], state["elapsed"]
        log_rows, trajectory = state["log"], state["trajectory"]
        window = state.get("window", [])           # absent in checkpoints of earlier versions
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        log.info("resuming from %s (step %d)", resume, step)

    unet, optimizer = accelerator.prepare(unet, optimizer)
    if ema is not None:
        ema.to(device)

    lat = tensors["latents"].to(device)
    lat_flip = tensors["latents_flipped"].to(device) if settings["random_flip"] else None
    text, empty = tensors["text"].to(device), tensors["empty_text"].to(device)
    prompt_index, groups = tensors["prompt_index"], tensors["groups"]
    # the balanced arm draws its own batches (method.py); every other arm the shuffled order
    order = weighting.batch_order(batch_size) or BatchOrder(len(lat), batch_size, seed)
    timesteps_total = scheduler.config.num_train_timesteps
    dropout, max_steps = settings["prompt_dropout"], settings["max_steps"]

    def save_checkpoint():
        if not accelerator.is_main_process:
            return
        with io.atomic_dir(checkpoints / f"checkpoint-{step:07d}") as tmp:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in
                       accelerator.unwrap_model(unet).state_dict().items()},
                      str(tmp / "unet.safetensors"))
            save_parts(tmp, "optimizer", *optimizer_parts(optimizer))
            (tmp / "lr_schedule.json").write_text(json.dumps(lr_schedule.state_dict()))
            if ema is not None:
                save_parts(tmp, "ema", *ema_parts(ema))
            save_parts(tmp, "method", *_split_state(weighting.state_dict()))
            (tmp / "state.json").write_text(json.dumps(
                {"step": step, "elapsed": elapsed + time.time() - start,
                 "config_hash": config_hash, "settings": run_settings, "log": log_rows,
                 "window": window, "trajectory": trajectory,
                 # fp16's loss scale (accelerate's GradScaler; None without fp16)
                 "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None},
                default=float))
        for old in sorted(checkpoints.glob("checkpoint-*"))[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(old)

    start = time.time()
    bar = tqdm(total=max_steps, initial=step, desc=f"train {method}", mininterval=5,
               disable=not accelerator.is_main_process)
    while step < max_steps:
        step_losses, step_groups, step_t = [], [], []
        for k in range(accum):
            q = (step * accum + k) * world + rank   # global micro-batch index of this process
            idx = order(q)
            g = generator(seed, STEP_STREAM, q)
            flip = torch.rand(batch_size, generator=g) < 0.5
            drop = torch.rand(batch_size, generator=g) < dropout
            t = torch.randint(0, timesteps_total, (batch_size,), generator=g)
            x0 = lat[idx]
            if lat_flip is not None:
                x0 = torch.where(flip.to(device)[:, None, None, None], lat_flip[idx], x0)
            noise = torch.randn(x0.shape, generator=g).to(device)
            cond = torch.where(drop.to(device)[:, None, None], empty, text[prompt_index[idx]])
            t_dev = t.to(device)
            noisy = scheduler.add_noise(x0, noise, t_dev)
            target = noise if prediction == "epsilon" else scheduler.get_velocity(x0, noise, t_dev)
            with accelerator.accumulate(unet):
                pred = unet(noisy, t_dev, encoder_hidden_states=cond).sample
                per_sample = torch.nn.functional.mse_loss(
                    pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
                w = weighting.weights(groups[idx]).to(device, per_sample.dtype)
                loss = (w * per_sample).mean()
                if not torch.isfinite(loss):
                    raise FairDiffError(f"training {method} seed {seed}: non-finite loss at step "
                                        f"{step}; nothing saved as final (lower "
                                        f"train.learning_rate?)")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), settings["max_grad_norm"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_losses.append(per_sample.detach())
            step_groups.append(groups[idx].to(device))
            step_t.append(t_dev)
        lr = lr_schedule.get_last_lr()[0]
        lr_schedule.step()
        if ema is not None:
            ema.step(unet.parameters())
        losses = gather(torch.cat(step_losses)).cpu()
        weighting.observe(losses, gather(torch.cat(step_groups)).cpu(),
                          gather(torch.cat(step_t)).cpu(), step)
        trajectory += weighting.pop_trajectory()
        window.append(float(losses.mean()))
        step += 1
        bar.update(1)
        if step % settings["log_every"] == 0 or step == max_steps:
            log_rows.append({"step": step, "loss": float(np.mean(window)),
                             "lr": lr,
                             "time": round(elapsed + time.time() - start, 3)})
            window = []
            bar.set_postfix(loss=f"{log_rows[-1]['loss']:.4f}")
        if step % settings["checkpoint_every"] == 0 or step == max_steps:
            save_checkpoint()
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        import pandas as pd

        final = accelerator.unwrap_model(unet)
        with io.atomic_dir(out) as tmp:
            final.save_pretrained(tmp / "unet", safe_serialization=True)
            if ema is not None:
                ema_unet = copy.deepcopy(final)
                ema.copy_to(ema_unet.parameters())
                ema_unet.save_pretrained(tmp / "unet_ema", safe_serialization=True)
            pd.DataFrame(log_rows, columns=["step", "loss", "lr", "time"]).to_csv(
                tmp / "train_log.csv", index=False)
            pd.DataFrame(trajectory, columns=weighting.columns).to_csv(
                tmp / "bo_trajectory.csv", index=False)
            io.write_json(tmp / "run_info.json", io.run_info(
                {**run_settings, "train": settings, "config_hash": config_hash,
                 "steps": step, "seconds": round(elapsed + time.time() - start, 1),
                 "resumed_from": str(resume) if resume else None}))
        log.info("trained %s seed %d: %d steps, final loss %.4f", method, seed, step,
                 log_rows[-1]["loss"] if log_rows else math.nan)
    return out


def add_arguments(parser):
    from .cli import json_arg

    parser.add_argument("--latents", required=True, type=Path, help="train-split latent cache")
    parser.add_argument("--base", required=True, help="diffusers model id or folder")
    parser.add_argument("--dataset", required=True, type=json_arg, help="the dataset's config")
    parser.add_argument("--train", required=True, type=json_arg, help="the train config section")
    parser.add_argument("--method", required=True, help="the arm (method.py)")
    parser.add_argument("--fair-bayes", default="{}", type=json_arg,
                        help="the fair_bayes config section")
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--checkpoints", required=True, type=Path,
                        help="resumable checkpoints (kept outside the declared outputs)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")


def run(args):
    from .config import section_defaults

    runtime.set_threads(args.threads)
    train(args.latents, args.base, args.dataset, args.train, args.method,
          section_defaults(args.fair_bayes, "fair_bayes"), args.seed, args.out, args.checkpoints)
