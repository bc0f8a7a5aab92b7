"""`fairdiff <stage>`: one file-in/file-out command per pipeline stage.

Each stage lives in its own module, which provides `add_arguments(parser)` and `run(args)`.
Modules are imported only when their stage runs, so `fairdiff --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

from .errors import FairDiffError

# stage name -> (module, one-line help)
STAGES = {
    "data": ("fairdiffusion.data.prepare", "build a dataset's manifest (+ images) from its source"),
    "download": ("fairdiffusion.data.download", "download a public dataset into resources/"),
    "download-model": ("fairdiffusion.hub", "fetch a pretrained diffusers model once (Hub or cache)"),
    "base-model": ("fairdiffusion.models", "build the tiny model stack and train its VAE and text encoder"),
    "cache-latents": ("fairdiffusion.latents", "encode a split's images and prompts once"),
    "train": ("fairdiffusion.train", "fine-tune the UNet with one arm's loss weighting"),
    "sample": ("fairdiffusion.sample", "generate images for a split's prompts"),
    "extractor": ("fairdiffusion.evaluate.extractor", "train the domain feature extractor"),
    "features": ("fairdiffusion.evaluate.features", "extract features of an image set once"),
    "quality": ("fairdiffusion.evaluate.quality", "FID/KID/IS/PR overall and by group, with ES"),
    "semantic": ("fairdiffusion.evaluate.semantic", "train-on-synthetic/test-on-real AUC, ES-AUC"),
    "measure": ("fairdiffusion.evaluate.measured", "SynthFundus: measured-label accuracy by group"),
    "table": ("fairdiffusion.report.tables", "build one of the paper's tables"),
    "figure": ("fairdiffusion.report.figures", "draw one of the paper's figures"),
    "preflight": ("fairdiffusion.preflight", "check model, data, weights, disk and SLURM before a run"),
    "study": ("fairdiffusion.report.study", "validity study: paired effects, CIs, MDE, BO signal-to-noise"),
}


def json_arg(text: str):
    """A JSON value given inline, or @path to a JSON/YAML file (rules pass config sections)."""
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{path}: no such file")
        import yaml

        return yaml.safe_load(path.read_text())
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg})") from err


def build_parser(stage: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fairdiff", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name, (module, help_text) in STAGES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == stage:
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    stage = next((a for a in argv if not a.startswith("-")), None)
    if stage not in STAGES:
        stage = None
    args = build_parser(stage).parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    module = importlib.import_module(STAGES[args.stage][0])
    try:
        module.run(args)
    except FairDiffError as err:
        print(f"fairdiff {args.stage}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
