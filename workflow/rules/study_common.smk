# Helpers of study.smk: the study's files, its reproducing command and its inputs.

STUDY_FILES = ["study.md", "study.csv", "runs.csv", "readme.md"]
STUDY_FIGURES = ["effects", "seeds", "sigma"]


def study_command():
    """The command line that reproduces the study with the config files given to this run."""
    files = [os.path.relpath(str(f)) for f in workflow.overwrite_configfiles]
    if not files:
        return "snakemake study --cores 2"
    return (
        "snakemake study "
        + " ".join(f"--configfile {shlex.quote(f)}" for f in files)
        + " --replace-workflow-config --cores 2"
    )


def study_run_files(wildcards, name, stage="metrics"):
    """One file per run of RUNS (the order of `--runs`: the command is told which run each
    file is, it never parses a path): metrics/... or models/... (stage)."""
    template = RUN_FILE if stage == "models" else METRICS
    return [
        template.format(dataset=wildcards.dataset, method=method, seed=seed, file=name)
        for method, seed in RUNS
    ]


def study_ceiling(wildcards):
    """The base model's VAE ceiling (tiny stack only; a pretrained VAE has none)."""
    if config["model"]["pretrained"]:
        return ""
    return f"--ceiling {VAE_CEILING.format(dataset=wildcards.dataset)}"
