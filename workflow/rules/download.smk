# Downloads: one rule for every dataset, `download`, with the {dataset} wildcard. It fetches the
# configured source into resources/{dataset}/ (FairGenMed from Hugging Face, HAM10000 from its
# Dataverse archive; CheXpert is only checked, it needs registration) and writes the marker
# download.done (JSON: source, sha256s) last. Checksums are verified by `fairdiff download`
# before extraction (download.sha256), since the archive itself is not kept; HTTP downloads
# resume from resources/.{dataset}.download/*.part, so `retries` continue where they stopped.
# download_model (only with a Hugging Face Hub id as model.pretrained): `fairdiff download-model`
# fetches the pretrained diffusers model once (or takes it from a pre-filled Hugging Face cache,
# HF_HOME; HF_HUB_OFFLINE=1 for no network) into HUB_MODEL_DIR with its done-file (JSON: id,
# requested and resolved revision, sha256 of every weights file) written last; every rule that
# reads the stack depends on that file (base_model_input in common.smk). The rule exists only for
# a Hub id, since its output path is the id's.
# Local rules: cluster compute nodes often have no internet access.

# torch-fidelity's release of the TF-ported FID Inception weights (also checked by preflight)
INCEPTION_URL = "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"


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


if HUB_MODEL:

    localrules:
        download_model,

    rule download_model:
        output:
            marker=ensure(f"{HUB_MODEL_DIR}/download.done", non_empty=True),
        log:
            "logs/download_model.log",
        retries: 2
        conda:
            "../../envs/train.yaml"
        resources:
            mem_mb=2000,
            runtime=240,
        params:
            id=HUB_MODEL,
            revision=shlex.quote(config["model"]["revision"] or "main"),
            out=lambda wc, output: os.path.dirname(output.marker),
        shell:
            "fairdiff download-model --id {params.id} --revision {params.revision} "
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
        url=INCEPTION_URL,
    shell:
        "fairdiff download --url {params.url} --sha256-prefix 6726825d "
        "--out {output.weights} > {log} 2>&1"


# ImageNet weights of a torchvision classifier (evaluate.classifier.backbone_weights). The file
# names of torchvision's published weights carry the first 8 hex digits of their sha256, which
# the download verifies.
TORCHVISION_WEIGHTS = "resources/torchvision/{name}-{sha256_prefix}.pth"
TORCHVISION_URL = "https://download.pytorch.org/models/{name}-{sha256_prefix}.pth"


rule download_torchvision_weights:
    output:
        weights=TORCHVISION_WEIGHTS,
    log:
        "logs/download_torchvision_weights/{name}-{sha256_prefix}.log",
    wildcard_constraints:
        name=r"[a-z0-9_]+",
        sha256_prefix=r"[0-9a-f]{8}",
    retries: 2
    localrule: True
    conda:
        "../../envs/evaluate.yaml"
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        url=lambda wc: TORCHVISION_URL.format(
            name=wc.name, sha256_prefix=wc.sha256_prefix
        ),
    shell:
        "fairdiff download --url {params.url} --sha256-prefix {wildcards.sha256_prefix} "
        "--out {output.weights} > {log} 2>&1"
