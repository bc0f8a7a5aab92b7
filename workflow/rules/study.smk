# The validity study (fairdiffusion.report.study): does an arm narrow the group gap, and how
# surely? Paired effects with seed-level and image-bootstrap CIs, the minimum detectable effect,
# the BO objective's signal-to-noise and a conclusion generated from the numbers, in
# results/study/{dataset}/. A named target, not part of `all`:
#   snakemake study --configfile configs/study.yaml --replace-workflow-config --cores 2
# It needs measured labels, so it covers the datasets with source: synthetic.


include: "study_common.smk"


rule study_page:
    input:
        measured=lambda wc: metric_files(wc.dataset, "measured"),
        measured_images=lambda wc: study_run_files(wc, "measured_images.csv"),
        quality=lambda wc: metric_files(wc.dataset, "quality"),
        semantic=lambda wc: metric_files(wc.dataset, "semantic"),
        trajectories=lambda wc: study_run_files(wc, "bo_trajectory.csv", "models"),
        run_info=lambda wc: study_run_files(wc, "run_info.json", "models"),
        manifest=MANIFEST,
        base=base_model_input,
    output:
        md=report(
            fill(STUDY_FILE, file="study.md"),
            caption="../report/study.rst",
            category="Study",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "file": "page"},
        ),
        csv=report(
            fill(STUDY_FILE, file="study.csv"),
            caption="../report/study.rst",
            category="Study",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "file": "paired effects"},
        ),
        runs=fill(STUDY_FILE, file="runs.csv"),
        readme=fill(STUDY_FILE, file="readme.md"),
        effects=report(
            fill(STUDY_FILE, file="effects.png"),
            caption="../report/study.rst",
            category="Study",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "file": "effects figure"},
        ),
        seeds=fill(STUDY_FILE, file="seeds.png"),
        sigma=fill(STUDY_FILE, file="sigma.png"),
        extra=expand(
            STUDY_FILE,
            file=[f"{fig}.{ext}" for fig in STUDY_FIGURES for ext in FIGURE_EXTRA],
            allow_missing=True,
        ),
    log:
        "logs/study_page/{dataset}.log",
    benchmark:
        "benchmarks/study_page/{dataset}.tsv"
    localrule: True
    conda:
        "../../envs/report.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        dataset=lambda wc: as_arg(dataset_cfg(wc)),
        methods=as_arg(METHODS),
        runs=" ".join(f"{method}:{seed}" for method, seed in RUNS),
        study=as_arg(config["study"]),
        window=config["fair_bayes"]["time_window"],
        ceiling=study_ceiling,
        command=shlex.quote(study_command()),
        formats=" ".join(FIGURE_FORMATS),
        out=lambda wc, output: os.path.dirname(output.md),
    shell:
        "fairdiff study --measured {input.measured} "
        "--measured-images {input.measured_images} --quality {input.quality} "
        "--semantic {input.semantic} --trajectories {input.trajectories} "
        "--run-info {input.run_info} --runs {params.runs} --manifest {input.manifest} {params.ceiling} "
        "--dataset {params.dataset} --name {wildcards.dataset} --methods {params.methods} "
        "--study {params.study} --window {params.window} --command {params.command} "
        "--formats {params.formats} --out {params.out} > {log} 2>&1"


rule study:
    input:
        [
            STUDY_FILE.format(dataset=dataset, file=name)
            for dataset in DATASETS
            if has_measured(dataset)
            for name in STUDY_FILES
        ],
    localrule: True
