# Shared helpers: config validation, the results layout (paths.smk) and the parameters handed
# to the CLI.
import json
import os
import re
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


# model.pretrained: null builds the tiny stack per dataset; a local diffusers folder is used as it
# is; anything else is a Hugging Face Hub id, fetched once by download_model into HUB_MODEL_DIR
# (this line owns that path), which every rule reading the stack then reads.
PRETRAINED = config["model"]["pretrained"]
HUB_MODEL = PRETRAINED if PRETRAINED and not os.path.isdir(PRETRAINED) else None
HUB_MODEL_DIR = None
if HUB_MODEL:
    if not re.fullmatch(r"([\w.-]+/)?[\w.-]+", HUB_MODEL):
        raise WorkflowError(
            f"model.pretrained '{HUB_MODEL}': no such folder, and not a Hugging Face Hub id "
            f"(org/name); give a diffusers folder, a Hub id, or null for the tiny stack"
        )
    # org--name, as the Hugging Face cache spells it
    HUB_MODEL_DIR = "resources/models/" + "--".join(HUB_MODEL.split("/"))


def base_model(wildcards):
    """The frozen stack (VAE, text encoder, tokenizer) and initial UNet of a dataset's runs."""
    if HUB_MODEL:
        return HUB_MODEL_DIR
    return PRETRAINED or BASE_MODEL.format(dataset=wildcards.dataset)


def base_model_input(wildcards):
    """Rule input for the base stack: the built tiny stack, the Hub model's done-file, or
    nothing for a local folder."""
    if HUB_MODEL:
        return f"{HUB_MODEL_DIR}/download.done"
    if PRETRAINED:
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
