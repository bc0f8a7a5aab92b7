import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


def tiny_stack(root: Path, n_train: int, random_flip: bool) -> SimpleNamespace:
    """The default config on a tiny SynthFundus (n_train/6/6 images), its base stack with a
    barely trained VAE, and the train split's latent cache (root/latents/train/...)."""
    from fairdiffusion import latents, models
    from fairdiffusion.config import validate
    from fairdiffusion.data.prepare import prepare

    cfg = validate(yaml.safe_load((ROOT / "config.yaml").read_text()))
    ds = cfg["datasets"]["synthfundus"]
    ds["synthetic"].update(n_train=n_train, n_val=4, n_test=6)
    prepare("synthfundus", ds, root / "data")
    cfg["model"]["vae"].update(steps=2, batch_size=8)
    cfg["model"]["text_encoder"].update(steps=2, batch_size=8)
    manifest = root / "data" / "manifest.csv"
    models.build_base("synthfundus", ds, cfg["model"], manifest, root / "base")
    cache = root / "latents" / "train" / "latents.safetensors"
    latents.cache(str(root / "base"), manifest, "train", ds, random_flip, cache)
    return SimpleNamespace(cfg=cfg, ds=ds, manifest=manifest, base=str(root / "base"), cache=cache)
