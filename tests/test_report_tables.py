"""The table builders: numbers in = numbers out, ± and best marks, the three file formats."""

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fairdiffusion.errors import FairDiffError
from fairdiffusion.report import metrics, tables
from fairdiffusion.report.render import mean_std, number
from report_fixtures import measured_rows, quality_rows, row, semantic_rows, write

FID = {"baseline": [20.0, 22.0, 21.0], "fairdiffusion": [18.0, 19.5, 18.7], "random": [25, 24, 26]}
IS = {"baseline": [3.0, 3.2, 3.1], "fairdiffusion": [2.8, 2.9, 3.0], "random": [3.5, 3.6, 3.4]}


def quality_frame():
    rows = [r for m in FID for s in range(3)
            for r in quality_rows(m, s, FID[m][s], IS[m][s], 0.01 * FID[m][s])]
    return pd.DataFrame(rows)


def parse(cell: str) -> tuple[float, float]:
    mean, std = re.match(r"^(-?[\d.]+) ± ([\d.]+)", cell).groups()
    return float(mean), float(std)


def cell(table, column, method, task=None):
    text = table.text
    mask = text["method"] == method
    if task is not None:
        mask &= text["task"] == task
    return text.loc[mask, column].item(), table.best.loc[mask, column].item()


def test_number_formats():
    assert mean_std(0.12345, 0.0123, 3) == "0.123 ± 0.012"
    assert mean_std(21.0, 1.0, 3) == "21.0 ± 1.0"
    assert mean_std(1234.5, 150.0, 2) == "1234 ± 150"
    assert mean_std(0.5, float("nan"), 1) == "0.5000"          # one seed: no spread shown
    assert mean_std(2.0, 0.0, 3) == "2.000 ± 0"
    assert mean_std(2.0, 0.1, 2, n_expected=3) == "2.00 ± 0.10 (n=2)"
    assert mean_std(float("nan"), 1.0, 3) == "–"
    assert number(0.000123456) == "0.0001235"                  # never scientific notation


def test_quality_numbers_and_direction_aware_best():
    table = tables.quality(quality_frame())
    fid, is_ = "FID ↓ [domain]", "IS ↑ [domain]"
    assert list(table.text.columns[:4]) == ["method", fid, is_, "KID ↓ [domain]"]
    assert list(table.text["method"]) == ["baseline", "fairdiffusion", "random"]
    for method in FID:
        for column, values in ((fid, FID[method]), (is_, IS[method])):
            mean, std = parse(cell(table, column, method)[0])
            assert mean == pytest.approx(np.mean(values), abs=0.051)
            assert std == pytest.approx(np.std(values, ddof=1), abs=0.051)
    # Lowest FID and highest IS win, whichever arm it is.
    assert [cell(table, fid, m)[1] for m in FID] == [False, True, False]
    assert [cell(table, is_, m)[1] for m in FID] == [False, False, True]
    assert "ES-FID ↓ race [domain]" in table.text.columns
    assert "ES-IS ↑ gender [domain]" in table.text.columns
    assert not any(":" in c for c in table.text.columns)  # group-wise values are not here
    assert "3 seeds" in table.note


def test_directions():
    assert [metrics.direction(m) for m in ["FID", "ES-FID", "KID", "FID-gap", "accuracy-gap",
                                           "DPD", "EOD"]] == ["lower"] * 7
    assert [metrics.direction(m) for m in ["IS", "ES-IS", "AUC", "ES-AUC", "accuracy",
                                           "ES-accuracy", "precision", "recall"]] == ["higher"] * 8
    assert metrics.direction("novelty") is None
    assert metrics.label("ES-FID", "race", extractor="domain") == "ES-FID ↓ race [domain]"
    assert metrics.label("AUC", "race", "Black") == "AUC ↑ race: Black"


def test_quality_tables_show_matched_and_raw_values_side_by_side():
    # the raw twin of every matched row, 3 higher (small groups punished for their size)
    frame = quality_frame()
    raw = frame[frame["metric"].isin(["FID", "ES-FID", "IS"])].assign(
        metric=lambda f: f["metric"] + "-raw", value=lambda f: f["value"] + 3)
    extra = [row(m, s, metric, FID[m][s] / 2) for m in FID for s in range(3)
             for metric in ("FID-inf", "MiFID")]
    frame = pd.concat([frame, raw, pd.DataFrame(extra)], ignore_index=True)
    table = tables.quality(frame)
    columns = list(table.text.columns)
    for column in ("FID ↓ [domain]", "FID-raw ↓ [domain]", "FID-inf ↓ [domain]",
                   "MiFID ↓ [domain]", "ES-FID ↓ race [domain]", "ES-FID-raw ↓ race [domain]"):
        assert column in columns, column
    assert columns.index("FID ↓ [domain]") < columns.index("FID-raw ↓ [domain]")
    mean, _ = parse(cell(table, "FID-raw ↓ [domain]", "baseline")[0])
    assert mean == pytest.approx(np.mean(FID["baseline"]) + 3, abs=0.051)
    assert "size-matched" in table.note and "-raw = each at its own size" in table.note
    groups = tables.groups(frame)
    assert {"FID ↓ race: Asian [domain]", "FID-raw ↓ race: Asian [domain]",
            "IS ↑ race: Asian [domain]"} <= set(groups.text.columns)
    assert "IS-raw ↑ race: Asian [domain]" not in groups.text.columns
    assert "size-matched" in groups.note


def test_best_ties_are_all_marked_and_unknown_metrics_never():
    frame = pd.DataFrame([row("a", 0, "FID", 5.0), row("b", 0, "FID", 5.0), row("c", 0, "FID", 6.0),
                          row("a", 0, "KID", 1.0), row("b", 0, "KID", 2.0)])
    summary = tables.stats.seed_summary(frame)
    summary["column"] = summary["metric"]
    assert list(tables.mark_best(summary, [])) == [True, True, False, True, False]
    odd = pd.DataFrame([row("a", 0, "novelty", 1.0), row("b", 0, "novelty", 2.0)])
    summary = tables.stats.seed_summary(odd).assign(column="novelty")
    assert not tables.mark_best(summary, []).any()


def test_groups_table_has_every_group():
    table = tables.groups(quality_frame())
    for attribute, groups in {"race": ["Asian", "Black", "White"],
                              "gender": ["Female", "Male"]}.items():
        for group in groups:
            assert f"FID ↓ {attribute}: {group} [domain]" in table.text.columns
            assert f"IS ↑ {attribute}: {group} [domain]" in table.text.columns
    # fixture: group k of an attribute has FID + k
    mean, _ = parse(cell(table, "FID ↓ race: White [domain]", "baseline")[0])
    assert mean == pytest.approx(np.mean(FID["baseline"]) + 2, abs=0.051)


def test_semantic_reference_shown_but_never_best():
    rows = semantic_rows("real", 0, 0.95)
    for s in range(2):
        rows += semantic_rows("baseline", s, 0.70 + 0.01 * s)
        rows += semantic_rows("fairdiffusion", s, 0.75)
    table = tables.semantic(pd.DataFrame(rows))
    assert list(table.text.columns[:4]) == ["task", "method", "AUC ↑", "ES-AUC ↑ race"]
    assert list(table.text["method"][:3]) == ["real (reference)", "baseline", "fairdiffusion"]
    for task in ["glaucoma", "cup_disc"]:
        assert cell(table, "AUC ↑", "real (reference)", task)[1] is False
        assert cell(table, "AUC ↑", "fairdiffusion", task)[1] is True
        assert cell(table, "AUC ↑", "baseline", task)[1] is False
    # the reference has one value where the arms have two: the cell says so
    assert cell(table, "AUC ↑", "real (reference)", "glaucoma")[0] == "0.9500 (n=1)"
    mean, std = parse(cell(table, "AUC ↑", "baseline", "glaucoma")[0])
    assert mean == pytest.approx(0.705, abs=5e-4) and std == pytest.approx(0.00707, abs=5e-4)


def test_quality_tables_show_the_perfect_generator_row_without_letting_it_compete():
    """The real training images against the real test images are the floor of every group
    disparity: shown in the quality and groups tables, never best though their FID is lowest."""
    frame = pd.DataFrame(quality_rows("real", 0, 0.5, 3.0, 0.0001) + quality_rows("baseline", 0, 4.0, 2.0, 0.01)
                         + quality_rows("fairdiffusion", 0, 3.0, 2.5, 0.02))
    name = "real train vs test (perfect generator)"
    for table in (tables.quality(frame), tables.groups(frame)):
        assert list(table.text["method"]) == [name, "baseline", "fairdiffusion"]
        assert cell(table, "FID ↓ [domain]" if "FID ↓ [domain]" in table.text.columns
                    else "FID ↓ race: Asian [domain]", name)[1] is False
        assert "perfect generator" in table.note
    quality_table = tables.quality(frame)
    assert cell(quality_table, "FID ↓ [domain]", "fairdiffusion") == ("3.000", True)
    assert cell(quality_table, "FID ↓ [domain]", name) == ("0.5000", False)


def test_measured_has_ceiling_row():
    rows = measured_rows("real", 0, 0.98) + measured_rows("baseline", 0, 0.6) \
        + measured_rows("fairdiffusion", 0, 0.7)
    table = tables.measured(pd.DataFrame(rows))
    assert "real images (ceiling)" in set(table.text["method"])
    assert "accuracy ↑ race: Black" in table.text.columns
    assert cell(table, "accuracy ↑", "fairdiffusion", "glaucoma") == ("0.7000", True)
    assert cell(table, "accuracy ↑", "real images (ceiling)", "glaucoma") == ("0.9800", False)


def test_paired_lists_worse_results_with_p_values():
    frame = quality_frame()
    table = tables.paired(frame, "baseline")
    text = table.text.set_index(["arm", "metric"])
    # fairdiffusion: lower FID (better), lower IS (worse) -- both listed
    assert text.loc[("fairdiffusion", "FID ↓ [domain]"), "effect"] == "better"
    assert text.loc[("fairdiffusion", "IS ↑ [domain]"), "effect"] == "worse"
    assert text.loc[("random", "FID ↓ [domain]"), "effect"] == "worse"
    expected = stats.ttest_rel(FID["fairdiffusion"], FID["baseline"]).pvalue
    assert text.loc[("fairdiffusion", "FID ↓ [domain]"), "p (paired t-test)"] == f"{expected:.3f}"
    delta, _ = parse(text.loc[("fairdiffusion", "FID ↓ [domain]"), "Δ (arm − baseline)"])
    assert delta == pytest.approx(np.mean(np.subtract(FID["fairdiffusion"], FID["baseline"])),
                                  abs=0.051)
    assert set(table.text["arm"]) == {"fairdiffusion", "random"}
    assert not any(":" in m for m in table.text["metric"])  # overall and ES metrics only
    assert not table.best.to_numpy().any()


def test_formats(tmp_path):
    table = tables.quality(quality_frame())
    csv, md, tex = table.write(tmp_path / "quality_x")
    written = pd.read_csv(csv)
    assert written.loc[1, "FID ↓ [domain]"].endswith(" *")
    assert not written.loc[0, "FID ↓ [domain]"].endswith(" *")
    text = md.read_text()
    assert "| method" in text and "**" in text and "±" in text
    latex = tex.read_text()
    for command in (r"\toprule", r"\midrule", r"\bottomrule", r"\textbf{", r"$\pm$",
                    r"$\downarrow$", r"$\uparrow$", r"\begin{tabular}{lrrr"):
        assert command in latex
    assert "±" not in latex and "↓" not in latex
    semantic = tables.semantic(pd.DataFrame(semantic_rows("baseline", 0, 0.7)
                                            + semantic_rows("random", 0, 0.8)))
    assert r"cup\_disc" in semantic.latex()


def test_cli_writes_three_files_with_provenance_and_rejects_bad_input(tmp_path):
    metrics_csv = write(tmp_path / "q.csv", quality_frame().to_dict("records"))
    out = tmp_path / "tables" / "quality_synthfundus"
    cmd = [sys.executable, "-m", "fairdiffusion.cli", "table", "quality", "--metrics",
           str(metrics_csv), "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "quality_synthfundus.csv", "quality_synthfundus.md", "quality_synthfundus.run_info.json",
        "quality_synthfundus.tex"]
    info = json.loads((out.parent / "quality_synthfundus.run_info.json").read_text())
    assert info["settings"]["metrics"] == [str(metrics_csv)] and info["versions"]["pandas"]

    bad = tmp_path / "bad.csv"
    quality_frame().drop(columns="extractor").to_csv(bad, index=False)
    out2 = tmp_path / "tables2" / "quality"
    done = subprocess.run([*cmd[:6], str(bad), "--out", str(out2)], capture_output=True,
                          text=True)
    assert done.returncode == 2
    assert "bad.csv" in done.stderr and "extractor" in done.stderr
    assert not out2.parent.exists() or not any(out2.parent.iterdir())


def test_bad_inputs_name_the_problem(tmp_path):
    frame = quality_frame()
    with pytest.raises(FairDiffError, match="duplicate"):
        tables._check_unique(pd.concat([frame, frame.iloc[:1]]))
    with pytest.raises(FairDiffError, match="no group-wise FID/IS"):
        tables.groups(frame[frame["group"] == "all"])
    with pytest.raises(FairDiffError, match="baseline arm 'nope'"):
        tables.paired(frame, "nope")
    with pytest.raises(FairDiffError, match="one dataset"):
        tables.quality(pd.concat([frame, frame.assign(dataset="other")]))
    text = tmp_path / "text.csv"
    frame.assign(value="high").to_csv(text, index=False)
    with pytest.raises(FairDiffError, match="non-numeric"):
        metrics.read([text])
