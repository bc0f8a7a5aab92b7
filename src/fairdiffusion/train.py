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
max_steps, checkpoint_every, log_every and keep_checkpoints are not part of the hash: the LR is
constant after warm-up, so a longer run continues a shorter one exactly. train.allow_tf32 sets
torch.backends.cuda.matmul.allow_tf32 on a GPU (convolutions keep PyTorch's cuDNN default).

Watching a run: with train.validation.every set, grids of fixed prompts and a TensorBoard event
file go into the run folder while it trains (validation.py); they never change the weights.
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
UNHASHED = ("max_steps", "checkpoint_every", "log_every", "keep_checkpoints", "validation")
# Independent random streams of the training loop (method.py has its own).
DATA_STREAM, STEP_STREAM = 1, 2


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


class Checkpoint:
    """The resumable state of one run as checkpoint-NNNNNNN/ folders under `folder`, the newest
    `keep` of them kept: the UNet, optimizer, EMA and method state as safetensors plus JSON for
    their plain values, the LR-schedule state, and state.json (step, elapsed time, log rows so far,
    fp16 loss scale, the settings and their hash). No pickle."""

    def __init__(self, folder: Path, keep: int, run_settings: dict, *, unet, optimizer,
                 lr_schedule, ema, weighting, scaler):
        self.folder, self.keep, self.run_settings = folder, keep, run_settings
        self.config_hash = settings_hash(run_settings)
        self.unet, self.optimizer, self.lr_schedule = unet, optimizer, lr_schedule
        self.ema, self.weighting, self.scaler = ema, weighting, scaler
        self.loaded_from: Path | None = None

    def latest(self) -> Path | None:
        done = sorted(p for p in self.folder.glob("checkpoint-*") if (p / "state.json").exists())
        return done[-1] if done else None

    def save(self, progress: dict) -> None:
        """Write checkpoint-{progress['step']}, then drop all but the newest `keep`."""
        from safetensors.torch import save_file

        with io.atomic_dir(self.folder / f"checkpoint-{progress['step']:07d}") as tmp:
            save_file({k: v.contiguous() for k, v in self.unet.state_dict().items()},
                      str(tmp / "unet.safetensors"))
            save_parts(tmp, "optimizer", *optimizer_parts(self.optimizer))
            (tmp / "lr_schedule.json").write_text(json.dumps(self.lr_schedule.state_dict()))
            if self.ema is not None:
                save_parts(tmp, "ema", *ema_parts(self.ema))
            save_parts(tmp, "method", *_split_state(self.weighting.state_dict()))
            (tmp / "state.json").write_text(json.dumps(
                {**progress, "config_hash": self.config_hash, "settings": self.run_settings,
                 # fp16's loss scale (accelerate's GradScaler; None without fp16)
                 "scaler": self.scaler.state_dict() if self.scaler else None},
                default=float))
        for old in sorted(self.folder.glob("checkpoint-*"))[:-self.keep]:
            shutil.rmtree(old)

    def load_latest(self, max_steps: int) -> dict | None:
        """Restore the newest checkpoint into the run's objects and return its progress (step,
        elapsed, log, window, trajectory); None when there is none. A checkpoint of other
        settings, or past max_steps, is refused."""
        from safetensors.torch import load_file

        resume = self.latest()
        if resume is None:
            return None
        state = json.loads((resume / "state.json").read_text())
        if state["config_hash"] != self.config_hash:
            changed = ", ".join(changed_keys(state["settings"], self.run_settings))
            raise FairDiffError(f"{resume}: checkpoint written with different training settings "
                                f"({changed}); delete {self.folder} to start over")
        if state["step"] > max_steps:
            raise FairDiffError(f"{resume}: checkpoint at step {state['step']} is past "
                                f"train.max_steps {max_steps}; delete {self.folder} to start over")
        self.unet.load_state_dict(load_file(str(resume / "unet.safetensors")))
        self.optimizer.load_state_dict(optimizer_state(*load_parts(resume, "optimizer")))
        self.lr_schedule.load_state_dict(json.loads((resume / "lr_schedule.json").read_text()))
        if self.ema is not None:
            self.ema.load_state_dict(ema_state(*load_parts(resume, "ema")))
        method_tensors, method_plain = load_parts(resume, "method")
        self.weighting.load_state_dict({**method_tensors, **method_plain})
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.loaded_from = resume
        log.info("resuming from %s (step %d)", resume, state["step"])
        return {"step": state["step"], "elapsed": state["elapsed"], "log": state["log"],
                "trajectory": state["trajectory"],
                "window": state.get("window", [])}   # absent in checkpoints of earlier versions


# -- the run ---------------------------------------------------------------------------------------


def check_cache(path: Path, tensors: dict, meta: dict, dataset: dict, settings: dict) -> None:
    """Refuse a latent cache this run cannot train on, naming the file and the fix."""
    if meta.get("split", "train") != "train":
        raise FairDiffError(f"{path}: a cache of the '{meta['split']}' split; training "
                            f"reads the train split's")
    # Order matters: the columns of `groups` follow the attributes' order.
    if list(meta["attributes"].items()) != list(dataset["attributes"].items()):
        raise FairDiffError(f"{path}: cached attributes {meta['attributes']} differ from "
                            f"the dataset config's {dataset['attributes']}; re-run cache-latents")
    if settings["random_flip"] and "latents_flipped" not in tensors:
        raise FairDiffError(f"{path}: train.random_flip is on but the cache has no "
                            f"flipped latents; re-run cache-latents with --random-flip")


def load_unet(base: str, gradient_checkpointing: bool):
    """The base model's UNet (in training mode), its noise scheduler and prediction type."""
    unet = models.load(base, "unet")
    scheduler = models.load(base, "scheduler")
    prediction = scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise FairDiffError(f"model '{base}': scheduler prediction_type '{prediction}' is not "
                            f"supported (epsilon, v_prediction)")
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    return unet, scheduler, prediction


class Batches:
    """Micro-batch q of the run (rows, flips, prompt dropout, timesteps, noise) as a pure function
    of (seed, q), on `device`."""

    def __init__(self, tensors: dict, order, batch_size: int, prompt_dropout: float,
                 random_flip: bool, num_timesteps: int, seed: int, device):
        self.lat = tensors["latents"].to(device)
        self.lat_flip = tensors["latents_flipped"].to(device) if random_flip else None
        self.text, self.empty = tensors["text"].to(device), tensors["empty_text"].to(device)
        self.prompt_index, self.groups = tensors["prompt_index"], tensors["groups"]
        self.order = order  # q -> row indices: BatchOrder, or the balanced arm's draws
        self.batch_size, self.dropout = batch_size, prompt_dropout
        self.num_timesteps = num_timesteps
        self.seed, self.device = seed, device

    def __call__(self, q: int):
        """(clean latents, text states, timesteps, noise, groups) of micro-batch q."""
        idx, n = self.order(q), self.batch_size
        g = generator(self.seed, STEP_STREAM, q)
        flip = torch.rand(n, generator=g) < 0.5
        drop = torch.rand(n, generator=g) < self.dropout
        t = torch.randint(0, self.num_timesteps, (n,), generator=g)
        x0 = self.lat[idx]
        if self.lat_flip is not None:
            x0 = torch.where(flip.to(self.device)[:, None, None, None], self.lat_flip[idx], x0)
        noise = torch.randn(x0.shape, generator=g).to(self.device)
        cond = torch.where(drop.to(self.device)[:, None, None], self.empty,
                           self.text[self.prompt_index[idx]])
        return x0, cond, t.to(self.device), noise, self.groups[idx]


def per_sample_loss(unet, scheduler, prediction: str, x0, cond, t, noise) -> torch.Tensor:
    """l_i: the MSE of the noise (or v) prediction, averaged over C, H, W."""
    noisy = scheduler.add_noise(x0, noise, t)
    target = noise if prediction == "epsilon" else scheduler.get_velocity(x0, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=cond).sample
    return torch.nn.functional.mse_loss(pred.float(), target.float(),
                                        reduction="none").mean(dim=(1, 2, 3))


def write_outputs(out: Path, unet, ema, log_rows: list, trajectory: list, columns: list,
                  info: dict) -> None:
    """The run folder: unet/ (and unet_ema/), train_log.csv, bo_trajectory.csv, run_info.json,
    and what validation wrote into it while the run trained (validation/, tensorboard/).
    Both CSVs lead with the run's `method` and `seed` columns, so readers need not parse paths."""
    import pandas as pd

    def frame(rows: list, names: list) -> pd.DataFrame:
        data = pd.DataFrame(rows, columns=names)
        data.insert(0, "seed", info["seed"])
        data.insert(0, "method", info["method"])
        return data

    with io.atomic_dir(out) as tmp:
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        if ema is not None:
            ema_unet = copy.deepcopy(unet)
            ema.copy_to(ema_unet.parameters())
            ema_unet.save_pretrained(tmp / "unet_ema", safe_serialization=True)
        frame(log_rows, ["step", "loss", "lr", "time"]).to_csv(tmp / "train_log.csv",
                                                                index=False)
        frame(trajectory, columns).to_csv(tmp / "bo_trajectory.csv", index=False)
        io.write_json(tmp / "run_info.json", io.run_info(info))
        for live in ("validation", "tensorboard"):
            if (out / live).exists():
                shutil.move(out / live, tmp / live)


def make_optimizer(unet, settings: dict):
    """AdamW, its LR schedule and the EMA of the weights (None when train.use_ema is off)."""
    from diffusers.training_utils import EMAModel

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
    return optimizer, lr_schedule, ema


def train(latents_path: Path, base: str, dataset: dict, settings: dict, method: str,
          fair_bayes: dict, seed: int, out: Path, checkpoints: Path) -> Path:
    from accelerate import Accelerator
    from accelerate.utils import broadcast, gather
    from tqdm import tqdm

    from .method import make_weighting

    max_steps, batch_size = settings["max_steps"], settings["batch_size"]
    accum = settings["gradient_accumulation_steps"]
    log_every, checkpoint_every = settings["log_every"], settings["checkpoint_every"]

    tensors, meta = latents.read(latents_path)
    check_cache(latents_path, tensors, meta, dataset, settings)
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = settings["allow_tf32"]
    mixed = settings["mixed_precision"] if torch.cuda.is_available() else "no"
    accelerator = Accelerator(mixed_precision=mixed, gradient_accumulation_steps=accum)
    device, rank, world = accelerator.device, accelerator.process_index, accelerator.num_processes
    run_settings = {
        "train": {k: v for k, v in settings.items() if k not in UNHASHED},
        "method": method, "fair_bayes": fair_bayes, "seed": seed, "base": base,
        "latents": file_hash(latents_path), "num_processes": world,
        "attributes": dataset["attributes"],
    }

    unet, scheduler, prediction = load_unet(base, settings["gradient_checkpointing"])
    optimizer, lr_schedule, ema = make_optimizer(unet, settings)
    weighting = make_weighting(
        method, dataset["attributes"], fair_bayes, seed, rank,
        broadcast=(lambda t: broadcast(t.to(device)).cpu()) if world > 1 else None,
        data_groups=tensors["groups"])
    checkpoint = Checkpoint(checkpoints, settings["keep_checkpoints"], run_settings, unet=unet,
                            optimizer=optimizer, lr_schedule=lr_schedule, ema=ema,
                            weighting=weighting, scaler=accelerator.scaler)
    # window: losses of the steps since the last train_log row.
    progress = checkpoint.load_latest(max_steps) or {
        "step": 0, "elapsed": 0.0, "log": [], "trajectory": [], "window": []}
    step, log_rows, trajectory, window = (progress[k] for k in ("step", "log", "trajectory",
                                                                "window"))

    validation = None
    if settings["validation"]["every"] and accelerator.is_main_process:
        from .validation import Validation

        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed, torch.float32)
        validation = Validation(settings["validation"], base, unet, tensors, meta,
                                dataset["attributes"], dataset["resolution"], out, step, dtype)

    model, optimizer = accelerator.prepare(unet, optimizer)
    if ema is not None:
        ema.to(device)
    # the balanced arm draws its own batches (method.py); every other arm the shuffled order
    order = weighting.batch_order(batch_size) or BatchOrder(len(tensors["latents"]), batch_size,
                                                            seed)
    batches = Batches(tensors, order, batch_size, settings["prompt_dropout"],
                      settings["random_flip"], scheduler.config.num_train_timesteps, seed, device)
    start = time.time()

    def seconds() -> float:
        return progress["elapsed"] + time.time() - start

    bar = tqdm(total=max_steps, initial=step, desc=f"train {method}", mininterval=5,
               disable=not accelerator.is_main_process)
    while step < max_steps:
        step_losses, step_groups, step_t = [], [], []
        for k in range(accum):
            q = (step * accum + k) * world + rank   # global micro-batch index of this process
            x0, cond, t, noise, groups = batches(q)
            with accelerator.accumulate(model):
                per_sample = per_sample_loss(model, scheduler, prediction, x0, cond, t, noise)
                w = weighting.weights(groups).to(device, per_sample.dtype)
                loss = (w * per_sample).mean()
                if not torch.isfinite(loss):
                    raise FairDiffError(f"training {method} seed {seed}: non-finite loss at step "
                                        f"{step}; nothing saved as final (lower "
                                        f"train.learning_rate?)")
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), settings["max_grad_norm"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            step_losses.append(per_sample.detach())
            step_groups.append(groups.to(device))
            step_t.append(t)
        lr = lr_schedule.get_last_lr()[0]
        lr_schedule.step()
        if ema is not None:
            ema.step(model.parameters())
        losses = gather(torch.cat(step_losses)).cpu()
        weighting.observe(losses, gather(torch.cat(step_groups)).cpu(),
                          gather(torch.cat(step_t)).cpu(), step)
        trajectory += weighting.pop_trajectory()
        window.append(float(losses.mean()))
        step += 1
        bar.update(1)
        if step % log_every == 0 or step == max_steps:
            log_rows.append({"step": step, "loss": float(np.mean(window)), "lr": lr,
                             "time": round(seconds(), 3)})
            window = []
            bar.set_postfix(loss=f"{log_rows[-1]['loss']:.4f}")
            if validation is not None:
                validation.scalars(log_rows[-1], next(
                    (r for r in reversed(trajectory) if r["kind"] == "step"), None))
        if validation is not None and validation.due(step, max_steps):
            validation.grid(step, unet, ema)
        if (step % checkpoint_every == 0 or step == max_steps) and accelerator.is_main_process:
            checkpoint.save({"step": step, "elapsed": seconds(), "log": log_rows,
                             "window": window, "trajectory": trajectory})
    bar.close()
    if validation is not None:
        validation.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        resumed = checkpoint.loaded_from
        write_outputs(out, accelerator.unwrap_model(model), ema, log_rows, trajectory,
                      weighting.columns, {
                          **run_settings, "train": settings, "config_hash": checkpoint.config_hash,
                          "steps": step, "seconds": round(seconds(), 1),
                          "resumed_from": str(resumed) if resumed else None})
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
