# Sampling: images for the prompts of the test split (quality metrics) and of the train split
# (train-on-synthetic classifiers), from each trained UNet (the EMA or raw weights, as
# sample.weights says).


rule sample:
    input:
        unet=fill(RUN_FILE, file="unet/config.json"),
        run_info=fill(RUN_FILE, file="run_info.json"),
        manifest=MANIFEST,
        base=base_model_input,
    output:
        samples=directory(SAMPLES),
    log:
        "logs/sample/{dataset}/{method}/seed{seed}/{split}.log",
    benchmark:
        "benchmarks/sample/{dataset}/{method}/seed{seed}/{split}.tsv"
    wildcard_constraints:
        split="train|test",
    conda:
        "../../envs/train.yaml"
    threads: 1
    resources:
        gpu=1,
        cpus_per_gpu=4,
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    params:
        base=base_model,
        model=lambda wc, input: os.path.dirname(input.run_info),
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        sample=as_arg(config["sample"]),
    shell:
        "fairdiff sample --base {params.base} --model {params.model} "
        "--manifest {input.manifest} --split {wildcards.split} --dataset {params.dataset} "
        "--sample {params.sample} --seed {wildcards.seed} --out {output.samples} "
        "--threads {threads} > {log} 2>&1"
