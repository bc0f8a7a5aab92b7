"""The small multi-head image classifier shared by the domain extractor and the semantic stage.

One network, one head per clinical label, trained once on all labels together (the summed
cross-entropy of the heads): a single training run per image set keeps the number of jobs
small, and every head sees the same features. `backbone` may instead name a torchvision model
(e.g. efficientnet_b0, for the paper config), optionally initialised from a local weights file.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

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

    def __init__(self, heads: dict[str, int], backbone: str, weights: str | None):
        super().__init__()
        import torchvision

        try:
            model = torchvision.models.get_model(backbone, weights=None)
        except ValueError as err:
            raise FairDiffError(f"evaluate.classifier.backbone: unknown torchvision model "
                                f"'{backbone}'") from err
        if weights is not None:
            model.load_state_dict(load_state(weights, "evaluate.classifier.backbone_weights"))
        parent, name, last = _last_linear(model)
        setattr(parent, name, nn.Identity())
        self.body = model
        self.heads = nn.ModuleDict({k: nn.Linear(last.in_features, n) for k, n in heads.items()})

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
    return torch.load(path, map_location="cpu", weights_only=True)


def build(heads: dict[str, int], settings: dict, seed: int) -> nn.Module:
    """The classifier named by evaluate.classifier (`backbone`: small | a torchvision model),
    initialised from `seed` (torch seeds each process at random: unseeded initial weights would
    differ between two runs of the same job)."""
    torch.manual_seed(seed)
    backbone = settings.get("backbone", "small")
    if backbone == "small":
        return SmallCNN(heads)
    return BackboneClassifier(heads, backbone, settings.get("backbone_weights"))


def train(model: nn.Module, images: np.ndarray, targets: dict[str, np.ndarray], settings: dict,
          size: int, seed: int) -> nn.Module:
    """Fit all heads at once (summed cross-entropy), deterministically for a given seed on CPU
    (on a GPU when one is visible). Returns the model in eval mode, on the CPU.

    images: uint8 [N, H, W, 3]; targets: label -> int64 [N] class indices.
    """
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    y_all = {k: torch.from_numpy(v.astype(np.int64)) for k, v in targets.items()}
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings["learning_rate"], weight_decay=1e-4)
    batch, epochs, n = settings["batch_size"], settings["epochs"], len(x_all)
    steps = epochs * max(1, -(-n // batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings["learning_rate"], total_steps=steps)
    model.train()
    with tqdm(total=steps, desc="classifier", unit="step", mininterval=5) as bar:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            total = 0.0
            for start in range(0, n, batch):
                index = order[start:start + batch]
                _, logits = model(to_float(x_all[index].to(device), size))
                loss = sum(F.cross_entropy(logits[k], y_all[k][index].to(device)) for k in logits)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                total += loss.item() * len(index)
                bar.update()
            log.info("epoch %d/%d: mean summed cross-entropy %.4f", epoch + 1, epochs, total / n)
    return model.cpu().eval()


@torch.no_grad()
def predict(model: nn.Module, images: np.ndarray, size: int, batch: int = 256):
    """(features [N, F], label -> class probabilities [N, C]) as numpy arrays."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    x_all = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
    feats, probs = [], {}
    for start in range(0, len(x_all), batch):
        features, logits = model(to_float(x_all[start:start + batch].to(device), size))
        feats.append(features.cpu())
        for k, v in logits.items():
            probs.setdefault(k, []).append(v.softmax(dim=1).cpu())
    model.cpu()
    return (torch.cat(feats).numpy().astype(np.float64),
            {k: torch.cat(v).numpy().astype(np.float64) for k, v in probs.items()})


def encode_targets(frame, labels: dict) -> dict[str, np.ndarray]:
    """label -> class index per row, in the declared class order."""
    return {label: frame[label].map({c: i for i, c in enumerate(classes)}).to_numpy(np.int64)
            for label, classes in labels.items()}
