# FairDiffusion pipeline: data -> latents -> training (3 arms) -> sampling -> metrics -> tables
# and figures -> report. Stages live in workflow/rules/; the work is done by `fairdiff <stage>`.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/download.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/latents.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/study.smk"
include: "workflow/rules/preflight.smk"


rule all:
    default_target: True
    input:
        all_targets(),
