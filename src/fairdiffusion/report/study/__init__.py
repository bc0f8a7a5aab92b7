"""`fairdiff study`: the validity study -- does an arm narrow the group gap, and how surely?

Reads the metrics and training logs of every arm x seed of one dataset and writes into --out:

  study.csv    one row per comparison (arm vs reference) and endpoint: the paired difference over
               seeds, its t-interval, t-test and sign-test p-values, the image-bootstrap CI and
               p-value (primary endpoint), the minimum detectable effect (MDE) for the seeds run
               and the seeds the observed difference would need
  runs.csv     the value of every endpoint for every arm x seed (the data behind study.csv)
  study.md     the page: conclusion, preconditions, tables, figures, runtime, how it was derived
  readme.md    a README 'Results' section: the brief conclusion (text.conclude), the primary
               table and a link to study.md (its path from the repository root)
  effects.*, seeds.*, sigma.*   figures (--formats; png always)


Three modules, one per stage: compute.py (reading, run values, paired effects, preconditions;
the endpoints and statistics are described there), text.py (the conclusion generated from the
numbers, the tables, the page) and figures.py.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ... import io
from ...cli import json_arg
from ...errors import FairDiffError
from ...method import ARMS
from ..figures import FORMATS
from . import compute as C
from . import figures as F
from . import text as T

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--measured", nargs="+", required=True, help="measured.csv of every run")
    parser.add_argument("--measured-images", nargs="+", required=True,
                        help="measured_images.csv of every run, in the order of --runs")
    parser.add_argument("--quality", nargs="*", default=[], help="quality.csv of every run")
    parser.add_argument("--semantic", nargs="*", default=[], help="semantic.csv of every run")
    parser.add_argument("--trajectories", nargs="+", required=True,
                        help="bo_trajectory.csv of every run, in the order of --runs")
    parser.add_argument("--run-info", nargs="+", required=True,
                        help="run_info.json of every training run, in the order of --runs")
    parser.add_argument("--runs", nargs="+", required=True,
                        help="METHOD:SEED of every run: the run of the n-th file of each per-run "
                             "list (a file's path is never parsed)")
    parser.add_argument("--manifest", required=True, help="the dataset's manifest.csv")
    parser.add_argument("--ceiling", default=None, help="the base model's vae_ceiling.csv")
    parser.add_argument("--dataset", type=json_arg, required=True, help="the dataset's config")
    parser.add_argument("--name", required=True, help="dataset name")
    parser.add_argument("--methods", type=json_arg, required=True, help="config['methods']")
    parser.add_argument("--study", type=json_arg, required=True, help="config['study']")
    parser.add_argument("--window", type=int, required=True, help="fair_bayes.time_window")
    parser.add_argument("--command", required=True, help="the command that reproduces the study")
    parser.add_argument("--formats", nargs="+", default=["png"], choices=FORMATS)
    parser.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> None:
    settings, attributes = args.study, args.dataset["attributes"]
    labels = list(args.dataset["labels"])
    if settings["attribute"] not in attributes:
        raise FairDiffError(f"study.attribute '{settings['attribute']}' is not an attribute of "
                            f"{args.name} ({list(attributes)})")
    if settings["task"] not in [*labels, "all"]:
        raise FairDiffError(f"study.task '{settings['task']}': expected one of {labels + ['all']}")
    methods = list(args.methods)
    unknown = [m for m in methods if m not in ARMS]
    if unknown:
        raise FairDiffError(f"--methods: {unknown} not in method.ARMS ({list(ARMS)})")
    if settings["baseline"] not in methods:
        raise FairDiffError(f"study.baseline '{settings['baseline']}' is not among methods "
                            f"{methods}")
    tidy = pd.concat([C.read_tidy(args.measured, "measured", C.MEASURED_METRICS),
                      C.read_tidy(args.quality, "quality", C.QUALITY_METRICS),
                      C.read_tidy(args.semantic, "semantic", C.SEMANTIC_METRICS)], ignore_index=True)
    runs_of = C.parse_runs(args.runs)
    primary = C.primary_data(C.files_of_runs(args.measured_images, runs_of, "--measured-images"),
                             args.manifest, settings["task"], settings["attribute"], labels)
    C.check_consistent(primary, tidy, settings["task"])
    trajectories = C.read_runs(C.files_of_runs(args.trajectories, runs_of, "--trajectories"),
                               C.read_trajectory)
    seconds = C.read_runs(C.files_of_runs(args.run_info, runs_of, "--run-info"), C.read_seconds)
    ceiling = None
    if args.ceiling:
        if not Path(args.ceiling).exists():
            raise FairDiffError(f"{args.ceiling}: VAE ceiling file not found")
        ceiling = pd.read_csv(args.ceiling)
    runs = C.run_values(tidy, trajectories, seconds, attributes, args.window,
                      settings["permutations"])
    pairs = C.comparisons(methods, settings["baseline"], settings.get("comparisons"))
    log.info("paired effects: %d comparisons, %d seeds", len(pairs), runs["seed"].nunique())
    res = C.effects(runs, pairs, primary, settings)
    values, counts = np.unique(primary.groups, return_counts=True)
    majority = str(values[counts.argmax()]) if len(values) else None
    checks = C.preconditions(runs, ceiling, majority, settings, attributes, labels)
    conclusion = T.conclude(res, runs, checks, settings, attributes, methods, args.window)

    out = Path(args.out)
    groups = C.group_order(runs, settings, attributes)
    items = C.primary_endpoints(settings, groups)
    written = {
        "effects": F.figure_effects(res, items, pairs, out / "effects", args.formats),
        "seeds": F.figure_seeds(runs, methods, items, out / "seeds", args.formats),
        "sigma": F.figure_sigma(trajectories, attributes, methods, args.window, out / "sigma",
                              args.formats),
    }
    captions = {"effects": "paired differences of the primary endpoint (thick: seed CI, thin: "
                           "image-bootstrap CI)",
                "seeds": "every seed's gap, overall and group accuracy per arm",
                "sigma": "sigma of every group over training (mean ± sd over seeds)"}
    local = {f"{k}.png": captions[k] for k in written}
    seconds_series = pd.Series({k: v for k, v in seconds.items()}, dtype=float)
    if len(seconds_series):
        seconds_series.index = pd.MultiIndex.from_tuples(seconds_series.index,
                                                         names=["method", "seed"])
    common = (args.name, conclusion, checks, runs, res, settings, attributes, methods,
              args.window)
    io.write_csv(out / "study.csv", res)
    io.write_csv(out / "runs.csv", runs)
    io.write_text(out / "study.md", T.page(*common, local, args.command, seconds_series))
    brief = T.conclude(res, runs, checks, settings, attributes, methods, args.window, brief=True)
    io.write_text(out / "readme.md", T.readme_section(args.name, brief, checks, runs, settings,
                                                      attributes, methods,
                                                      f"{out.as_posix()}/study.md"))
    io.write_json(out / "run_info.json", io.run_info(io.stage_settings(args)))
    log.info("conclusion: %s", conclusion)
