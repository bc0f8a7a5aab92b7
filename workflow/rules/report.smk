# Report: the paper's tables and figures, and what `snakemake --report` shows. Two rule
# families, `table` and `figure`, each with a {kind} wildcard (the kinds and their inputs:
# TABLES and FIGURES in report_common.smk) and one caption; one named target per kind and
# dataset, e.g. `snakemake table_quality_synthfundus`; `snakemake tables` / `figures` build all.


include: "report_common.smk"


rule table:
    input:
        unpack(kind_inputs(TABLES)),
    output:
        csv=report(
            f"{TABLE}.csv",
            caption="../report/table.rst",
            category="Tables",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "table": "{kind}"},
        ),
        md=f"{TABLE}.md",
        tex=f"{TABLE}.tex",
    log:
        "logs/table/{kind}_{dataset}.log",
    wildcard_constraints:
        kind="|".join(TABLES),
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        inputs=input_options,
        options=lambda wc: TABLES[wc.kind][1],
        out=lambda wc, output: output.csv.removesuffix(".csv"),
    shell:
        "fairdiff table {wildcards.kind} {params.inputs} {params.options} "
        "--out {params.out} > {log} 2>&1"


rule figure:
    input:
        unpack(kind_inputs(FIGURES)),
    output:
        png=report(
            f"{FIGURE}.png",
            caption="../report/figure.rst",
            category="Figures",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "{kind}"},
        ),
        extra=expand(f"{FIGURE}.{{ext}}", ext=FIGURE_EXTRA, allow_missing=True),
    log:
        "logs/figure/{kind}_{dataset}.log",
    wildcard_constraints:
        kind="|".join(FIGURES),
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        inputs=input_options,
        options=lambda wc: FIGURES[wc.kind][1](wc),
        # the sample grid's caption names the attribute of its rows
        attribute=lambda wc: grid_attribute(wc) if wc.kind == "samples" else "",
        formats=" ".join(FIGURE_FORMATS),
        out=lambda wc, output: output.png.removesuffix(".png"),
    shell:
        "fairdiff figure {wildcards.kind} {params.inputs} {params.options} "
        "--formats {params.formats} --out {params.out} > {log} 2>&1"


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
