"""The validity study (`fairdiff study`) on fixture runs with known effects, and the statistics
it adds to fairdiffusion.evaluate.stats (paired t-interval, power, MDE, pairs needed)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from fairdiffusion import cli
from fairdiffusion.evaluate import measured, stats, tidy
from fairdiffusion.report.study import compute

DATASET = "synthfundus"
ATTRS = {"race": ["Asian", "Black", "White"], "gender": ["Female", "Male"]}
LABELS = {"cup_disc": ["normal", "borderline", "abnormal"],
          "glaucoma": ["non-glaucoma", "glaucoma"]}
BASE = {"Asian": 0.60, "Black": 0.55, "White": 0.90}
SEED_OFFSET = [-0.03, 0.0, 0.02, 0.04, -0.01]
N_TEST = 600
WINDOW = 30
SETTINGS = {"attribute": "race", "task": "cup_disc", "baseline": "baseline", "level": 0.95,
            "power": 0.8, "bootstrap": 200, "permutations": 50, "min_seeds": 5,
            "ceiling_min": 0.9, "majority_band": [0.85, 0.95], "minority_band": [0.5, 0.7]}


# -- statistics added to stats.py ----------------------------------------------------------------


def test_paired_mean_ci_is_scipys_paired_t_interval():
    rng = np.random.default_rng(1)
    arm, base = rng.normal(0.3, 1, 7), rng.normal(0, 1, 7)
    expected = sps.ttest_rel(arm, base).confidence_interval(0.9)
    lower, upper = stats.paired_mean_ci(arm - base, 0.9)
    assert lower == pytest.approx(expected.low) and upper == pytest.approx(expected.high)
    assert all(math.isnan(v) for v in stats.paired_mean_ci([0.2]))


@pytest.mark.parametrize("n", [3, 5, 10])
def test_mde_is_detected_with_the_asked_power(n):
    """Simulated paired t-tests at the MDE reject in ~80 % of repeats; at half of it far less."""
    sd, reps = 0.2, 20000
    mde = stats.minimum_detectable_effect(sd, n, alpha=0.05, power=0.8)
    rng = np.random.default_rng(n)

    def rejection_rate(effect):
        diff = rng.normal(effect, sd, (reps, n))
        t = diff.mean(1) / (diff.std(1, ddof=1) / math.sqrt(n))
        return float((np.abs(t) > sps.t.ppf(0.975, n - 1)).mean())

    assert rejection_rate(mde) == pytest.approx(0.8, abs=0.015)
    assert rejection_rate(mde / 2) < 0.5
    assert stats.minimum_detectable_effect(sd, n + 5) < mde


def test_pairs_needed_is_the_first_n_with_enough_power():
    n = stats.pairs_needed(0.1, 0.2)
    assert stats.paired_t_power(0.1, 0.2, n) >= 0.8 > stats.paired_t_power(0.1, 0.2, n - 1)
    mde = stats.minimum_detectable_effect
    assert mde(0.2, n) <= 0.1 < mde(0.2, n - 1)
    assert stats.pairs_needed(0.0, 0.2) is None
    assert math.isnan(stats.minimum_detectable_effect(0.2, 1))


def test_power_is_finite_where_scipys_noncentral_t_is_not():
    """Far in the tails scipy's nct gives nan; the quadrature fallback agrees with nct where both
    work and gives a finite power where nct does not (so pairs_needed does not skip small n)."""
    for df, nc, crit in [(4, 2.5, 2.776), (1, 3.0, 12.7), (9, 1.0, 2.262)]:
        expected = sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
        assert stats._power_by_quadrature(df, nc, crit) == pytest.approx(expected, rel=1e-6)
    assert math.isnan(sps.nct.cdf(-sps.t.ppf(0.975, 1), 1, 5 * math.sqrt(2) / 0.2))
    power = float(stats.paired_t_power(5.0, 0.2, 2))
    assert 0.9 < power < 1.0
    assert stats.pairs_needed(5.0, 0.2) == 2


def test_window_signal_to_noise_separates_noise_from_window_signal():
    rng = np.random.default_rng(0)
    noise = pd.DataFrame({"y": rng.normal(-0.36, 0.2, 3000), "y_vr": rng.normal(0, 0.1, 3000)})
    rows = {r["metric"]: r["value"] for r in compute.snr_rows(noise, WINDOW, 200, 0)}
    assert rows["y_within_sd"] == pytest.approx(0.2, rel=0.05)
    assert 0.7 < rows["y_snr"] < 1.4 and rows["y_snr_pvalue"] > 0.05
    # Window means that jump by +-0.1 (sd 0.1 against a noise sd of 0.2 / sqrt(30) = 0.037).
    shift = np.repeat(rng.choice([-0.1, 0.1], 100), WINDOW)
    signal = noise.assign(y=noise["y"] + shift)
    rows = {r["metric"]: r["value"] for r in compute.snr_rows(signal, WINDOW, 200, 0)}
    assert rows["y_snr"] > 2.5 and rows["y_snr_pvalue"] < 0.01


# -- fixture runs --------------------------------------------------------------------------------


def accuracy_of(method, seed, effects, rng):
    """P(correct) by group for one run: baseline + the seed's offset + the arm's effect (plus
    per-seed jitter for arms given as 'jitter')."""
    spec = effects.get(method, {})
    p = {}
    for g, base in BASE.items():
        p[g] = base + SEED_OFFSET[seed] + spec.get(g, 0.0)
        if spec.get("jitter"):
            p[g] += rng.normal(0, spec["jitter"])
    return p


def make_runs(root, effects, seeds=range(5), ceiling_black=0.99):
    """Every input of `fairdiff study` for baseline + the arms in `effects`, under root.

    Images share their uniform draws across arms of a seed (common random numbers), so the
    paired differences come from the arms' accuracy differences. Returns the study arguments
    and the per-image correctness {(method, seed): array} with the race of every image."""
    results = root / "results"
    rng = np.random.default_rng(0)
    race = rng.choice(["White", "Black", "Asian"], N_TEST, p=[0.75, 0.15, 0.10])
    gender = rng.choice(ATTRS["gender"], N_TEST)
    manifest = pd.DataFrame({"id": [f"t{i}" for i in range(N_TEST)], "split": "test",
                             "race": race, "gender": gender})
    (results / "data").mkdir(parents=True)
    manifest.to_csv(results / "data" / "manifest.csv", index=False)
    intended = rng.integers(0, 3, N_TEST)
    ids = [f"t{i}_0" for i in range(N_TEST)]
    methods = ["baseline", *effects]
    args = {k: [] for k in ("measured", "images", "quality", "semantic", "traj", "info")}
    right = {}
    for seed in seeds:
        u = np.random.default_rng(100 + seed).random(N_TEST)
        for method in methods:
            p = accuracy_of(method, seed, effects, np.random.default_rng([seed, len(method)]))
            ok = u < np.array([p[g] for g in race])
            right[method, seed] = ok.astype(float)
            cup = np.array(LABELS["cup_disc"])
            rows = pd.DataFrame({"id": ids, "race": race, "gender": gender,
                                 "cup_disc": cup[intended], "glaucoma": "glaucoma"})
            seen = pd.DataFrame({"cup_disc": cup[np.where(ok, intended, (intended + 1) % 3)],
                                 "glaucoma": "glaucoma"})
            context = {"dataset": DATASET, "method": method, "seed": seed, "extractor": "measure"}
            metric_rows = measured.evaluate(rows, measured.correctness(rows, seen, LABELS), ATTRS,
                                            1.0, 0, seed, context)
            run = results / "metrics" / method / f"seed{seed}"
            run.mkdir(parents=True)
            tidy.frame(metric_rows).to_csv(run / "measured.csv", index=False)
            per_image = pd.DataFrame({"id": ids})
            for label in LABELS:
                per_image[f"{label}:measured"] = seen[label]
                per_image[f"{label}:intended"] = rows[label]
            per_image.to_csv(run / "measured_images.csv", index=False)
            fid = 20 + seed + (2.0 if method == "fairdiffusion" else 0.0)
            tidy.frame([tidy.row({**context, "extractor": "domain"}, "FID", fid),
                        tidy.row({**context, "extractor": "domain"}, "ES-FID", fid * 1.2,
                                 "race")]).to_csv(run / "quality.csv", index=False)
            tidy.frame([tidy.row({**context, "extractor": "small"}, "AUC", 0.8, task="cup_disc"),
                        tidy.row({**context, "extractor": "small"}, "ES-AUC", 0.7, "race",
                                 task="cup_disc")]).to_csv(run / "semantic.csv", index=False)
            model = results / "models" / method / f"seed{seed}"
            model.mkdir(parents=True)
            steps = 10 * WINDOW
            traj = {"step": range(steps), "kind": "step"}
            fade = np.linspace(1.0, 0.2, steps) if method.startswith("fairdiffusion") else 1.0
            for a, groups in ATTRS.items():
                for g in groups:
                    traj[f"sigma_{a}_{g}"] = (fade if g == "White" else 1.0) * np.ones(steps)
            y_rng = np.random.default_rng([seed, 7, len(method)])
            traj["y"] = y_rng.normal(-0.36, 0.2, steps)
            traj["y_vr"] = y_rng.normal(-0.1, 0.05, steps)
            pd.DataFrame(traj).to_csv(model / "bo_trajectory.csv", index=False)
            (model / "run_info.json").write_text(json.dumps({"settings": {"seconds": 600.0}}))
            args["measured"].append(run / "measured.csv")
            args["images"].append(run / "measured_images.csv")
            args["quality"].append(run / "quality.csv")
            args["semantic"].append(run / "semantic.csv")
            args["traj"].append(model / "bo_trajectory.csv")
            args["info"].append(model / "run_info.json")
    ceiling = pd.DataFrame([{"dataset": DATASET, "split": "val", "attribute": a, "group": g,
                             "label": "cup_disc", "n": 30, "real_accuracy": 1.0,
                             "reconstruction_accuracy": ceiling_black if g == "Black" else 0.99}
                            for a, g in [("all", "all"), ("race", "Asian"), ("race", "Black"),
                                         ("race", "White")]])
    ceiling.to_csv(results / "vae_ceiling.csv", index=False)
    argv = ["study", "--measured", *map(str, args["measured"]),
            "--measured-images", *map(str, args["images"]),
            "--quality", *map(str, args["quality"]), "--semantic", *map(str, args["semantic"]),
            "--trajectories", *map(str, args["traj"]), "--run-info", *map(str, args["info"]),
            "--runs", *[f"{m}:{s}" for s in seeds for m in methods],
            "--manifest", str(results / "data" / "manifest.csv"),
            "--ceiling", str(results / "vae_ceiling.csv"),
            "--dataset", json.dumps({"source": "synthetic", "attributes": ATTRS, "labels": LABELS}),
            "--name", DATASET, "--methods", json.dumps(methods), "--study", json.dumps(SETTINGS),
            "--window", str(WINDOW), "--command", "snakemake study", "--out",
            str(root / "out")]
    return argv, right, race


def gap(x, race):
    accs = [x[race == g].mean() for g in BASE]
    return max(accs) - min(accs)


def effect(res, arm, metric, attribute="race", group="all", reference="baseline"):
    part = res[(res["arm"] == arm) & (res["reference"] == reference) & (res["metric"] == metric)
               & (res["task"] == "cup_disc") & (res["attribute"] == attribute)
               & (res["group"] == group)]
    assert len(part) == 1
    return part.iloc[0]


@pytest.fixture(scope="module")
def majority_worse(tmp_path_factory):
    """fairdiffusion: White -0.15, minorities unchanged (the gap closes because the best-off
    group gets worse); random: no effect, only per-seed jitter."""
    root = tmp_path_factory.mktemp("study")
    argv, right, race = make_runs(root, {"fairdiffusion": {"White": -0.15},
                                         "random": {"jitter": 0.03}})
    assert cli.main(argv) == 0
    res = pd.read_csv(root / "out" / "study.csv", keep_default_na=False, na_values=[""])
    return root / "out", res, right, race


def test_paired_effects_match_the_runs(majority_worse):
    out, res, right, race = majority_worse
    diffs = np.array([gap(right["fairdiffusion", s], race) - gap(right["baseline", s], race)
                      for s in range(5)])
    row = effect(res, "fairdiffusion", "accuracy-gap")
    assert row["n_seeds"] == 5 and row["diff"] == pytest.approx(diffs.mean())
    ci = sps.ttest_rel(diffs, np.zeros(5)).confidence_interval(0.95)
    assert (row["lower"], row["upper"]) == pytest.approx((ci.low, ci.high))
    assert row["t_pvalue"] == pytest.approx(sps.ttest_1samp(diffs, 0).pvalue)
    assert row["mde"] == pytest.approx(stats.minimum_detectable_effect(diffs.std(ddof=1), 5))
    # The image bootstrap is centred on the same difference and brackets it.
    assert row["boot_diff"] == pytest.approx(row["diff"])
    assert row["boot_lower"] <= row["diff"] <= row["boot_upper"]
    # The known effects: the gap narrows, White and overall accuracy fall, minorities do not move.
    assert row["upper"] < 0 and row["t_pvalue"] < 0.05
    assert effect(res, "fairdiffusion", "accuracy", group="White")["upper"] < 0
    assert effect(res, "fairdiffusion", "accuracy", "all")["upper"] < 0
    for g in ("Asian", "Black"):
        assert effect(res, "fairdiffusion", "accuracy", group=g)["diff"] == 0
    random_gap = effect(res, "random", "accuracy-gap")
    assert random_gap["lower"] < 0 < random_gap["upper"]
    # Secondary metrics are paired too (FID + 2 in every seed), and each BO arm meets random.
    fid = res[(res["arm"] == "fairdiffusion") & (res["reference"] == "baseline")
              & (res["metric"] == "FID")].iloc[0]
    assert fid["diff"] == pytest.approx(2.0)
    assert len(effect(res, "fairdiffusion", "accuracy-gap", reference="random")) > 0


def test_conclusion_follows_the_intervals(majority_worse):
    out, res, _, _ = majority_worse
    text = (out / "study.md").read_text()
    conclusion = text.split("## Conclusion")[1].split("##")[0]
    fd = conclusion.split("fairdiffusion vs baseline")[1].split("random vs baseline")[0]
    assert "narrowed" in fd and "but overall accuracy fell" in fd
    assert "because the best-off group (White) got worse" in fd
    rnd = conclusion.split("random vs baseline")[1].split("fairdiffusion vs random")[0]
    assert "no detectable effect" in rnd and "only changes beyond ±" in rnd
    mde = effect(res, "random", "accuracy-gap")["mde"]
    assert f"±{mde:.3f}" in rnd
    assert "Caution" not in conclusion  # every precondition holds in this fixture
    # The BO objective of the fixture is pure noise: its snr is reported.
    assert "The objective that fairdiffusion's GP is fitted to (y)" in conclusion
    # The README's section: the brief conclusion (the mechanism of a narrowed gap stays; the
    # group changes of an unchanged gap and the BO paragraph go), the primary table, the link.
    readme = (out / "readme.md").read_text()
    assert readme.startswith("## Results") and "preconditions met." in readme
    brief = readme.split("intervals:\n\n")[1].split("\n\n")[0]
    assert len(brief) < len(conclusion.strip())
    assert "because the best-off group (White) got worse" in brief
    assert "The objective that" not in brief and "Detectable group changes" not in brief
    for sentence in brief.split(". "):
        assert sentence.rstrip(".") in conclusion
    assert text.split("Per arm, mean ± sd over seeds")[1].split("| baseline")[1].split("\n")[0] \
        in readme
    assert f"[{out.as_posix()}/study.md]({out.as_posix()}/study.md)" in readme


def test_outputs_hold_runs_sigma_and_figures(majority_worse):
    out, _, _, _ = majority_worse
    runs = pd.read_csv(out / "runs.csv", keep_default_na=False, na_values=[""])
    final = runs[(runs["metric"] == "sigma-final") & (runs["method"] == "fairdiffusion")]
    white = final[final["group"] == "White"]["value"]
    assert len(white) == 5 and (white < 0.4).all()
    assert (final[final["group"] == "Black"]["value"] == 1.0).all()
    assert set(runs[runs["source"] == "train"]["value"]) == {600.0}
    for name in ("effects", "seeds", "sigma"):
        assert (out / f"{name}.png").stat().st_size > 0


def test_runs_are_named_by_arguments_not_by_paths(majority_worse, tmp_path, capsys):
    """The per-run files can lie anywhere: --runs says whose each is (no path is parsed)."""
    argv, _, _ = make_runs(tmp_path, {"fairdiffusion": {"White": -0.15},
                                      "random": {"jitter": 0.03}})
    flat = tmp_path / "flat"
    flat.mkdir()
    for option in ("--measured-images", "--trajectories", "--run-info"):
        i = argv.index(option) + 1
        while not argv[i].startswith("--"):
            target = flat / f"{option.strip('-')}_{i}{Path(argv[i]).suffix}"
            Path(argv[i]).rename(target)
            argv[i] = str(target)
            i += 1
    assert cli.main(argv) == 0
    expected = majority_worse[0] / "study.csv"
    assert (tmp_path / "out" / "study.csv").read_text() == expected.read_text()
    # a file that names its run must be the run --runs says it is
    info = Path(argv[argv.index("--run-info") + 1])
    info.write_text(json.dumps({"settings": {"seconds": 600.0, "method": "random", "seed": 0}}))
    argv[argv.index("--out") + 1] = str(tmp_path / "out2")
    assert cli.main(argv) == 2
    assert "written by random seed 0, but passed as the file of baseline seed 0" in \
        capsys.readouterr().err
    runs = argv.index("--runs")
    assert cli.main(argv[:runs + 1] + argv[runs + 2:]) == 2
    assert "--measured-images: 15 file(s) for 14 run(s)" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()


def test_minority_improvement_is_named_as_the_reason(tmp_path):
    argv, _, _ = make_runs(tmp_path, {"fairdiffusion": {"Asian": 0.15, "Black": 0.15}})
    assert cli.main(argv) == 0
    conclusion = (tmp_path / "out" / "study.md").read_text().split("## Conclusion")[1]
    assert "The gap closed because Asian improved" in conclusion and "Black improved" in conclusion
    assert "overall accuracy rose" in conclusion


def test_failed_preconditions_open_with_a_caution(tmp_path, monkeypatch):
    monkeypatch.setitem(BASE, "Black", 0.9)   # a minority above its calibration band
    argv, _, _ = make_runs(tmp_path, {"random": {"jitter": 0.03}}, seeds=range(3),
                           ceiling_black=0.8)
    assert cli.main(argv) == 0
    conclusion = (tmp_path / "out" / "study.md").read_text().split("## Conclusion")[1]
    assert conclusion.strip().startswith("Caution")
    assert "VAE ceiling" in conclusion and "paired seeds: 3 seeds" in conclusion
    assert "baseline calibration: baseline cup_disc accuracy" in conclusion


def test_stale_per_image_file_is_refused_without_output(tmp_path, capsys):
    argv, _, _ = make_runs(tmp_path, {"random": {"jitter": 0.03}}, seeds=range(2))
    path = tmp_path / "results" / "metrics" / "random" / "seed1" / "measured_images.csv"
    frame = pd.read_csv(path)
    frame.loc[:20, "cup_disc:measured"] = "nonsense"
    frame.to_csv(path, index=False)
    assert cli.main(argv) == 2
    assert "stale files?" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_study_target_dry_runs_with_the_study_config(root):
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "study", "--configfile", "configs/study.yaml",
         "--replace-workflow-config"], cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    planned = done.stdout
    assert "rule study_page:" in planned
    for arm in ("baseline", "fairdiffusion", "random", "balanced", "reweighted", "groupdro"):
        assert f"results/study/models/synthfundus_study/{arm}/seed7/bo_trajectory.csv" in planned
    assert "--replace-workflow-config" in planned  # the page names the command that made it


def test_paired_seeds_counts_the_seeds_every_arm_shares_with_the_baseline():
    rows = [{"method": method, "seed": seed, "source": "measured", "metric": "accuracy",
             "task": "cup_disc", "attribute": "race", "group": group, "value": value}
            for method, seeds in (("baseline", range(5)), ("fairdiffusion", range(3)),
                                  ("random", range(5)))
            for seed in seeds for group, value in BASE.items()]
    checks = compute.preconditions(pd.DataFrame(rows), None, "White", SETTINGS,
                                 {"race": list(BASE)}, ["cup_disc"])
    paired = next(c for c in checks if c["check"] == "paired seeds")
    assert paired["detail"].startswith("3 seeds shared by every arm with baseline")
    assert paired["ok"] is False                        # the design asks for 5


def test_holm_adjusts_a_family_by_hand():
    # sorted 0.01, 0.03, 0.04 (m = 3): 0.03, max(0.03, 0.06), max(0.06, 0.04); NaN stays out
    out = stats.holm([0.01, 0.04, 0.03, math.nan])
    assert out[:3] == pytest.approx([0.03, 0.06, 0.06]) and math.isnan(out[3])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_adjusted_intervals_and_holm_over_the_declared_comparisons(majority_worse):
    _, res, right, race = majority_worse
    row = effect(res, "fairdiffusion", "accuracy-gap")
    family = res[(res["metric"] == "accuracy-gap") & (res["attribute"] == "race")
                 & (res["task"] == "cup_disc") & (res["source"] == "measured")]
    assert row["holm_pvalue"] == pytest.approx(
        stats.holm(family["t_pvalue"].to_numpy())[list(family.index).index(row.name)])
    m = len(compute.comparisons(["baseline", "fairdiffusion", "random"], "baseline"))
    diffs = np.array([gap(right["fairdiffusion", s], race) - gap(right["baseline", s], race)
                      for s in range(5)])
    assert (row["adj_lower"], row["adj_upper"]) == pytest.approx(
        stats.paired_mean_ci(diffs, 1 - 0.05 / m))
    assert row["adj_lower"] < row["lower"] and row["upper"] < row["adj_upper"]


def test_declared_comparisons_are_the_family():
    methods = ["baseline", "fairdiffusion", "random", "groupdro"]
    declared = [["fairdiffusion", "baseline"], ["groupdro", "baseline"]]
    assert compute.comparisons(methods, "baseline", declared) == [
        ("fairdiffusion", "baseline"), ("groupdro", "baseline")]
    with pytest.raises(Exception, match=r"study.comparisons.1.*'balanced'"):
        compute.comparisons(methods, "baseline", [["random", "baseline"], ["balanced", "baseline"]])


def test_the_verdict_reads_the_adjusted_interval():
    from fairdiffusion.report.study import text

    row = {"diff": -0.05, "lower": -0.09, "upper": -0.01, "adj_lower": -0.11, "adj_upper": 0.01,
           "holm_pvalue": 0.08, "n_seeds": 8}
    assert text.verdict(row) == "none"
    assert "adjusted 95% CI -0.110 to +0.010, Holm p = 0.080" in text.fmt(row, 0.95)


def test_the_gap_precondition_reads_the_baseline_gap():
    runs = pd.DataFrame({"method": ["baseline"] * 2, "seed": [0, 1], "source": ["measured"] * 2,
                         "metric": ["accuracy-gap"] * 2, "task": ["cup_disc"] * 2,
                         "attribute": ["race"] * 2, "group": ["all"] * 2, "value": [0.2, 0.3]})
    for min_gap, ok in ((0.1, True), (0.3, False)):
        checks = compute.preconditions(runs, None, None, {**SETTINGS, "min_gap": min_gap},
                                       ATTRS, list(LABELS))
        gap = [c for c in checks if c["check"] == "baseline gap"][0]
        assert gap["ok"] is ok and "0.25" in gap["detail"]
