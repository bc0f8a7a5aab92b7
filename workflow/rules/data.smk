# Data: the configured source (synthetic, a local copy, a download) -> the common manifest.


rule prepare_data:
    input:
        source=source_input,
    output:
        manifest=MANIFEST,
    log:
        "logs/prepare_data/{dataset}.log",
    benchmark:
        "benchmarks/prepare_data/{dataset}.tsv"
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        out=lambda wc, output: os.path.dirname(output.manifest),
    shell:
        "fairdiff data --name {wildcards.dataset} --dataset {params.dataset} "
        "--out {params.out} > {log} 2>&1"
