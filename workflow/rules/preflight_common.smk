# Helpers of preflight.smk: what the SLURM profile sets, and which weight files a config needs.
import re

from snakemake.io import regex_from_filepattern


def resource_value(resources, name):
    """A resource's value as the profile wrote it (set-resources hold unevaluated Resources)."""
    value = resources.get(name)
    if hasattr(value, "is_evaluable"):
        return value.raw if value.is_evaluable() else value.value
    return value


def slurm_settings(resources):
    """Account and partitions the SLURM profile sets, or None under another executor."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return None
    per_rule = workflow.resource_settings.overwrite_resources.values()
    partitions = [resource_value(resources, "slurm_partition")] + [
        resource_value(res, "slurm_partition") for res in per_rule
    ]
    return {
        "account": resource_value(resources, "slurm_account"),
        "partitions": [p for p in partitions if p],
    }


def needed_weights():
    """Weight files the evaluation needs, with the URL their download rule fetches."""
    evaluate = config["evaluate"]
    files = []
    if evaluate["extractor"] == "inception-v3-compat":
        files.append(
            {
                "what": "Inception weights",
                "path": evaluate["inception_weights"],
                "url": INCEPTION_URL,
            }
        )
    classifier = evaluate["classifier"]["backbone_weights"]
    if classifier:
        found = re.match(regex_from_filepattern(TORCHVISION_WEIGHTS), classifier)
        files.append(
            {
                "what": "classifier weights",
                "path": classifier,
                "url": TORCHVISION_URL.format(**found.groupdict()) if found else None,
            }
        )
    return files
