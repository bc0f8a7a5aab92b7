# Helpers of evaluate.smk: where an image set's table, features and extractor live.

EXTRACTOR = config["evaluate"]["extractor"]
# The torchvision semantic classifiers train on a GPU, the small CNN on a CPU.
CLASSIFIER_GPU = int(config["evaluate"]["classifier"]["backbone"] != "small")


def samples_dir(wildcards, split, method=None, seed=None):
    method = method or wildcards.method
    seed = wildcards.seed if seed is None else seed
    return SAMPLES.format(
        dataset=wildcards.dataset, method=method, seed=seed, split=split
    )


def feature_file(dataset, imageset):
    return FEATURES.format(dataset=dataset, extractor=EXTRACTOR, imageset=imageset)


def extractor_input(wildcards):
    """The domain extractor folder, or the Inception weights file (the CLI names a missing one)."""
    if wildcards.extractor == "domain":
        return EXTRACTOR_MODEL.format(dataset=wildcards.dataset)
    return config["evaluate"]["inception_weights"] or []


def classifier_weights(wildcards):
    """The semantic classifier's initial weights (download_torchvision_weights), or nothing."""
    return config["evaluate"]["classifier"]["backbone_weights"] or []


def real_split_arg(imageset):
    """--split of a real image set (real-test, real-train); none for a run's samples."""
    if imageset.startswith("real-"):
        return f"--split {imageset.removeprefix('real-')}"
    return ""


def run_imageset(method, seed):
    """The image set of a run's samples of the test prompts."""
    return f"{method}-seed{seed}-test"


# The run of each run image set (looked up, not parsed from the name).
IMAGESET_RUNS = {run_imageset(method, seed): (method, seed) for method, seed in RUNS}


def imageset_table(wildcards):
    """What an image set's features are extracted from: the manifest, or a run's samples."""
    if wildcards.imageset.startswith("real-"):
        return MANIFEST.format(dataset=wildcards.dataset)
    method, seed = IMAGESET_RUNS[wildcards.imageset]
    return samples_dir(wildcards, "test", method, seed)
