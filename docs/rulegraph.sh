#!/usr/bin/env bash
# Redraw the rule graphs that README.md shows (needs graphviz's `dot`: apt-get install graphviz).
# Run from anywhere after a change to workflow/rules/; commit the two SVGs it writes.
set -euo pipefail
cd "$(dirname "$0")/.."
snakemake --rulegraph --quiet all | dot -Tsvg > docs/rulegraph.svg
snakemake --rulegraph --quiet all --configfile configs/paper.yaml --replace-workflow-config \
    | dot -Tsvg > docs/rulegraph_paper.svg
