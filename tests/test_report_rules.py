"""workflow/rules/report.smk: the two rule families (table, figure) have their captions, named
targets resolve to only what they need, and (slow) the rules plus `snakemake --report` run on a
tiny stand-in for a finished pipeline."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from report_fixtures import ATTRIBUTES, pipeline_outputs

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "workflow" / "rules"
BIN = Path(sys.executable).parent
TABLES = ["quality", "groups", "semantic", "measured", "paired"]
FIGURES = ["groups", "es", "trajectory", "loss", "samples"]


def test_every_report_output_has_a_caption_file():
    text = (RULES / "report.smk").read_text()
    reports = re.findall(r"report\((.*?)\n        \)", text, flags=re.S)
    assert len(reports) == 2  # one per family
    for body in reports:
        caption = re.search(r'caption="([^"]+)"', body)
        assert caption, body
        assert (RULES / caption.group(1)).is_file(), caption.group(1)
        assert 'category="' in body
    # each family's caption has a paragraph for every kind of that family
    for family, kinds in (("table", TABLES), ("figure", FIGURES)):
        caption = (ROOT / "workflow" / "report" / f"{family}.rst").read_text()
        assert re.findall(r'kind == "(\w+)"', caption) == kinds
    snakefile = (ROOT / "Snakefile").read_text()
    workflow_caption = re.search(r'^report: "([^"]+)"', snakefile, flags=re.M)
    assert workflow_caption and (ROOT / workflow_caption.group(1)).is_file()


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    """A working directory with every input of the report rules and a Snakefile that includes
    only common.smk and report.smk (the other stages are not needed: their outputs exist)."""
    work = tmp_path_factory.mktemp("workflow")
    pipeline_outputs(work / "results")
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    dataset = config["datasets"]["synthfundus"]
    dataset["attributes"] = ATTRIBUTES
    dataset["labels"] = {"glaucoma": ["non-glaucoma", "glaucoma"],
                         "cup_disc": ["normal", "borderline", "abnormal"]}
    config.update(methods=["baseline", "fairdiffusion"], seeds=[0, 1])
    config["report"]["figure_formats"] = ["png", "pdf"]
    config.setdefault("fair_bayes", {})["time_window"] = 10
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    (work / "Snakefile").write_text(
        'configfile: "config.yaml"\n\n\n'
        f'report: "{ROOT}/workflow/report/workflow.rst"\n\n\n'
        f'include: "{RULES}/common.smk"\n'
        f'include: "{RULES}/report.smk"\n\n\n'
        "rule all:\n    default_target: True\n    input:\n        report_targets(),\n")
    return work


def snakemake(workflow, *args):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run([str(BIN / "snakemake"), "--cores", "2", *args], cwd=workflow,
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def planned(output: str) -> dict[str, int]:
    """rule -> job count from a dry run's job stats table."""
    jobs = {}
    for line in output.split("Job stats:")[-1].splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        jobs[parts[0]] = int(parts[1])
    return jobs


def test_named_targets(workflow):
    listed = snakemake(workflow, "--list-target-rules").split()
    for kind in TABLES:
        assert f"table_{kind}_synthfundus" in listed
    for kind in FIGURES:
        assert f"figure_{kind}_synthfundus" in listed
    assert "tables" in listed and "figures" in listed
    # one table needs only its own rule (the metrics already exist: nothing is retrained)
    assert planned(snakemake(workflow, "-n", "table_quality_synthfundus")) == {
        "table": 1, "table_quality_synthfundus": 1}
    by_path = planned(snakemake(workflow, "-n", "results/figures/loss_synthfundus.pdf"))
    assert by_path == {"figure": 1}
    everything = planned(snakemake(workflow, "-n"))
    assert (everything["table"], everything["figure"]) == (len(TABLES), len(FIGURES))


@pytest.mark.slow
def test_rules_and_html_report(workflow):
    snakemake(workflow)
    results = workflow / "results"
    for kind in TABLES:
        for ext in ("csv", "md", "tex"):
            assert (results / "tables" / f"{kind}_synthfundus.{ext}").stat().st_size > 0
    for kind in FIGURES:
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{kind}_synthfundus.{ext}").stat().st_size > 0
    # a rebuilt table reruns alone
    assert planned(snakemake(workflow, "-n", "table_quality_synthfundus")) == {}
    # (targets before --forcerun, which takes every rule name after it)
    assert planned(snakemake(workflow, "-n", "table_quality_synthfundus",
                             "--forcerun", "table")) == {
        "table": 1, "table_quality_synthfundus": 1}
    snakemake(workflow, "--report", "report.html")
    html = (workflow / "report.html").read_text()
    assert "Generation quality" in html and "seeds 0, 1" in html
    # each output's caption is its own kind's paragraph
    assert "Arms against the baseline" in html and "Training loss" in html
