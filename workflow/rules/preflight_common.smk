# Helpers of preflight.smk: what the SLURM profile sets, and which weight files a config needs.


def slurm_settings(resources):
    """Account and partitions the SLURM profile sets, or None under another executor."""
    plugin = workflow.executor_plugin
    if plugin is None or plugin.name != "slurm":
        return None
    partitions = [resources.get("slurm_partition")] + [
        res.get("slurm_partition")
        for res in workflow.resource_settings.overwrite_resources.values()
    ]
    return {
        "account": resources.get("slurm_account"),
        "partitions": [p for p in partitions if p],
    }


def needed_weights():
    """Weight files the evaluation needs, with the URL their download rule fetches."""
    if config["evaluate"]["extractor"] != "inception-v3-compat":
        return []
    return [
        {
            "what": "Inception weights",
            "path": config["evaluate"]["inception_weights"],
            "url": INCEPTION_URL,
        }
    ]
