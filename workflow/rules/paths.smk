# The results layout, owned here: every path the pipeline writes, as a template whose
# {wildcards} the rules fill. Rules and their helpers name these templates; nothing else spells
# a results path, and no code reads a run back from a path (CSVs carry method and seed columns;
# rules pass them as arguments).
#
# {results}/                                   config "results"
#   data/{dataset}/manifest.csv, images/       prepare_data: the common manifest and its PNGs
#   models/{dataset}/base/                     base_model: the tiny stack (+ vae_ceiling.csv)
#   models/{dataset}/extractor/                train_extractor: the domain feature extractor
#   models/{dataset}/{method}/seed{seed}/      train: unet/, train_log.csv, bo_trajectory.csv,
#                                              run_info.json
#   checkpoints/{dataset}/{method}/seed{seed}/ train: resumable checkpoints (not an output)
#   latents/{dataset}/{split}/latents.safetensors         cache_latents
#   samples/{dataset}/{method}/seed{seed}/{split}/        sample: PNGs and prompts.csv
#   features/{dataset}/{extractor}/{imageset}.safetensors extract_features
#   metrics/{dataset}/{method}/seed{seed}/{file}          quality, semantic, measure: tidy
#                                              CSVs (+ per-image predictions and measurements)
#   metrics/{dataset}/real/{file}              quality_reference, semantic_reference, measure_reference
#   tables/{kind}_{dataset}.csv, .md, .tex     table
#   figures/{kind}_{dataset}.png (.pdf, .svg)  figure
#   study/{dataset}/                           study_page
# resources/{dataset}/download.done            download (outside results: one per machine)
# resources/weights-inception-...pth           download_inception
# logs/{rule}/..., benchmarks/{rule}/...       one log and one benchmark per job

RESULTS = config["results"]
# A trained run: one arm (method) and seed on one dataset.
RUN = "{dataset}/{method}/seed{seed}"

MANIFEST = f"{RESULTS}/data/{{dataset}}/manifest.csv"
BASE_MODEL = f"{RESULTS}/models/{{dataset}}/base"
VAE_CEILING = f"{BASE_MODEL}/vae_ceiling.csv"
EXTRACTOR_MODEL = f"{RESULTS}/models/{{dataset}}/extractor"
RUN_FILE = f"{RESULTS}/models/{RUN}/{{file}}"
CHECKPOINTS = f"{RESULTS}/checkpoints/{RUN}"
LATENTS = f"{RESULTS}/latents/{{dataset}}/{{split}}/latents.safetensors"
SAMPLES = f"{RESULTS}/samples/{RUN}/{{split}}"
FEATURES = f"{RESULTS}/features/{{dataset}}/{{extractor}}/{{imageset}}.safetensors"
METRICS = f"{RESULTS}/metrics/{RUN}/{{file}}"
REFERENCE_METRICS = f"{RESULTS}/metrics/{{dataset}}/real/{{file}}"
# Tables and figures: the stem, as `fairdiff table/figure --out` takes it (it adds the formats).
TABLE = f"{RESULTS}/tables/{{kind}}_{{dataset}}"
FIGURE = f"{RESULTS}/figures/{{kind}}_{{dataset}}"
STUDY_FILE = f"{RESULTS}/study/{{dataset}}/{{file}}"
DOWNLOAD_DONE = "resources/{dataset}/download.done"
INCEPTION_WEIGHTS = "resources/weights-inception-2015-12-05-6726825d.pth"


def fill(template, **values):
    """`template` with the given wildcards filled in and the others left as wildcards."""
    return expand(template, **values, allow_missing=True)[0]
