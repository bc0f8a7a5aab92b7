"""The image classifiers of the domain extractor (the small CNN) and of the semantic stage.

One network, one head per clinical label, trained on all its labels together (the summed
cross-entropy of the heads). `backbone` (evaluate.classifier) may instead name a torchvision
model, efficientnet_b1 or vit_b_16 (the authors' classifiers), optionally initialised from a
local weights file; the semantic stage may build one single-head network per label
(evaluate.classifier.per_task). `train` is the one training loop of every architecture.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .. import config
from ..errors import FairDiffError

log = logging.getLogger(__name__)


def to_float(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [B, 3, H, W] -> float in [-1, 1] at size x size (bilinear if the size differs)."""
    x = images.float() / 127.5 - 1.0
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return x


class SmallCNN(nn.Module):
    """Three conv blocks (conv-BN-ReLU-maxpool) -> global average pool -> `feature_dim` features
    -> one linear head per label. Small on purpose: it trains in about a minute on a CPU.

    `features` are the pre-activation outputs of the penultimate linear layer (no dead ReLU
    dimensions, so their covariance is well conditioned for FID).
    """

    def __init__(self, heads: dict[str, int], width: int = 16, feature_dim: int = 64):
        super().__init__()
        blocks, channels = [], 3
        for out in (width, 2 * width, 4 * width):
            blocks += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(),
                       nn.MaxPool2d(2)]
            channels = out
        self.body = nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.project = nn.Linear(channels, feature_dim)
        self.heads = nn.ModuleDict({name: nn.Linear(feature_dim, n) for name, n in heads.items()})
        # channels-last: CPU max-pooling is ~10x faster in it (the network 3.2x at inference,
        # 1.4x in training, measured at 32 px on one thread).
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.project(self.body(x.contiguous(memory_format=torch.channels_last)))
        hidden = F.relu(features)
        return features, {name: head(hidden) for name, head in self.heads.items()}


class BackboneClassifier(nn.Module):
    """A torchvision model whose last linear layer is replaced by one head per label."""

    def __init__(self, heads: dict[str, int], backbone: str, weights: str | None, size: int):
        super().__init__()
        import torchvision

        # ViT's position embeddings are sized for the input (ImageNet weights: 224 px only)
        kwargs = {"image_size": size} if backbone.startswith("vit_") else {}
        model = torchvision.models.get_model(backbone, weights=None, **kwargs)
        if weights is not None:
            state = load_state(weights, "evaluate.classifier.backbone_weights")
            try:
                model.load_state_dict(state)
            except RuntimeError as err:
                first = str(err).strip().splitlines()[-1].strip()
                raise FairDiffError(f"evaluate.classifier.backbone_weights: {weights} is not a "
                                    f"state dict of {backbone} at {size} px ({first})") from None
        parent, name, last = _last_linear(model)
        setattr(parent, name, nn.Identity())
        self.body = model
        # the authors' EfficientNet head has no bias (classification_codebase/src/modules.py:1084)
        bias = backbone != "efficientnet_b1"
        self.heads = nn.ModuleDict({k: nn.Linear(last.in_features, n, bias=bias)
                                    for k, n in heads.items()})

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.body(x)
        return features, {name: head(features) for name, head in self.heads.items()}


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    found = None
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name, child)
    if found is None:
        raise FairDiffError("evaluate.classifier.backbone: the model has no final linear layer")
    return found


def load_state(path: str, key: str) -> dict:
    """A state dict from a .safetensors or (weights-only) torch file; a missing file names `key`."""
    path = Path(path)
    if not path.is_file():
        raise FairDiffError(f"{key}: weights file {path} not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # weights_only refuses anything but tensors (UnpicklingError)
        first = str(err).strip().splitlines()[0]
        raise FairDiffError(f"{key}: {path} is not a plain state dict ({first})") from None


def with_defaults(settings: dict) -> dict:
    """evaluate.classifier with the schema's defaults filled in (the workflow passes a validated
    config; direct calls of the CLI and tests may pass some keys only)."""
    return config.section_defaults(settings, "evaluate", "classifier")


def build(heads: dict[str, int], settings: dict, seed: int, size: int) -> nn.Module:
    """The classifier named by evaluate.classifier.backbone (small | a torchvision model) for
    size x size images, initialised from `seed` (torch seeds each process at random: unseeded
    initial weights would differ between two runs of the same job)."""
    settings = with_defaults(settings)
    torch.manual_seed(seed)
    if settings["backbone"] == "small":
        return SmallCNN(heads)
    return BackboneClassifier(heads, settings["backbone"], settings["backbone_weights"], size)


def train(model: nn.Module, images: np.ndarray, targets: dict[str, np.ndarray], settings: dict,
          size: int, seed: int, after_epoch: Callable[[int, float], None] | None = None) -> nn.Module:
    """Fit all heads at once (summed cross-entropy) with AdamW (evaluate.classifier: learning
    rate, betas, weight decay, one-cycle or constant schedule), deterministically for a given
    seed on CPU (on a GPU when one is visible). Returns the model in eval mode, on the CPU.

    images: uint8 [N, H, W, 3]; targets: label -> int64 [N] class indices. after_epoch(epoch,
    mean loss), if given, is called after each epoch (1-based) with the model in eval mode.
    """
    settings = with_defaults(settings)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    y_all = {k: torch.from_numpy(v.astype(np.int64)) for k, v in targets.items()}
    model.to(device)
    rate = settings["learning_rate"]
    optimizer = torch.optim.AdamW(model.parameters(), lr=rate, betas=tuple(settings["betas"]),
                                  weight_decay=settings["weight_decay"])
    batch, epochs, n = settings["batch_size"], settings["epochs"], len(x_all)
    steps = epochs * max(1, -(-n // batch))
    schedule = (torch.optim.lr_scheduler.OneCycleLR(optimizer, rate, total_steps=steps)
                if settings["schedule"] == "one_cycle" else None)
    model.train()
    with tqdm(total=steps, desc="classifier", unit="step", mininterval=5) as bar:
        for epoch in range(1, epochs + 1):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, batch):
                index = order[start:start + batch]
                _, logits = model(to_float(x_all[index].to(device), size))
                loss = sum(F.cross_entropy(logits[k], y_all[k][index].to(device)) for k in logits)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if schedule is not None:
                    schedule.step()
                total += loss.item() * len(index)
                bar.update()
            log.info("epoch %d/%d: mean summed cross-entropy %.4f", epoch, epochs, total / n)
            if after_epoch is not None:
                model.eval()
                after_epoch(epoch, total / n)
                model.train()
    return model.cpu().eval()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, size: int, batch: int = 256):
    """(features [N, F], label -> class probabilities [N, C]) as numpy arrays, on a GPU when one
    is visible; the model is left on the device it came on."""
    home = next(model.parameters()).device
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    x_all = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    feats, probs = [], {}
    for start in range(0, len(x_all), batch):
        features, logits = model(to_float(x_all[start:start + batch].to(device), size))
        feats.append(features.cpu())
        for k, v in logits.items():
            probs.setdefault(k, []).append(v.softmax(dim=1).cpu())
    model.to(home)
    return (torch.cat(feats).numpy().astype(np.float64),
            {k: torch.cat(v).numpy().astype(np.float64) for k, v in probs.items()})


def encode_targets(frame, labels: dict) -> dict[str, np.ndarray]:
    """label -> class index per row, in the declared class order."""
    return {label: frame[label].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
            for label, classes in labels.items()}
