# Helpers of evaluate.smk: where an image set's table, features and extractor live.

EXTRACTOR = config["evaluate"]["extractor"]
# The torchvision semantic classifiers train on a GPU, the small CNN on a CPU.
CLASSIFIER_GPU = int(config["evaluate"]["classifier"]["backbone"] != "small")


def manifest_path(wildcards):
    return f"{RESULTS}/data/{wildcards.dataset}/manifest.csv"


def samples_dir(wildcards, split, method=None, seed=None):
    method = method or wildcards.method
    seed = wildcards.seed if seed is None else seed
    return f"{RESULTS}/samples/{wildcards.dataset}/{method}/seed{seed}/{split}"


def feature_file(dataset, imageset):
    return f"{RESULTS}/features/{dataset}/{EXTRACTOR}/{imageset}.safetensors"


def extractor_input(wildcards):
    """The domain extractor folder, or the Inception weights file (the CLI names a missing one)."""
    if wildcards.extractor == "domain":
        return f"{RESULTS}/models/{wildcards.dataset}/extractor"
    return config["evaluate"]["inception_weights"] or []


def classifier_weights(wildcards):
    """The semantic classifier's initial weights (download_torchvision_weights), or nothing."""
    return config["evaluate"]["classifier"]["backbone_weights"] or []


def real_split_arg(imageset):
    """--split of a real image set (real-test, real-train); none for a run's samples."""
    if imageset.startswith("real-"):
        return f"--split {imageset.removeprefix('real-')}"
    return ""


def imageset_table(wildcards):
    """What an image set's features are extracted from: the manifest, or a run's samples."""
    if wildcards.imageset.startswith("real-"):
        return manifest_path(wildcards)
    method, seed = wildcards.imageset.removesuffix("-test").rsplit("-seed", 1)
    return samples_dir(wildcards, "test", method, seed)
