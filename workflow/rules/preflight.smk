# Preflight: `snakemake preflight` (with the same --configfile/--profile as the real run) checks
# everything external before the first GPU job is queued: model, datasets and token, weights,
# disk, and with the SLURM profile the account and partitions. It prints a table and the job
# count and GPU-hour estimate; it fails on any problem. No output file: it runs every time.


include: "preflight_common.smk"


localrules:
    preflight,


rule preflight:
    log:
        "logs/preflight.log",
    conda:
        "../../envs/train.yaml"
    params:
        config=lambda wc: as_arg(config),
        snakefile=workflow.main_snakefile,
        weights=as_arg(needed_weights()),
        model=(
            f"--model-dir {HUB_MODEL_DIR} --model-done {HUB_MODEL_DIR}/download.done"
            if HUB_MODEL
            else ""
        ),
        slurm=lambda wc, resources: as_arg(slurm_settings(resources)),
    shell:
        "fairdiff preflight --config {params.config} --snakefile {params.snakefile} "
        "--weights {params.weights} --slurm {params.slurm} {params.model} 2>&1 | tee {log}; "
        "exit ${{PIPESTATUS[0]}}"
