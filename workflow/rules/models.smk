# Models: the tiny latent-diffusion stack, built and its VAE and text encoder trained
# (model.pretrained: null only; a pretrained id or folder is used as it is, see base_model() in
# common.smk).


rule base_model:
    input:
        manifest=MANIFEST,
    output:
        base=directory(BASE_MODEL),
    log:
        "logs/base_model/{dataset}.log",
    benchmark:
        "benchmarks/base_model/{dataset}.tsv"
    # On the critical path (base -> latents -> training): scheduled before jobs that can wait.
    priority: 10
    conda:
        "../../envs/train.yaml"
    threads: 2
    resources:
        gpu=1,
        cpus_per_gpu=2,
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    params:
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        model=as_arg(config["model"]),
    shell:
        "fairdiff base-model --name {wildcards.dataset} --dataset {params.dataset} "
        "--model {params.model} --manifest {input.manifest} --out {output.base} "
        "--threads {threads} > {log} 2>&1"
