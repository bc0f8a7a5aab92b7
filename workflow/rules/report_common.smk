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
    files = [
        METRICS.format(dataset=dataset, method=method, seed=seed, file=f"{kind}.csv")
        for method, seed in RUNS
    ]
    if reference:
        files.append(REFERENCE_METRICS.format(dataset=dataset, file=f"{kind}.csv"))
    return files


def paired_metric_files(dataset):
    kinds = ["quality", "semantic"] + (["measured"] if has_measured(dataset) else [])
    return [f for kind in kinds for f in metric_files(dataset, kind)]


def run_files(dataset, name):
    """One file per arm and seed from the training runs (train_log.csv, bo_trajectory.csv)."""
    return [
        RUN_FILE.format(dataset=dataset, method=method, seed=seed, file=name)
        for method, seed in RUNS
    ]


def run_options(wildcards):
    """Which run each of run_files() is: the files carry no run key in their path for the CLI."""
    methods = " ".join(method for method, _ in RUNS)
    seeds = " ".join(str(seed) for _, seed in RUNS)
    return f"--methods {methods} --seeds {seeds}"


def grid_attribute(wildcards):
    """The configured attribute if the dataset has it, else the dataset's first attribute."""
    attributes = list(dataset_cfg(wildcards)["attributes"])
    chosen = config["report"]["grid_attribute"]
    return chosen if chosen in attributes else attributes[0]


def samples_options(wildcards):
    return (
        f"--methods {' '.join(METHODS)} "
        f"--attributes {as_arg(dataset_cfg(wildcards)['attributes'])} "
        f"--attribute {grid_attribute(wildcards)} "
        f"--per-group {config['report']['grid_prompts']}"
    )


# The table and figure kinds: kind -> (its inputs for a dataset, named after the options of
# `fairdiff table/figure KIND`, or None where the dataset has no such table; its other options:
# a string for a table, a function of the wildcards for a figure).
# Adding a kind: an entry here, the kind in fairdiffusion.report.tables/figures and its
# paragraph in ../report/table.rst or figure.rst.
TABLES = {
    "quality": (
        lambda ds: {"metrics": metric_files(ds, "quality", reference=True)},
        "",
    ),
    "groups": (
        lambda ds: {"metrics": metric_files(ds, "quality", reference=True)},
        "",
    ),
    "semantic": (
        lambda ds: {"metrics": metric_files(ds, "semantic", reference=True)},
        "",
    ),
    "measured": (
        lambda ds: (
            {"metrics": metric_files(ds, "measured", reference=True)}
            if has_measured(ds)
            else None
        ),
        "",
    ),
    "paired": (
        lambda ds: {"metrics": paired_metric_files(ds)} if has_paired() else None,
        "--baseline baseline",
    ),
}
FIGURES = {
    "groups": (
        lambda ds: {"metrics": metric_files(ds, "quality", reference=True)},
        lambda wc: "",
    ),
    "es": (
        lambda ds: {
            "metrics": metric_files(ds, "quality", reference=True)
            + metric_files(ds, "semantic", reference=True)
        },
        lambda wc: "",
    ),
    "trajectory": (
        lambda ds: {"logs": run_files(ds, "bo_trajectory.csv")},
        lambda wc: f"{run_options(wc)} --window {config['fair_bayes']['time_window']}",
    ),
    "loss": (lambda ds: {"logs": run_files(ds, "train_log.csv")}, run_options),
    "samples": (
        lambda ds: {
            "manifest": MANIFEST.format(dataset=ds),
            "samples": [
                SAMPLES.format(dataset=ds, method=method, seed=SEEDS[0], split="test")
                for method in METHODS
            ],
        },
        samples_options,
    ),
}


def kind_inputs(kinds):
    """Input function of a family rule: the inputs of its {kind} for the {dataset}."""

    def inputs(wildcards):
        files = kinds[wildcards.kind][0](wildcards.dataset)
        if files is None:
            raise WorkflowError(
                f"{wildcards.kind}_{wildcards.dataset}: dataset {wildcards.dataset} has no "
                f"{wildcards.kind} table (measured needs source: synthetic, paired needs the "
                f"baseline and another arm in methods)"
            )
        return files

    return inputs


def input_options(wildcards, input):
    """The rule's inputs as the CLI's options: --NAME FILE..., one per named input."""
    return " ".join(
        f"--{name} {' '.join([files] if isinstance(files, str) else files)}"
        for name, files in input.items()
    )


def report_items(dataset):
    """Named target -> files, for every table and figure of one dataset."""
    items = {
        f"table_{kind}_{dataset}": expand(
            f"{TABLE}.{{ext}}", kind=kind, dataset=dataset, ext=TABLE_EXTS
        )
        for kind, (inputs, _) in TABLES.items()
        if inputs(dataset) is not None
    }
    for kind in FIGURES:
        items[f"figure_{kind}_{dataset}"] = expand(
            f"{FIGURE}.{{ext}}", kind=kind, dataset=dataset, ext=FIGURE_FORMATS
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
