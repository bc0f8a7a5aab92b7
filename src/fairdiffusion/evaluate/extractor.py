"""`fairdiff extractor`: the domain feature extractor, and opening any extractor for torch-fidelity.

The domain extractor is the small multi-head CNN of `cnn.py` trained on the real training
split's clinical labels (one head per label). Registered with torch-fidelity as
`fairdiff-domain`, it provides
  - `features`: the penultimate features, standardised with the mean/std of the real training
    images' features (stored with the weights) -- used by FID, KID and precision/recall;
  - `logits`: the class logits of one label head -- used by IS. The head is evaluate.is_label,
    or by default the label with the most classes (first declared on a tie; SynthFundus:
    vision_loss, 4 classes).
Output folder: model.safetensors (weights + feature_mean/feature_std buffers) and config.json.
Every metric row names its extractor with a short hash of the weights file, e.g.
`domain@1a2b3c4d` or `inception-v3-compat@6726825d`.
"""

from __future__ import annotations

import argparse
import json
import logging
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch_fidelity.feature_extractor_base import FeatureExtractorBase

from .. import io, runtime
from ..cli import json_arg
from ..errors import FairDiffError
from . import cnn, images

log = logging.getLogger(__name__)

DOMAIN = "fairdiff-domain"
INCEPTION = "inception-v3-compat"
# torch-fidelity feature layer used by each metric, per extractor.
LAYERS = {
    "domain": {"fid": "features", "kid": "features", "prc": "features", "isc": "logits"},
    "inception-v3-compat": {"fid": "2048", "kid": "2048", "prc": "2048", "isc": "logits_unbiased"},
}


def is_label(labels: dict, settings: dict) -> str:
    """The label head whose logits IS uses: evaluate.is_label, else the one with most classes."""
    chosen = settings.get("is_label")
    if chosen is None:
        return max(labels, key=lambda k: len(labels[k]))
    if chosen not in labels:
        raise FairDiffError(f"evaluate.is_label: '{chosen}' is not a declared label {list(labels)}")
    return chosen


class DomainNet(cnn.SmallCNN):
    """SmallCNN plus the real-data feature statistics used to standardise its features."""

    def __init__(self, heads: dict[str, int]):
        super().__init__(heads)
        dim = self.project.out_features
        self.register_buffer("feature_mean", torch.zeros(dim))
        self.register_buffer("feature_std", torch.ones(dim))


class DomainExtractor(FeatureExtractorBase):
    """torch-fidelity wrapper: uint8 [B, 3, H, W] -> (standardised features, IS-head logits)."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise FairDiffError("domain extractor: feature_extractor_weights_path (the extractor "
                                "folder) is required")
        folder = Path(feature_extractor_weights_path)
        config = read_config(folder)
        self.resolution = config["resolution"]
        self.is_label = config["is_label"]
        self.net = DomainNet(config["heads"])
        from safetensors.torch import load_file

        self.net.load_state_dict(load_file(folder / "model.safetensors"))
        self.net.eval()

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return LAYERS["domain"][metric]

    @staticmethod
    def can_be_compiled():
        return False

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] != 3:
            raise FairDiffError(f"domain extractor: expected uint8 Bx3xHxW, got {x.dtype} {tuple(x.shape)}")
        features, logits = self.net(cnn.to_float(x, self.resolution))
        out = {"features": (features - self.net.feature_mean) / self.net.feature_std,
               "logits": logits[self.is_label]}
        return tuple(out[name].float() for name in self.features_list)


def register() -> None:
    """Register the domain extractor with torch-fidelity once per process."""
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

    if DOMAIN not in FEATURE_EXTRACTORS_REGISTRY:
        register_feature_extractor(DOMAIN, DomainExtractor)


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not path.is_file() or not (Path(folder) / "model.safetensors").is_file():
        raise FairDiffError(f"{folder}: not a domain extractor folder (expected config.json and "
                            f"model.safetensors; run `fairdiff extractor`)")
    return json.loads(path.read_text())


@lru_cache(maxsize=None)
def short_hash(path: str) -> str:
    """First 8 hex digits of a file's sha256 (names the weights behind every metric)."""
    return io.sha256_file(path)[:8]


def open_extractor(name: str, settings: dict, domain_dir: str | Path | None, cuda: bool):
    """(torch-fidelity feature extractor, tag such as 'domain@1a2b3c4d', metric -> layer).

    name: evaluate.extractor (domain | inception-v3-compat). The standard Inception extractor
    is loaded offline from evaluate.inception_weights only.
    """
    from torch_fidelity.utils import create_feature_extractor

    layers = LAYERS.get(name)
    if layers is None:
        raise FairDiffError(f"evaluate.extractor: unknown extractor '{name}' (expected {list(LAYERS)})")
    wanted = sorted(set(layers.values()))
    if name == "domain":
        if domain_dir is None:
            raise FairDiffError("evaluate.extractor: domain needs the extractor folder (--extractor-dir)")
        read_config(Path(domain_dir))
        register()
        weights = Path(domain_dir) / "model.safetensors"
        extractor = create_feature_extractor(DOMAIN, wanted, cuda=cuda, verbose=False,
                                             feature_extractor_weights_path=str(domain_dir))
    else:
        path = settings.get("inception_weights")
        if path is None or not Path(path).is_file():
            raise FairDiffError(f"evaluate.inception_weights: Inception weights file {path} not found "
                                f"(torch-fidelity's weights-inception-2015-12-05-6726825d.pth is "
                                f"needed offline for extractor inception-v3-compat)")
        weights = Path(path)
        extractor = create_feature_extractor(INCEPTION, wanted, cuda=cuda, verbose=False,
                                             feature_extractor_weights_path=str(path))
    return extractor, f"{name}@{short_hash(str(weights))}", layers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="the dataset's manifest.csv")
    parser.add_argument("--dataset", type=json_arg, required=True, help="the dataset's config (JSON)")
    parser.add_argument("--evaluate", type=json_arg, required=True, help="config['evaluate'] (JSON)")
    parser.add_argument("--seed", type=int, default=0, help="training seed of the extractor")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--out", required=True, help="output folder (model.safetensors + config.json)")


def run(args: argparse.Namespace) -> None:
    runtime.set_threads(args.threads)
    attributes, labels = args.dataset["attributes"], args.dataset["labels"]
    size = args.dataset["resolution"]
    settings = args.evaluate["classifier"]
    head = is_label(labels, args.evaluate)
    train_rows = images.read_table(args.manifest, "train", attributes, labels)
    train_images = images.read_upright(train_rows, args.dataset)
    log.info("training the domain extractor on %d real training images (labels %s; IS head %s)",
             len(train_rows), list(labels), head)
    torch.manual_seed(args.seed)  # initial weights (torch seeds each process at random)
    net = DomainNet({k: len(v) for k, v in labels.items()})
    cnn.train(net, train_images, cnn.encode_targets(train_rows, labels), settings, size, args.seed)
    features, _ = cnn.predict(net, train_images, size)
    mean, std = features.mean(axis=0), features.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    net.feature_mean.copy_(torch.from_numpy(mean).float())
    net.feature_std.copy_(torch.from_numpy(std).float())
    val_accuracy = {}
    if (images.read_table(args.manifest, None, attributes, labels)["split"] == "val").any():
        val_rows = images.read_table(args.manifest, "val", attributes, labels)
        val_images = images.read_upright(val_rows, args.dataset)
        _, probs = cnn.predict(net, val_images, size)
        targets = cnn.encode_targets(val_rows, labels)
        val_accuracy = {k: float((probs[k].argmax(1) == targets[k]).mean()) for k in labels}
        log.info("validation accuracy per head: %s", val_accuracy)
    from safetensors.torch import save_file

    with io.atomic_dir(args.out) as tmp:
        save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp / "model.safetensors")
        config = {
            "architecture": "SmallCNN",
            "heads": {k: len(v) for k, v in labels.items()},
            "labels": labels,
            "is_label": head,
            "resolution": size,
            "feature_mean": mean.tolist(),
            "feature_std": std.tolist(),
            "n_train": len(train_rows),
            "val_accuracy": val_accuracy,
            "classifier": settings,
            "seed": args.seed,
        }
        io.write_json(tmp / "config.json", config)
        io.write_json(tmp / "run_info.json", io.run_info(
            {"manifest": args.manifest, "dataset": args.dataset, "evaluate": args.evaluate,
             "seed": args.seed}))
