# Evaluation: features once per image set, then quality / semantic / measured metrics per run.
# Feature sets: real-test / real-train (the manifest's test / train split; train is MiFID's
# memorization reference) and {method}-seed{seed}-test (a run's samples of the test prompts),
# under FEATURES. The metrics of the real images (the reference a
# run is compared with) come from the run rule's definition, given the manifest instead.


include: "evaluate_common.smk"


wildcard_constraints:
    imageset=r"real-test|real-train|[A-Za-z0-9_]+-seed\d+-test",
    extractor="domain|inception-v3-compat",


rule train_extractor:
    input:
        manifest=MANIFEST,
    output:
        model=directory(EXTRACTOR_MODEL),
    log:
        "logs/train_extractor/{dataset}.log",
    benchmark:
        "benchmarks/train_extractor/{dataset}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        evaluate=as_arg(config["evaluate"]),
    shell:
        "fairdiff extractor --manifest {input.manifest} --dataset {params.dataset} "
        "--evaluate {params.evaluate} --threads {threads} --out {output.model} > {log} 2>&1"


rule extract_features:
    input:
        table=imageset_table,
        extractor=extractor_input,
    output:
        features=FEATURES,
    log:
        "logs/extract_features/{dataset}/{extractor}/{imageset}.log",
    benchmark:
        "benchmarks/extract_features/{dataset}/{extractor}/{imageset}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        evaluate=as_arg(config["evaluate"]),
        split=lambda wc: real_split_arg(wc.imageset),
        extractor_dir=lambda wc: EXTRACTOR_MODEL.format(dataset=wc.dataset),
    shell:
        "fairdiff features --table {input.table} {params.split} --dataset {params.dataset} "
        "--evaluate {params.evaluate} --extractor-dir {params.extractor_dir} "
        "--threads {threads} --out {output.features} > {log} 2>&1"


rule quality:
    input:
        generated=lambda wc: feature_file(wc.dataset, run_imageset(wc.method, wc.seed)),
        samples=lambda wc: samples_dir(wc, "test"),
        real=lambda wc: feature_file(wc.dataset, "real-test"),
        reference=lambda wc: feature_file(wc.dataset, "real-train"),
        manifest=MANIFEST,
    output:
        csv=fill(METRICS, file="quality.csv"),
    log:
        "logs/quality/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/quality/{dataset}/{method}/seed{seed}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        evaluate=as_arg(config["evaluate"]),
        generated_split="",
        method=lambda wc: wc.method,
        seed=lambda wc: wc.seed,
    shell:
        "fairdiff quality --generated {input.generated} --generated-table {input.samples} "
        "{params.generated_split} --real {input.real} --reference {input.reference} "
        "--manifest {input.manifest} --dataset {params.dataset} --evaluate {params.evaluate} "
        "--name {wildcards.dataset} --method {params.method} --seed {params.seed} "
        "--threads {threads} --out {output.csv} > {log} 2>&1"


# The real training images in the generated role: what a perfect generator scores. Every
# group disparity of an arm reads against this row's (sampling noise at the groups' sizes).
use rule quality as quality_reference with:
    input:
        generated=lambda wc: feature_file(wc.dataset, "real-train"),
        samples=MANIFEST,
        real=lambda wc: feature_file(wc.dataset, "real-test"),
        reference=lambda wc: feature_file(wc.dataset, "real-train"),
        manifest=MANIFEST,
    output:
        csv=fill(REFERENCE_METRICS, file="quality.csv"),
    log:
        "logs/quality_reference/{dataset}.log",
    benchmark:
        "benchmarks/quality_reference/{dataset}.tsv"
    params:
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        evaluate=as_arg(config["evaluate"]),
        generated_split="--generated-split train",
        method="real",
        seed=SEEDS[0],


rule semantic:
    input:
        train=lambda wc: samples_dir(wc, "train"),
        manifest=MANIFEST,
        weights=classifier_weights,
    output:
        csv=fill(METRICS, file="semantic.csv"),
        predictions=fill(METRICS, file="semantic_predictions.csv"),
        epochs=fill(METRICS, file="semantic_epochs.csv"),
    log:
        "logs/semantic/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/semantic/{dataset}/{method}/seed{seed}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
        gpu=CLASSIFIER_GPU,
    params:
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        evaluate=as_arg(config["evaluate"]),
        train_split="",
        method=lambda wc: wc.method,
        seed=lambda wc: wc.seed,
    shell:
        "fairdiff semantic --train {input.train} {params.train_split} "
        "--manifest {input.manifest} --dataset {params.dataset} --evaluate {params.evaluate} "
        "--name {wildcards.dataset} --method {params.method} --seed {params.seed} "
        "--threads {threads} --out {output.csv} --predictions {output.predictions} "
        "--epochs-out {output.epochs} > {log} 2>&1"


# The classifier trained on the real training images: the ceiling the runs are compared with.
use rule semantic as semantic_reference with:
    input:
        train=MANIFEST,
        manifest=MANIFEST,
        weights=classifier_weights,
    output:
        csv=fill(REFERENCE_METRICS, file="semantic.csv"),
        predictions=fill(REFERENCE_METRICS, file="semantic_predictions.csv"),
        epochs=fill(REFERENCE_METRICS, file="semantic_epochs.csv"),
    log:
        "logs/semantic_reference/{dataset}.log",
    benchmark:
        "benchmarks/semantic_reference/{dataset}.tsv"
    params:
        train_split="--train-split train",
        method="real",
        seed=SEEDS[0],


rule measure:
    input:
        table=lambda wc: samples_dir(wc, "test"),
    output:
        csv=fill(METRICS, file="measured.csv"),
        per_image=fill(METRICS, file="measured_images.csv"),
    log:
        "logs/measure/{dataset}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/measure/{dataset}/{method}/seed{seed}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        evaluate=as_arg(config["evaluate"]),
        split="",
        method=lambda wc: wc.method,
        seed=lambda wc: wc.seed,
    shell:
        "fairdiff measure --table {input.table} {params.split} --dataset {params.dataset} "
        "--evaluate {params.evaluate} --name {wildcards.dataset} --method {params.method} "
        "--seed {params.seed} --threads {threads} --out {output.csv} "
        "--per-image {output.per_image} > {log} 2>&1"


# The same measurement on the real test images: what a perfect generator would reach.
use rule measure as measure_reference with:
    input:
        table=MANIFEST,
    output:
        csv=fill(REFERENCE_METRICS, file="measured.csv"),
        per_image=fill(REFERENCE_METRICS, file="measured_images.csv"),
    log:
        "logs/measure_reference/{dataset}.log",
    benchmark:
        "benchmarks/measure_reference/{dataset}.tsv"
    params:
        split="--split test",
        method="real",
        seed=SEEDS[0],
