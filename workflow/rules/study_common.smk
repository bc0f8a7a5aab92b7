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


# Every arm x seed, in the one order of the per-run file lists and of `--runs` (the command is
# told which run each file is; it never parses a path).
STUDY_RUNS = [(method, seed) for method in METHODS for seed in SEEDS]


def study_run_files(wildcards, name, stage="metrics"):
    """One file per run of STUDY_RUNS: metrics/... or models/... (stage)."""
    return [
        f"{RESULTS}/{stage}/{wildcards.dataset}/{method}/seed{seed}/{name}"
        for method, seed in STUDY_RUNS
    ]


def study_ceiling(wildcards):
    """The base model's VAE ceiling (tiny stack only; a pretrained VAE has none)."""
    if config["model"]["pretrained"]:
        return ""
    return f"--ceiling {RESULTS}/models/{wildcards.dataset}/base/vae_ceiling.csv"
