# Report: the paper's tables and figures, and what `snakemake --report` shows. Each table or
# figure has one rule (wildcard {dataset}) and one named target per dataset, e.g.
# `snakemake table_quality_synthfundus`; `snakemake tables` / `figures` build all of them.


include: "report_common.smk"


rule table_quality:
    input:
        metrics=lambda wc: metric_files(wc.dataset, "quality"),
    output:
        csv=report(
            f"{RESULTS}/tables/quality_{{dataset}}.csv",
            caption="../report/table_quality.rst",
            category="Tables",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "quality"},
        ),
        md=f"{RESULTS}/tables/quality_{{dataset}}.md",
        tex=f"{RESULTS}/tables/quality_{{dataset}}.tex",
    log:
        "logs/table_quality/{dataset}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out=lambda wc, output: output.csv.removesuffix(".csv"),
    shell:
        "fairdiff table quality --metrics {input.metrics} --out {params.out} > {log} 2>&1"


rule table_groups:
    input:
        metrics=lambda wc: metric_files(wc.dataset, "quality"),
    output:
        csv=report(
            f"{RESULTS}/tables/groups_{{dataset}}.csv",
            caption="../report/table_groups.rst",
            category="Tables",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "groups"},
        ),
        md=f"{RESULTS}/tables/groups_{{dataset}}.md",
        tex=f"{RESULTS}/tables/groups_{{dataset}}.tex",
    log:
        "logs/table_groups/{dataset}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out=lambda wc, output: output.csv.removesuffix(".csv"),
    shell:
        "fairdiff table groups --metrics {input.metrics} --out {params.out} > {log} 2>&1"


rule table_semantic:
    input:
        metrics=lambda wc: metric_files(wc.dataset, "semantic", reference=True),
    output:
        csv=report(
            f"{RESULTS}/tables/semantic_{{dataset}}.csv",
            caption="../report/table_semantic.rst",
            category="Tables",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "semantic"},
        ),
        md=f"{RESULTS}/tables/semantic_{{dataset}}.md",
        tex=f"{RESULTS}/tables/semantic_{{dataset}}.tex",
    log:
        "logs/table_semantic/{dataset}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out=lambda wc, output: output.csv.removesuffix(".csv"),
    shell:
        "fairdiff table semantic --metrics {input.metrics} --out {params.out} > {log} 2>&1"


rule table_measured:
    input:
        metrics=lambda wc: metric_files(wc.dataset, "measured", reference=True),
    output:
        csv=report(
            f"{RESULTS}/tables/measured_{{dataset}}.csv",
            caption="../report/table_measured.rst",
            category="Tables",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "measured"},
        ),
        md=f"{RESULTS}/tables/measured_{{dataset}}.md",
        tex=f"{RESULTS}/tables/measured_{{dataset}}.tex",
    log:
        "logs/table_measured/{dataset}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out=lambda wc, output: output.csv.removesuffix(".csv"),
    shell:
        "fairdiff table measured --metrics {input.metrics} --out {params.out} > {log} 2>&1"


rule table_paired:
    input:
        metrics=paired_metric_files,
    output:
        csv=report(
            f"{RESULTS}/tables/paired_{{dataset}}.csv",
            caption="../report/table_paired.rst",
            category="Tables",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "paired"},
        ),
        md=f"{RESULTS}/tables/paired_{{dataset}}.md",
        tex=f"{RESULTS}/tables/paired_{{dataset}}.tex",
    log:
        "logs/table_paired/{dataset}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        out=lambda wc, output: output.csv.removesuffix(".csv"),
    shell:
        "fairdiff table paired --metrics {input.metrics} --baseline baseline "
        "--out {params.out} > {log} 2>&1"


rule figure_groups:
    input:
        metrics=lambda wc: metric_files(wc.dataset, "quality"),
    output:
        png=report(
            f"{RESULTS}/figures/groups_{{dataset}}.png",
            caption="../report/figure_groups.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "groups"},
        ),
        extra=expand(
            f"{RESULTS}/figures/groups_{{{{dataset}}}}.{{ext}}", ext=FIGURE_EXTRA
        ),
    log:
        "logs/figure_groups/{dataset}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out=lambda wc, output: output.png.removesuffix(".png"),
        formats=" ".join(FIGURE_FORMATS),
    shell:
        "fairdiff figure groups --metrics {input.metrics} --formats {params.formats} "
        "--out {params.out} > {log} 2>&1"


rule figure_es:
    input:
        metrics=lambda wc: metric_files(wc.dataset, "quality")
        + metric_files(wc.dataset, "semantic", reference=True),
    output:
        png=report(
            f"{RESULTS}/figures/es_{{dataset}}.png",
            caption="../report/figure_es.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "es"},
        ),
        extra=expand(f"{RESULTS}/figures/es_{{{{dataset}}}}.{{ext}}", ext=FIGURE_EXTRA),
    log:
        "logs/figure_es/{dataset}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out=lambda wc, output: output.png.removesuffix(".png"),
        formats=" ".join(FIGURE_FORMATS),
    shell:
        "fairdiff figure es --metrics {input.metrics} --formats {params.formats} "
        "--out {params.out} > {log} 2>&1"


rule figure_trajectory:
    input:
        logs=lambda wc: run_files(wc.dataset, "bo_trajectory.csv"),
    output:
        png=report(
            f"{RESULTS}/figures/trajectory_{{dataset}}.png",
            caption="../report/figure_trajectory.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "trajectory"},
        ),
        extra=expand(
            f"{RESULTS}/figures/trajectory_{{{{dataset}}}}.{{ext}}", ext=FIGURE_EXTRA
        ),
    log:
        "logs/figure_trajectory/{dataset}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out=lambda wc, output: output.png.removesuffix(".png"),
        formats=" ".join(FIGURE_FORMATS),
        window=config["fair_bayes"]["time_window"],
    shell:
        "fairdiff figure trajectory --logs {input.logs} --window {params.window} "
        "--formats {params.formats} --out {params.out} > {log} 2>&1"


rule figure_loss:
    input:
        logs=lambda wc: run_files(wc.dataset, "train_log.csv"),
    output:
        png=report(
            f"{RESULTS}/figures/loss_{{dataset}}.png",
            caption="../report/figure_loss.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "loss"},
        ),
        extra=expand(
            f"{RESULTS}/figures/loss_{{{{dataset}}}}.{{ext}}", ext=FIGURE_EXTRA
        ),
    log:
        "logs/figure_loss/{dataset}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out=lambda wc, output: output.png.removesuffix(".png"),
        formats=" ".join(FIGURE_FORMATS),
    shell:
        "fairdiff figure loss --logs {input.logs} --formats {params.formats} "
        "--out {params.out} > {log} 2>&1"


rule figure_samples:
    input:
        manifest=f"{RESULTS}/data/{{dataset}}/manifest.csv",
        samples=expand(
            f"{RESULTS}/samples/{{{{dataset}}}}/{{method}}/seed{SEEDS[0]}/test",
            method=METHODS,
        ),
    output:
        png=report(
            f"{RESULTS}/figures/samples_{{dataset}}.png",
            caption="../report/figure_samples.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "samples"},
        ),
        extra=expand(
            f"{RESULTS}/figures/samples_{{{{dataset}}}}.{{ext}}", ext=FIGURE_EXTRA
        ),
    log:
        "logs/figure_samples/{dataset}.log",
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        out=lambda wc, output: output.png.removesuffix(".png"),
        formats=" ".join(FIGURE_FORMATS),
        attributes=lambda wc: as_arg(dataset_cfg(wc)["attributes"]),
        attribute=grid_attribute,
        per_group=config["report"]["grid_prompts"],
    shell:
        "fairdiff figure samples --manifest {input.manifest} --samples {input.samples} "
        "--attributes {params.attributes} --attribute {params.attribute} "
        "--per-group {params.per_group} --formats {params.formats} "
        "--out {params.out} > {log} 2>&1"


# Named targets: one per table/figure and dataset, plus `tables` and `figures`.
for _dataset in DATASETS:
    for _name, _files in report_items(_dataset).items():

        rule:
            name:
                _name
            input:
                _files,
            localrule: True


rule tables:
    input:
        report_targets("table"),
    localrule: True


rule figures:
    input:
        report_targets("figure"),
    localrule: True
