# Report: the paper's tables and figures, and what `snakemake --report` shows.


def report_targets():
    return expand(f"{RESULTS}/data/{{dataset}}/manifest.csv", dataset=DATASETS)
