"""`fairdiff features`: run the feature extractor once over an image set and cache the result.

Output: one safetensors file with a tensor per torch-fidelity feature layer (e.g. `features`
and `logits` for the domain extractor) and, in its metadata, the row ids (JSON list, in row
order), the extractor tag (with its weights hash) and the metric -> layer map. Every metric of
every group is then computed from this file; the network never runs again for this set.

Images stored turned by the dataset's `options.rotate` (the paper's -90 degrees) are turned
back first, as the authors do, so the extractor sees fundi upright. evaluate.image_format jpeg
then passes every image through a JPEG encode/decode in memory
(images.jpeg_round_trip, the authors' protocol); the tag then ends in `+jpeg75`, so features
of PNG and JPEG images are never compared with each other.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import torch

from .. import io, runtime
from ..cli import json_arg
from ..errors import FairDiffError
from . import extractor as extractor_mod
from . import images

log = logging.getLogger(__name__)


def extract(image_array: np.ndarray, feature_extractor, batch_size: int = 64, cuda: bool = False) -> dict:
    """layer -> float tensor [N, D], through torch-fidelity's own batched feature loop."""
    from torch_fidelity.utils import get_featuresdict_from_dataset

    return get_featuresdict_from_dataset(images.UInt8Images(image_array), feature_extractor,
                                         batch_size, cuda, save_cpu_ram=True, verbose=False)


def save(path: str | Path, features: dict, ids: list[str], tag: str, layers: dict) -> None:
    from safetensors.torch import save_file

    metadata = {"ids": json.dumps(list(map(str, ids))), "extractor": tag, "layers": json.dumps(layers)}
    with io.atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in features.items()}, tmp, metadata=metadata)


def load(path: str | Path) -> tuple[dict, list[str], str, dict]:
    """(layer -> tensor, ids, extractor tag, metric -> layer) of a cached feature file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FairDiffError(f"{path}: feature file not found (run `fairdiff features`)")
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise FairDiffError(f"{path}: incomplete or corrupt feature file ({err}); rebuild it "
                            f"(snakemake --forcerun extract_features, or fairdiff features)"
                            ) from err
    if not {"ids", "extractor", "layers"} <= set(meta):
        raise FairDiffError(f"{path}: not a feature file (metadata ids/extractor/layers missing)")
    return tensors, json.loads(meta["ids"]), meta["extractor"], json.loads(meta["layers"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--table", required=True,
                        help="a manifest.csv (with --split) or a samples folder / its prompts.csv")
    parser.add_argument("--split", default=None, help="manifest split to use (e.g. test)")
    parser.add_argument("--dataset", type=json_arg, required=True, help="the dataset's config (JSON)")
    parser.add_argument("--evaluate", type=json_arg, required=True, help="config['evaluate'] (JSON)")
    parser.add_argument("--extractor-dir", default=None, help="domain extractor folder")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument("--out", required=True, help="output .safetensors")


def run(args: argparse.Namespace) -> None:
    runtime.set_threads(args.threads)
    cuda = torch.cuda.is_available()
    rows = images.read_table(args.table, args.split, args.dataset["attributes"], args.dataset["labels"])
    fe, tag, layers = extractor_mod.open_extractor(args.evaluate["extractor"], args.evaluate,
                                                   args.extractor_dir, cuda)
    array = images.read_upright(rows, args.dataset)
    if args.evaluate["image_format"] == "jpeg":
        array = images.jpeg_round_trip(array)
        tag += f"+jpeg{images.JPEG_QUALITY}"
    log.info("extracting %s features of %d images (%s)", tag, len(rows), rows.attrs["source"])
    features = extract(array, fe, args.batch_size, cuda)
    save(args.out, features, rows["id"].tolist(), tag, layers)
