"""FairDiffusion: fair Bayesian perturbation for latent diffusion models, as a Snakemake pipeline."""

__version__ = "0.1.0"
