"""Evaluation of generated images: features once, then quality, semantic and measured metrics.

Modules: `images` (image sets and groups), `cnn` (the small classifier shared by the domain
extractor and the train-on-synthetic classifiers), `extractor` (domain feature extractor,
registered with torch-fidelity), `features` (features of an image set, cached once),
`quality` (FID/KID/IS/PR overall and by group, size-matched and raw; FID-inf, MiFID),
`semantic` (train on synthetic, test on real), `measured` (SynthFundus measured-label
accuracy), `equity` (ES-metrics, and the one table of metric directions), `stats` (seeds,
bootstrap, paired comparisons), `tidy` (the metric CSV rows).
"""
