# Evaluation: features once per image set, then quality / semantic / measured metrics per run.
# Feature sets: real-test / real-train (the manifest's test / train split; train is MiFID's
# memorization reference) and {method}-seed{seed}-test (a run's samples of the test prompts),
# under results/features/{dataset}/{extractor}/.


include: "evaluate_common.smk"


wildcard_constraints:
    imageset=r"real-test|real-train|[A-Za-z0-9_]+-seed\d+-test",
    extractor="domain|inception-v3-compat",


rule train_extractor:
    input:
        manifest=manifest_path,
    output:
        model=directory(f"{RESULTS}/models/{{dataset}}/extractor"),
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
        features=f"{RESULTS}/features/{{dataset}}/{{extractor}}/{{imageset}}.safetensors",
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
        extractor_dir=lambda wc: f"{RESULTS}/models/{wc.dataset}/extractor",
    shell:
        "fairdiff features --table {input.table} {params.split} --dataset {params.dataset} "
        "--evaluate {params.evaluate} --extractor-dir {params.extractor_dir} "
        "--threads {threads} --out {output.features} > {log} 2>&1"


rule quality:
    input:
        generated=lambda wc: feature_file(wc.dataset, f"{wc.method}-seed{wc.seed}-test"),
        samples=lambda wc: samples_dir(wc, "test"),
        real=lambda wc: feature_file(wc.dataset, "real-test"),
        reference=lambda wc: feature_file(wc.dataset, "real-train"),
        manifest=manifest_path,
    output:
        csv=f"{RESULTS}/metrics/{{dataset}}/{{method}}/seed{{seed}}/quality.csv",
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
    shell:
        "fairdiff quality --generated {input.generated} --generated-table {input.samples} "
        "--real {input.real} --reference {input.reference} --manifest {input.manifest} "
        "--dataset {params.dataset} "
        "--evaluate {params.evaluate} --name {wildcards.dataset} --method {wildcards.method} "
        "--seed {wildcards.seed} --threads {threads} --out {output.csv} > {log} 2>&1"


rule semantic_reference:
    input:
        manifest=manifest_path,
        weights=classifier_weights,
    output:
        csv=f"{RESULTS}/metrics/{{dataset}}/real/semantic.csv",
        predictions=f"{RESULTS}/metrics/{{dataset}}/real/semantic_predictions.csv",
        epochs=f"{RESULTS}/metrics/{{dataset}}/real/semantic_epochs.csv",
    log:
        "logs/semantic_reference/{dataset}.log",
    benchmark:
        "benchmarks/semantic_reference/{dataset}.tsv"
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
        seed=SEEDS[0],
    shell:
        "fairdiff semantic --train {input.manifest} --train-split train "
        "--manifest {input.manifest} --dataset {params.dataset} --evaluate {params.evaluate} "
        "--name {wildcards.dataset} --method real --seed {params.seed} --threads {threads} "
        "--out {output.csv} --predictions {output.predictions} "
        "--epochs-out {output.epochs} > {log} 2>&1"


rule semantic:
    input:
        samples=lambda wc: samples_dir(wc, "train"),
        manifest=manifest_path,
        weights=classifier_weights,
    output:
        csv=f"{RESULTS}/metrics/{{dataset}}/{{method}}/seed{{seed}}/semantic.csv",
        predictions=f"{RESULTS}/metrics/{{dataset}}/{{method}}/seed{{seed}}/semantic_predictions.csv",
        epochs=f"{RESULTS}/metrics/{{dataset}}/{{method}}/seed{{seed}}/semantic_epochs.csv",
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
    shell:
        "fairdiff semantic --train {input.samples} --manifest {input.manifest} "
        "--dataset {params.dataset} --evaluate {params.evaluate} --name {wildcards.dataset} "
        "--method {wildcards.method} --seed {wildcards.seed} --threads {threads} "
        "--out {output.csv} --predictions {output.predictions} "
        "--epochs-out {output.epochs} > {log} 2>&1"


rule measure_reference:
    input:
        manifest=manifest_path,
    output:
        csv=f"{RESULTS}/metrics/{{dataset}}/real/measured.csv",
        per_image=f"{RESULTS}/metrics/{{dataset}}/real/measured_images.csv",
    log:
        "logs/measure_reference/{dataset}.log",
    benchmark:
        "benchmarks/measure_reference/{dataset}.tsv"
    conda:
        "../../envs/evaluate.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=20,
    params:
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        evaluate=as_arg(config["evaluate"]),
        seed=SEEDS[0],
    shell:
        "fairdiff measure --table {input.manifest} --split test --dataset {params.dataset} "
        "--evaluate {params.evaluate} --name {wildcards.dataset} --method real "
        "--seed {params.seed} --threads {threads} --out {output.csv} "
        "--per-image {output.per_image} > {log} 2>&1"


rule measure:
    input:
        samples=lambda wc: samples_dir(wc, "test"),
    output:
        csv=f"{RESULTS}/metrics/{{dataset}}/{{method}}/seed{{seed}}/measured.csv",
        per_image=f"{RESULTS}/metrics/{{dataset}}/{{method}}/seed{{seed}}/measured_images.csv",
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
    shell:
        "fairdiff measure --table {input.samples} --dataset {params.dataset} "
        "--evaluate {params.evaluate} --name {wildcards.dataset} --method {wildcards.method} "
        "--seed {wildcards.seed} --threads {threads} --out {output.csv} "
        "--per-image {output.per_image} > {log} 2>&1"
