# Shared helpers: config validation, the results layout (paths.smk) and the parameters handed
# to the CLI.
import json
import os
import shlex

from fairdiffusion.config import validate
from fairdiffusion.errors import FairDiffError

try:
    # Fills the schema's defaults into `config`; the error names the offending key in one line.
    validate(config, schema_path=workflow.source_path("../schemas/config.schema.yaml"))
except FairDiffError as err:
    raise WorkflowError(str(err)) from None


include: "paths.smk"


DATASETS = list(config["datasets"])
METHODS = config["methods"]
SEEDS = config["seeds"]
# Every trained run as (method, seed), in the order the report lists their files.
RUNS = [(method, seed) for method in METHODS for seed in SEEDS]
SPLITS = ["train", "val", "test"]


wildcard_constraints:
    dataset="|".join(DATASETS),
    method="|".join(METHODS),
    seed=r"\d+",
    split="train|val|test",


def dataset_cfg(wildcards):
    return config["datasets"][wildcards.dataset]


def as_arg(value):
    """A config value as one shell-quoted JSON argument (params track it for reruns).

    Keys keep their declared order: attribute, group and label order fixes group indices.
    """
    return shlex.quote(json.dumps(value))


def base_model(wildcards):
    """The frozen stack (VAE, text encoder, tokenizer) and initial UNet of a dataset's runs."""
    return config["model"]["pretrained"] or BASE_MODEL.format(dataset=wildcards.dataset)


def base_model_input(wildcards):
    """Rule input for the base stack: the built tiny stack, or nothing for a pretrained id."""
    if config["model"]["pretrained"]:
        return []
    return BASE_MODEL.format(dataset=wildcards.dataset)


def all_targets():
    return report_targets()


def source_input(wildcards):
    """What prepare_data reads: a user's CSV (so edits rerun it), nothing for generated or
    local data, else the download's marker."""
    cfg = dataset_cfg(wildcards)
    if cfg["source"] == "csv":
        return cfg["options"].get("csv") or []
    if cfg["source"] == "synthetic" or cfg.get("path"):
        return []
    return DOWNLOAD_DONE.format(dataset=wildcards.dataset)
