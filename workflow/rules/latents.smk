# Latents: VAE latents and text-encoder states of a split, computed once and shared by every arm.
# The train split's cache holds the rows of train.splits.


rule cache_latents:
    input:
        manifest=MANIFEST,
        base=base_model_input,
    output:
        latents=LATENTS,
    log:
        "logs/cache_latents/{dataset}/{split}.log",
    benchmark:
        "benchmarks/cache_latents/{dataset}/{split}.tsv"
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
        base=base_model,
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        # Flipped latents are only needed where training reads them.
        flip=lambda wc: (
            "--random-flip"
            if wc.split == "train" and config["train"]["random_flip"]
            else ""
        ),
        # The training cache holds the rows of train.splits (the paper: train + val).
        splits=lambda wc: " ".join(
            config["train"]["splits"] if wc.split == "train" else [wc.split]
        ),
    shell:
        "fairdiff cache-latents --base {params.base} --manifest {input.manifest} "
        "--split {wildcards.split} --splits {params.splits} --dataset {params.dataset} "
        "{params.flip} --out {output.latents} --threads {threads} > {log} 2>&1"
