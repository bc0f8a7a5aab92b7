# Helpers of report.smk: which tables and figures exist for a dataset, and their inputs.
# report_targets() is what `rule all` asks for (the default run ends at the report's inputs).
from fairdiffusion.method import ARMS

TABLE_EXTS = ["csv", "md", "tex"]
FIGURE_FORMATS = config["report"]["figure_formats"]
FIGURE_EXTRA = [fmt for fmt in FIGURE_FORMATS if fmt != "png"]


def has_measured(dataset):
    """Measured-label accuracy exists only where labels can be measured: generated data."""
    return config["datasets"][dataset]["source"] == "synthetic"


def has_paired():
    """The paired table needs the reference arm (method.ARMS) and another arm."""
    return any(ARMS[m].reference for m in METHODS) and len(METHODS) > 1


def metric_files(dataset, kind, reference=False):
    """The tidy metric CSVs of every arm and seed (plus the real reference's) of one kind."""
    files = expand(
        f"{RESULTS}/metrics/{dataset}/{{method}}/seed{{seed}}/{kind}.csv",
        method=METHODS,
        seed=SEEDS,
    )
    return files + (
        [f"{RESULTS}/metrics/{dataset}/real/{kind}.csv"] if reference else []
    )


def paired_metric_files(wildcards):
    kinds = ["quality", "semantic"] + (
        ["measured"] if has_measured(wildcards.dataset) else []
    )
    return [f for kind in kinds for f in metric_files(wildcards.dataset, kind)]


def run_files(dataset, name):
    """One file per arm and seed from the training runs (train_log.csv, bo_trajectory.csv)."""
    return expand(
        f"{RESULTS}/models/{dataset}/{{method}}/seed{{seed}}/{name}",
        method=METHODS,
        seed=SEEDS,
    )


def grid_attribute(wildcards):
    """The configured attribute if the dataset has it, else the dataset's first attribute."""
    attributes = list(dataset_cfg(wildcards)["attributes"])
    chosen = config["report"]["grid_attribute"]
    return chosen if chosen in attributes else attributes[0]


def report_items(dataset):
    """Named target -> files, for every table and figure of one dataset."""
    tables = ["quality", "groups", "semantic"]
    tables += ["measured"] if has_measured(dataset) else []
    tables += ["paired"] if has_paired() else []
    items = {
        f"table_{kind}_{dataset}": expand(
            f"{RESULTS}/tables/{kind}_{dataset}.{{ext}}", ext=TABLE_EXTS
        )
        for kind in tables
    }
    for kind in ["groups", "es", "trajectory", "loss", "samples"]:
        items[f"figure_{kind}_{dataset}"] = expand(
            f"{RESULTS}/figures/{kind}_{dataset}.{{ext}}", ext=FIGURE_FORMATS
        )
    return items


def report_targets(kind=""):
    """Every table and figure of every dataset; `kind` (table or figure) keeps one family."""
    return [
        path
        for dataset in DATASETS
        for name, files in report_items(dataset).items()
        if name.startswith(kind)
        for path in files
    ]
