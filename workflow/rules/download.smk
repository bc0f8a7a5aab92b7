# Downloads: one rule for every dataset, `download`, with the {dataset} wildcard. It fetches the
# configured source into resources/{dataset}/ (FairGenMed from Hugging Face, HAM10000 from its
# Dataverse archive; CheXpert is only checked, it needs registration) and writes the marker
# download.done (JSON: source, sha256s) last. Checksums are verified by `fairdiff download`
# before extraction (download.sha256), since the archive itself is not kept; HTTP downloads
# resume from resources/.{dataset}.download/*.part, so `retries` continue where they stopped.
# Local rule: cluster compute nodes often have no internet access.


localrules:
    download,
    download_inception,


rule download:
    output:
        marker=ensure(DOWNLOAD_DONE, non_empty=True),
    log:
        "logs/download/{dataset}.log",
    retries: 2
    conda:
        "../../envs/train.yaml"
    resources:
        mem_mb=2000,
        runtime=720,
    params:
        # only what the download depends on: other dataset keys must not trigger a re-download
        dataset=lambda wc: as_arg(
            {key: dataset_cfg(wc)[key] for key in ("source", "download")}
        ),
        out=lambda wc, output: os.path.dirname(output.marker),
    shell:
        "fairdiff download --name {wildcards.dataset} --dataset {params.dataset} "
        "--out {params.out} > {log} 2>&1"


rule download_inception:
    output:
        weights=INCEPTION_WEIGHTS,
    log:
        "logs/download_inception.log",
    retries: 2
    conda:
        "../../envs/evaluate.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        # torch-fidelity's release of the TF-ported FID Inception weights
        url="https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth",
    shell:
        "fairdiff download --url {params.url} --sha256-prefix 6726825d "
        "--out {output.weights} > {log} 2>&1"
