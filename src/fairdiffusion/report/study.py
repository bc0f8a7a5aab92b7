"""`fairdiff study`: the validity study -- does an arm narrow the group gap, and how surely?

Reads the metrics and training logs of every arm x seed of one dataset and writes into --out:

  study.csv    one row per comparison (arm vs reference) and endpoint: the paired difference over
               seeds, its t-interval, t-test and sign-test p-values, the image-bootstrap CI and
               p-value (primary endpoint), the minimum detectable effect (MDE) for the seeds run
               and the seeds the observed difference would need
  runs.csv     the value of every endpoint for every arm x seed (the data behind study.csv)
  study.md     the page: conclusion, preconditions, tables, figures, runtime, how it was derived
  readme.md    the same conclusion, table and figures as a README 'Results' section (paths from
               the repository root)
  effects.*, seeds.*, sigma.*   figures (--formats; png always)

Endpoints. Primary (SynthFundus labels measured on the generated images, so exact): for the
measured label study.task and the attribute study.attribute, the accuracy gap (max - min group
accuracy), overall accuracy, every group's accuracy and ES-accuracy. Secondary: every other
measured row, FID/KID overall, by group, ES and gap (quality.csv), train-on-synthetic AUC,
ES-AUC and AUC-gap (semantic.csv), the BO objective's signal-to-noise and the final sigma of
every group (bo_trajectory.csv), training seconds (run_info.json).

Comparisons: every arm vs study.baseline; each arm with a control in method.ARMS (the BO arms:
fairdiffusion, fairdiffusion_vr, controlled by random) also vs its control when that ran (does
the BO add anything over random weights?).

Statistics (fairdiffusion.evaluate.stats; p-values not adjusted for multiple comparisons):
- seed level: d_s = arm_s - reference_s over the seeds both ran; mean, sd (ddof 1), t-interval
  at study.level, paired t-test and exact sign test;
- image bootstrap (primary endpoint): test images are resampled once per replicate and the same
  ids are used for every seed and arm (the test prompts are shared); the statistic is the mean
  over seeds of the paired difference. It holds the trained models fixed, so it shows test-set
  noise only and is narrower than the seed-level CI; the conclusion uses the seed-level CI;
- MDE: the smallest |mean difference| a two-sided paired t-test on the seeds run detects with
  probability study.power at alpha = 1 - study.level, given the observed sd of the paired
  differences (noncentral t); `seeds_needed`: seeds for which the observed difference reaches
  that power.

BO objective signal-to-noise, per run, for y (the paper's objective) and y_vr (variance-reduced),
from the kind=step rows in consecutive windows of W = fair_bayes.time_window steps (full
windows only):
  within_sd   sqrt(mean over windows of the within-window variance): the noise the GP is fitted to
  between_sd  sd of the window means from successive differences, sqrt(mean(diff(m)^2) / 2),
              so the slow drift of y as the loss falls hardly counts
  snr         between_sd / (within_sd / sqrt(W)): about 1 when window means differ only by the
              noise of a W-step mean, larger when something (sigma, training) moves y
  snr_pvalue  share of random permutations of y over the steps (study.permutations) whose snr is
              at least the observed one.

The conclusion paragraph is generated from these numbers by `conclude` (never hand-written):
1. Preconditions (VAE ceiling of the primary label >= study.ceiling_min in every group; baseline
   accuracy of the largest group in study.majority_band and of the others in
   study.minority_band; at least study.min_seeds paired seeds): when one fails the paragraph
   opens with a caution that names it.
2. For each arm vs the baseline, from the seed-level CI of the gap difference: upper < 0 ->
   "narrowed", lower > 0 -> "widened", otherwise "no detectable effect" with the MDE and the
   seeds the observed change would need. Overall accuracy is always stated the same way
   ("fell" / "rose" / "did not change detectably"); a narrowed gap with fallen overall accuracy
   reads "narrowed, but overall accuracy fell".
3. Mechanism, from each group's CI: when the gap narrowed and the best-off group of the baseline
   got detectably worse while no other group got detectably better: "closed because the
   best-off group got worse, not because the others improved"; groups that improved detectably
   are named as the reason otherwise; else "no single group's change is detectable".
4. Each BO arm vs random, by the same rule as 2.
5. For each BO arm, the signal-to-noise of the objective its GP is fitted to (y, or y_vr for
   fairdiffusion_vr): within-window sd against |mean y|, snr, and in how many seeds the
   permutation p-value is below 1 - study.level.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import io
from ..cli import json_arg
from ..errors import FairDiffError
from ..method import ARMS
from ..evaluate import stats
from . import metrics as M
from .figures import FORMATS, _run_of, plt, save
from .render import number, p_value

log = logging.getLogger(__name__)

ENDPOINT = ["source", "metric", "task", "attribute", "group"]
QUALITY_METRICS = {"FID", "KID", "ES-FID", "ES-KID", "FID-gap", "KID-gap"}
SEMANTIC_METRICS = {"AUC", "ES-AUC", "AUC-gap"}
MEASURED_METRICS = {"accuracy", "ES-accuracy", "accuracy-gap"}
RESULT_COLUMNS = [
    "arm", "reference", *ENDPOINT, "n_seeds", "reference_mean", "arm_mean", "diff", "diff_sd",
    "lower", "upper", "t_pvalue", "sign_pvalue", "boot_diff", "boot_lower", "boot_upper",
    "boot_pvalue", "mde", "seeds_needed"]


# -- reading -----------------------------------------------------------------------------------


def read_tidy(paths: list[str], source: str, keep: set[str]) -> pd.DataFrame:
    """Rows of the given metrics (of the arms, not the real reference) as run values."""
    if not paths:
        return pd.DataFrame(columns=["method", "seed", *ENDPOINT, "value"])
    frame = M.read(paths)
    frame = frame[frame["metric"].isin(keep) & (frame["method"] != M.REFERENCE)]
    frame = frame.assign(source=source, seed=frame["seed"].astype(int))
    return frame[["method", "seed", *ENDPOINT, "value"]]


def read_runs(paths: list[str], reader) -> dict[tuple[str, int], object]:
    """(method, seed) -> reader(path) for files laid out as .../{method}/seed{seed}/FILE."""
    out = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FairDiffError(f"{path}: not found")
        out[_run_of(path)] = reader(path)
    return out


def read_seconds(path: Path) -> float:
    settings = json.loads(path.read_text()).get("settings", {})
    if "seconds" not in settings:
        raise FairDiffError(f"{path}: no settings.seconds (expected the run_info.json of a "
                            f"training run)")
    return float(settings["seconds"])


def read_trajectory(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in ("step", "kind", "y", "y_vr") if c not in frame.columns]
    if missing:
        raise FairDiffError(f"{path}: missing column(s) {missing}; expected a bo_trajectory.csv")
    return frame[frame["kind"] == "step"].sort_values("step", kind="stable")


def image_correctness(path: Path, task: str, labels: list[str]) -> pd.Series:
    """Per-image 0/1 correctness of `task` (a label, or `all` = every label right), by id."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    names = labels if task == "all" else [task]
    columns = [f"{n}:{kind}" for n in names for kind in ("measured", "intended")]
    missing = [c for c in ["id", *columns] if c not in frame.columns]
    if missing:
        raise FairDiffError(f"{path}: missing column(s) {missing}; expected measured_images.csv")
    right = np.ones(len(frame), dtype=float)
    for n in names:
        right *= (frame[f"{n}:measured"] == frame[f"{n}:intended"]).to_numpy()
    return pd.Series(right, index=frame["id"].to_numpy())


def groups_of(ids: pd.Index, manifest: pd.DataFrame, attribute: str, path: str) -> np.ndarray:
    """The attribute's group of each image: a generated image's id is {source id}_{copy}."""
    by_id = manifest.set_index("id")[attribute]
    source = [i if i in by_id.index else i.rsplit("_", 1)[0] for i in ids]
    unknown = [s for s in source if s not in by_id.index]
    if unknown:
        raise FairDiffError(f"{path}: image id(s) {unknown[:3]} not in the manifest")
    return by_id.loc[source].to_numpy()


# -- run values --------------------------------------------------------------------------------


def window_stats(y: np.ndarray, window: int) -> tuple[float, float, float]:
    """(within_sd, between_sd, snr) of y in consecutive full windows (see module doc)."""
    k = len(y) // window
    if k < 2:
        return math.nan, math.nan, math.nan
    blocks = y[: k * window].reshape(k, window)
    within = math.sqrt(float(blocks.var(axis=1, ddof=1).mean()))
    between = math.sqrt(float(np.mean(np.diff(blocks.mean(axis=1)) ** 2) / 2.0))
    snr = between / (within / math.sqrt(window)) if within > 0 else math.nan
    return within, between, snr


def snr_rows(trajectory: pd.DataFrame, window: int, permutations: int, seed: int) -> list[dict]:
    """BO-objective signal-to-noise rows (metric, task = y or y_vr) of one run."""
    rows = []
    rng = np.random.default_rng(seed)
    for column in ("y", "y_vr"):
        y = trajectory[column].to_numpy(dtype=float)
        y = y[np.isfinite(y)]
        within, between, snr = window_stats(y, window)
        pvalue = math.nan
        if permutations and math.isfinite(snr):
            null = [window_stats(rng.permutation(y), window)[2] for _ in range(permutations)]
            pvalue = (1 + sum(v >= snr for v in null)) / (1 + permutations)
        values = {"mean": float(y.mean()) if len(y) else math.nan, "within_sd": within,
                  "between_sd": between, "snr": snr, "snr_pvalue": pvalue}
        rows += [{"source": "bo", "metric": f"{column}_{name}", "task": column,
                  "attribute": "all", "group": "all", "value": value}
                 for name, value in values.items()]
    return rows


def sigma_columns(trajectory: pd.DataFrame, attributes: dict) -> dict[tuple[str, str], str]:
    return {(a, g): f"sigma_{a}_{g}" for a, groups in attributes.items() for g in groups
            if f"sigma_{a}_{g}" in trajectory.columns}


def sigma_rows(trajectory: pd.DataFrame, attributes: dict, window: int) -> list[dict]:
    """Mean sigma of every group over the last window of steps."""
    last = trajectory.tail(window)
    return [{"source": "bo", "metric": "sigma-final", "task": "", "attribute": a, "group": g,
             "value": float(last[column].mean())}
            for (a, g), column in sigma_columns(trajectory, attributes).items()]


def run_values(tidy: pd.DataFrame, trajectories: dict, seconds: dict, attributes: dict,
               window: int, permutations: int) -> pd.DataFrame:
    rows = [tidy]
    for (method, seed), trajectory in sorted(trajectories.items()):
        extra = (snr_rows(trajectory, window, permutations, seed)
                 + sigma_rows(trajectory, attributes, window))
        rows.append(pd.DataFrame(extra).assign(method=method, seed=seed))
    rows.append(pd.DataFrame([{"method": m, "seed": s, "source": "train", "metric": "seconds",
                               "task": "", "attribute": "all", "group": "all", "value": v}
                              for (m, s), v in sorted(seconds.items())]))
    frame = pd.concat([r for r in rows if len(r)], ignore_index=True)
    return frame[["method", "seed", *ENDPOINT, "value"]]


# -- paired effects ----------------------------------------------------------------------------


@dataclass
class Primary:
    """Per-image correctness of the primary task for every run, on the ids all runs share."""

    ids: np.ndarray
    groups: np.ndarray  # group of the primary attribute, per id
    right: dict[tuple[str, int], np.ndarray]

    def statistic(self, method: str, seeds: list[int], kind: str):
        """statistic(idx): mean over seeds of the endpoint on the resampled images `idx`;
        kind: 'overall', 'gap', or a group name."""
        names = list(dict.fromkeys(self.groups))

        def value(x: np.ndarray, groups: np.ndarray) -> float:
            if kind == "overall":
                return float(x.mean())
            if kind == "gap":
                accs = [x[groups == g].mean() for g in names if (groups == g).any()]
                return float(max(accs) - min(accs)) if len(accs) >= 2 else math.nan
            mask = groups == kind
            return float(x[mask].mean()) if mask.any() else math.nan

        def statistic(idx: np.ndarray) -> float:
            groups = self.groups[idx]
            return float(np.mean([value(self.right[method, s][idx], groups) for s in seeds]))

        return statistic


def primary_data(paths: list[str], manifest_path: str, task: str, attribute: str,
                 labels: list[str]) -> Primary:
    runs = read_runs(paths, lambda p: image_correctness(p, task, labels))
    if not runs:
        raise FairDiffError("--measured-images: no file given")
    shared = None
    for series in runs.values():
        shared = series.index if shared is None else shared.intersection(series.index)
    if shared is None or len(shared) == 0:
        raise FairDiffError("--measured-images: the runs share no image id")
    ids = np.array(sorted(shared))
    manifest = pd.read_csv(manifest_path, dtype=str, keep_default_na=False)
    if attribute not in manifest.columns:
        raise FairDiffError(f"{manifest_path}: no column '{attribute}' (study.attribute)")
    groups = groups_of(pd.Index(ids), manifest, attribute, paths[0])
    return Primary(ids, groups, {run: s.loc[ids].to_numpy() for run, s in runs.items()})


def check_consistent(primary: Primary, tidy: pd.DataFrame, task: str) -> None:
    """measured.csv's overall accuracy must be the per-image files' (same images, same task)."""
    overall = tidy[(tidy["source"] == "measured") & (tidy["metric"] == "accuracy")
                   & (tidy["task"] == task) & (tidy["attribute"] == "all")]
    for row in overall.itertuples():
        right = primary.right.get((row.method, row.seed))
        if right is not None and len(right) and abs(right.mean() - row.value) > 1e-9:
            raise FairDiffError(
                f"measured_images.csv of {row.method} seed {row.seed}: accuracy {right.mean():.4f}"
                f" of task '{task}' differs from measured.csv's {row.value:.4f} (stale files?)")


def bo_arms(methods: list[str]) -> list[str]:
    """The arms whose sigma is driven by BO (method.ARMS), in the order of `methods`."""
    return [m for m in methods if ARMS[m].optimises]


def comparisons(methods: list[str], baseline: str) -> list[tuple[str, str]]:
    pairs = [(m, baseline) for m in methods if m != baseline]
    return pairs + [(m, ARMS[m].control) for m in methods if ARMS[m].control in methods]


def bootstrap_kind(endpoint: tuple, task: str, attribute: str) -> str | None:
    source, metric, t, a, g = endpoint
    if source != "measured" or t != task:
        return None
    if metric == "accuracy-gap" and a == attribute:
        return "gap"
    if metric == "accuracy" and a == "all":
        return "overall"
    if metric == "accuracy" and a == attribute:
        return g
    return None


def effects(runs: pd.DataFrame, pairs: list[tuple[str, str]], primary: Primary | None,
            settings: dict) -> pd.DataFrame:
    """One row per comparison and endpoint (see module doc)."""
    alpha = 1.0 - settings["level"]
    rows = []
    for arm, reference in pairs:
        joined = runs[runs["method"] == arm].merge(
            runs[runs["method"] == reference], on=[*ENDPOINT, "seed"], suffixes=("_arm", "_ref"))
        for endpoint, part in joined.groupby(ENDPOINT, sort=False, dropna=False):
            part = part.sort_values("seed")
            a, b = part["value_arm"].to_numpy(), part["value_ref"].to_numpy()
            ok = np.isfinite(a) & np.isfinite(b)
            a, b, seeds = a[ok], b[ok], part["seed"].to_numpy()[ok].tolist()
            if not len(a):
                continue
            diff = a - b
            with warnings.catch_warnings():
                # equal differences in every seed: the t-test is undefined, its p reads n/a
                warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
                test = stats.paired_seed_test(a, b)
            sd = float(diff.std(ddof=1)) if len(diff) >= 2 else math.nan
            lower, upper = stats.paired_mean_ci(diff, settings["level"])
            row = {"arm": arm, "reference": reference, **dict(zip(ENDPOINT, endpoint)),
                   "n_seeds": len(diff), "reference_mean": float(b.mean()),
                   "arm_mean": float(a.mean()), "diff": float(diff.mean()), "diff_sd": sd,
                   "lower": lower, "upper": upper, "t_pvalue": test["t_pvalue"],
                   "sign_pvalue": test["sign_pvalue"],
                   "mde": stats.minimum_detectable_effect(sd, len(diff), alpha, settings["power"]),
                   "seeds_needed": stats.pairs_needed(float(diff.mean()), sd, alpha,
                                                      settings["power"])}
            kind = bootstrap_kind(endpoint, settings["task"], settings["attribute"])
            if primary is not None and kind is not None and settings["bootstrap"] > 0:
                both = [s for s in seeds
                        if (arm, s) in primary.right and (reference, s) in primary.right]
                if both:
                    boot = stats.paired_bootstrap(
                        primary.statistic(arm, both, kind),
                        primary.statistic(reference, both, kind),
                        len(primary.ids), settings["bootstrap"], 0, settings["level"])
                    row.update(boot_diff=boot["diff"], boot_lower=boot["lower"],
                               boot_upper=boot["upper"], boot_pvalue=boot["pvalue"])
            rows.append(row)
    out = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    out["seeds_needed"] = out["seeds_needed"].astype("Int64")
    out["n_seeds"] = out["n_seeds"].astype("Int64")
    return out


# -- preconditions and conclusion --------------------------------------------------------------


def group_order(runs: pd.DataFrame, settings: dict, attributes: dict) -> list[str]:
    return [g for g in attributes[settings["attribute"]]
            if ((runs["metric"] == "accuracy") & (runs["group"] == g)).any()]


def preconditions(runs: pd.DataFrame, ceiling: pd.DataFrame | None, majority: str | None,
                  settings: dict, attributes: dict, labels: list[str]) -> list[dict]:
    """Checks of the intended regime: name, ok (True/False/None = not checked), detail."""
    task, attribute, baseline = settings["task"], settings["attribute"], settings["baseline"]
    checks = []
    if ceiling is None:
        checks.append({"check": "VAE ceiling", "ok": None,
                       "detail": "no vae_ceiling.csv (pretrained VAE): not checked"})
    else:
        names = labels if task == "all" else [task]
        part = ceiling[ceiling["label"].isin(names)
                       & ceiling["attribute"].isin(["all", attribute])]
        worst = part.groupby("group", sort=False)["reconstruction_accuracy"].min()
        low = worst[worst < settings["ceiling_min"]]
        checks.append({"check": "VAE ceiling", "ok": bool(len(worst)) and low.empty,
                       "detail": (f"{task} on VAE reconstructions, lowest by group: "
                                  + ", ".join(f"{g} {number(v, 3)}" for g, v in worst.items())
                                  + f" (required >= {settings['ceiling_min']})")})
    base = runs[(runs["method"] == baseline) & (runs["source"] == "measured")
                & (runs["metric"] == "accuracy") & (runs["task"] == task)
                & (runs["attribute"] == attribute)].groupby("group")["value"].mean()
    if base.empty or majority is None:
        checks.append({"check": "baseline calibration", "ok": None,
                       "detail": f"no baseline accuracy of {task} by {attribute}"})
    else:
        parts, ok = [], True
        for group in group_order(runs, settings, attributes):
            if group not in base.index:
                continue
            low, high = settings["majority_band" if group == majority else "minority_band"]
            inside = bool(low <= base[group] <= high)   # not numpy's bool: `ok is False` below
            ok = ok and inside
            parts.append(f"{group} {number(base[group], 3)} (target {low}-{high})")
        checks.append({"check": "baseline calibration", "ok": ok,
                       "detail": f"baseline {task} accuracy: " + ", ".join(parts)})
    # A pair needs both arms: count the seeds every arm shares with the baseline.
    seeds = runs.groupby("method")["seed"].agg(set)
    base_seeds = seeds.get(baseline, set())
    n = min((len(base_seeds & s) for m, s in seeds.items() if m != baseline),
            default=len(base_seeds))
    checks.append({"check": "paired seeds", "ok": n >= settings["min_seeds"],
                   "detail": f"{n} seeds shared by every arm with {baseline} "
                             f"(design: >= {settings['min_seeds']})"})
    return checks


def fmt(row, level: float) -> str:
    """'-0.100, 95% CI -0.150 to -0.050, p = 0.003' (seed level)."""
    d = f"{row['diff']:+.3f}"
    if not math.isfinite(row["lower"]):
        return f"{d}; no interval with {row['n_seeds']} seed(s)"
    p = p_value(row["t_pvalue"])
    return (f"{d}, {round(100 * level)}% CI {row['lower']:+.3f} to {row['upper']:+.3f}, "
            f"p {p.replace('<', '< ') if p.startswith('<') else '= ' + p}")


def verdict(row) -> str:
    """'down', 'up', 'none' (CI covers 0) or 'untested' (fewer than 2 seeds)."""
    if not math.isfinite(row["lower"]):
        return "untested"
    if row["upper"] < 0:
        return "down"
    if row["lower"] > 0:
        return "up"
    return "none"


def _pick(res: pd.DataFrame, arm: str, reference: str, metric: str, attribute: str, group: str,
          task: str):
    part = res[(res["arm"] == arm) & (res["reference"] == reference) & (res["source"] == "measured")
               & (res["metric"] == metric) & (res["task"] == task)
               & (res["attribute"] == attribute) & (res["group"] == group)]
    return part.iloc[0] if len(part) else None


def gap_sentence(gap, what: str, settings: dict) -> str:
    v = verdict(gap)
    level = settings["level"]
    if v == "down":
        return f"narrowed the {what} ({fmt(gap, level)})"
    if v == "up":
        return f"widened the {what} ({fmt(gap, level)})"
    if v == "untested":
        return f"changed the {what} by {fmt(gap, level)}"
    text = f"had no detectable effect on the {what} ({fmt(gap, level)}"
    if math.isfinite(gap["mde"]):
        text += (f"; with {gap['n_seeds']} seeds only changes beyond ±{gap['mde']:.3f} are "
                 f"detectable with {round(100 * settings['power'])}% power")
        if not pd.isna(gap["seeds_needed"]):
            text += f", and the observed change would need about {gap['seeds_needed']} seeds"
    return text + ")"


def overall_sentence(overall, level: float) -> str:
    v = verdict(overall)
    word = {"down": "fell", "up": "rose", "none": "did not change detectably",
            "untested": "changed"}[v]
    return f"overall accuracy {word} ({fmt(overall, level)})"


def conclude(res: pd.DataFrame, runs: pd.DataFrame, checks: list[dict], settings: dict,
             attributes: dict, methods: list[str], window: int) -> str:
    """The conclusion paragraph, derived from the numbers by the rules of the module doc."""
    level = settings["level"]

    def f(row) -> str:
        return fmt(row, level)

    task, attribute, baseline = settings["task"], settings["attribute"], settings["baseline"]
    what = f"{task} accuracy gap across {attribute}"
    parts = []
    failed = [c for c in checks if c["ok"] is False]
    if failed:
        parts.append("Caution: the study's preconditions are not all met ("
                     + "; ".join(f"{c['check']}: {c['detail']}" for c in failed)
                     + "), so this is not the intended test.")
    groups = group_order(runs, settings, attributes)
    base_means = {g: runs[(runs["method"] == baseline) & (runs["source"] == "measured")
                          & (runs["metric"] == "accuracy") & (runs["task"] == task)
                          & (runs["attribute"] == attribute) & (runs["group"] == g)]["value"].mean()
                  for g in groups}
    best = max(base_means, key=base_means.get) if base_means else None
    for arm, reference in comparisons(methods, baseline):
        gap = _pick(res, arm, reference, "accuracy-gap", attribute, "all", task)
        overall = _pick(res, arm, reference, "accuracy", "all", "all", task)
        if gap is None or overall is None:
            parts.append(f"{arm} vs {reference}: no paired {task} results.")
            continue
        head = f"{arm} vs {reference} ({gap['n_seeds']} paired seeds): "
        if reference != baseline:
            parts.append(head + gap_sentence(gap, what, settings) + ".")
            continue
        if verdict(gap) == "down" and verdict(overall) == "down":
            sentence = (f"the {what} narrowed ({f(gap)}), but overall accuracy fell "
                        f"({f(overall)}).")
        else:
            sentence = (f"{gap_sentence(gap, what, settings)}; "
                        f"{overall_sentence(overall, level)}.")
        by_group = {g: _pick(res, arm, reference, "accuracy", attribute, g, task) for g in groups}
        worse = [g for g, r in by_group.items() if r is not None and verdict(r) == "down"]
        better = [g for g, r in by_group.items() if r is not None and verdict(r) == "up"]
        if verdict(gap) == "down":
            if better:
                sentence += (" The gap closed because " + ", ".join(
                    f"{g} improved ({f(by_group[g])})" for g in better))
                sentence += ("".join(f", while {g} got worse ({f(by_group[g])})" for g in worse)
                             + ".")
            elif best in worse:
                sentence += (f" The gap closed because the best-off group ({best}) got worse "
                             f"({f(by_group[best])}), not because the others improved.")
            elif worse:
                sentence += (" No group improved detectably; " + ", ".join(
                    f"{g} got worse ({f(by_group[g])})" for g in worse) + ".")
            else:
                sentence += " No single group's change is detectable on its own."
        elif worse or better:
            sentence += (" Detectable group changes: " + ", ".join(
                [f"{g} worse ({f(by_group[g])})" for g in worse]
                + [f"{g} better ({f(by_group[g])})" for g in better]) + ".")
        parts.append(head + sentence)
    alpha = 1.0 - level
    for arm in bo_arms(methods):
        objective = ARMS[arm].objective
        part = runs[(runs["method"] == arm) & (runs["source"] == "bo")
                    & (runs["task"] == objective)].pivot_table(
            index="seed", columns="metric", values="value")
        needed = [f"{objective}_{k}" for k in ("mean", "within_sd", "snr", "snr_pvalue")]
        if part.empty or any(c not in part.columns for c in needed):
            continue
        mean, within, snr, pv = (part[c] for c in needed)
        significant = int((pv < alpha).sum())
        parts.append(
            f"The objective that {arm}'s GP is fitted to ({objective}) has a within-window sd of "
            f"{within.mean():.3f} against a mean of {mean.mean():.3f}; its {window}-step window "
            f"means vary {snr.mean():.2f} times as much as that noise alone makes them vary "
            f"(permutation p < {alpha:g} in {significant} of {len(pv)} seeds).")
    return " ".join(parts)


# -- tables ------------------------------------------------------------------------------------


def mean_sd(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "–"
    if len(values) < 2:
        return number(values.mean(), 3)
    return f"{values.mean():.3f} ± {values.std(ddof=1):.3f}"


def markdown(frame: pd.DataFrame) -> str:
    return frame.to_markdown(index=False, disable_numparse=True)


def primary_endpoints(settings: dict, groups: list[str]) -> list[tuple[str, tuple]]:
    task, attribute = settings["task"], settings["attribute"]
    items = [("gap", ("measured", "accuracy-gap", task, attribute, "all")),
             ("overall", ("measured", "accuracy", task, "all", "all"))]
    items += [(g, ("measured", "accuracy", task, attribute, g)) for g in groups]
    items += [("ES-accuracy", ("measured", "ES-accuracy", task, attribute, "all"))]
    return items


def arm_table(runs: pd.DataFrame, methods: list[str], items: list[tuple[str, tuple]]) -> str:
    rows = []
    for method in methods:
        part = runs[runs["method"] == method]
        row = {"arm": method, "seeds": str(part["seed"].nunique())}
        for name, endpoint in items:
            mask = np.logical_and.reduce([part[c] == v for c, v in zip(ENDPOINT, endpoint)])
            row[name] = mean_sd(part[mask]["value"])
        rows.append(row)
    return markdown(pd.DataFrame(rows))


def effect_table(res: pd.DataFrame, items: list[tuple[str, tuple]], level: float) -> str:
    pct = round(100 * level)
    rows = []
    order = {e: i for i, (_, e) in enumerate(items)}
    pair = {p: i for i, p in enumerate(dict.fromkeys(zip(res["arm"], res["reference"])))}
    res = res.assign(
        item=[order.get(tuple(r), -1) for r in res[ENDPOINT].itertuples(index=False)],
        pair=[pair[p] for p in zip(res["arm"], res["reference"])])
    res = res[res["item"] >= 0].sort_values(["pair", "item"], kind="stable")
    for row in res.itertuples(index=False):
        name = items[row.item][0]
        rows.append({
            "comparison": f"{row.arm} − {row.reference}", "endpoint": name,
            "Δ (mean over seeds)": f"{row.diff:+.3f}",
            f"{pct}% CI (seeds)": _ci(row.lower, row.upper),
            "p (t)": p_value(row.t_pvalue), "p (sign)": p_value(row.sign_pvalue),
            f"{pct}% CI (images)": _ci(row.boot_lower, row.boot_upper),
            "p (images)": p_value(row.boot_pvalue),
            "MDE": _g(row.mde), "seeds needed": _int(row.seeds_needed)})
    return markdown(pd.DataFrame(rows)) if rows else "(no paired results)"


def secondary_table(res: pd.DataFrame, settings: dict, level: float) -> str:
    keep = (((res["source"] == "quality") & res["metric"].isin(["FID", "KID", "ES-FID", "ES-KID"])
             & res["attribute"].isin(["all", settings["attribute"]])
             & (res["group"] == "all"))
            | ((res["source"] == "semantic") & res["metric"].isin(["AUC", "ES-AUC"])
               & res["attribute"].isin(["all", settings["attribute"]]) & (res["group"] == "all"))
            | ((res["source"] == "measured") & (res["metric"] == "accuracy-gap")
               & (res["attribute"] == settings["attribute"]) & (res["task"] != settings["task"])))
    pct = round(100 * level)
    rows = [{"comparison": f"{r.arm} − {r.reference}", "metric": M.label(r.metric, r.attribute),
             "task": r.task, "reference": number(r.reference_mean, 4),
             "arm": number(r.arm_mean, 4), "Δ": f"{r.diff:+.4g}",
             f"{pct}% CI (seeds)": _ci(r.lower, r.upper, 4), "p (t)": p_value(r.t_pvalue),
             "MDE": _g(r.mde)}
            for r in res[keep].itertuples(index=False)]
    return markdown(pd.DataFrame(rows)) if rows else "(no secondary metrics)"


def snr_table(runs: pd.DataFrame, methods: list[str], alpha: float) -> str:
    rows = []
    for method in methods:
        part = runs[(runs["method"] == method) & (runs["source"] == "bo")]
        for objective in ("y", "y_vr"):
            values = part[part["task"] == objective].pivot_table(
                index="seed", columns="metric", values="value")
            if values.empty:
                continue
            col = lambda k: values.get(f"{objective}_{k}", pd.Series(dtype=float))  # noqa: E731
            rows.append({"arm": method, "objective": objective, "mean": mean_sd(col("mean")),
                         "within-window sd": mean_sd(col("within_sd")),
                         "between-window sd": mean_sd(col("between_sd")),
                         "snr": mean_sd(col("snr")),
                         f"seeds with p < {alpha:g}": f"{int((col('snr_pvalue') < alpha).sum())}"
                                                      f"/{len(values)}"})
    return markdown(pd.DataFrame(rows)) if rows else "(no bo_trajectory.csv)"


def sigma_table(runs: pd.DataFrame, methods: list[str]) -> str:
    part = runs[(runs["metric"] == "sigma-final") & runs["method"].isin(bo_arms(methods))]
    if part.empty:
        return "(no BO arm)"
    rows = []
    for method in bo_arms(methods):
        sub = part[part["method"] == method]
        row = {"arm": method}
        for (a, g), values in sub.groupby(["attribute", "group"], sort=False)["value"]:
            row[f"{a}: {g}"] = mean_sd(values)
        rows.append(row)
    return markdown(pd.DataFrame(rows))


def _ci(lower, upper, digits: int = 3) -> str:
    if lower is None or pd.isna(lower) or not math.isfinite(lower):
        return "–"
    return f"{lower:+.{digits}f} to {upper:+.{digits}f}"


def _g(value) -> str:
    return "–" if pd.isna(value) or not math.isfinite(value) else f"{value:.3g}"


def _int(value) -> str:
    return "–" if pd.isna(value) else str(int(value))


# -- figures -----------------------------------------------------------------------------------


def figure_effects(res: pd.DataFrame, items, pairs, out: Path, formats) -> list[Path]:
    """Forest plot of the primary endpoint: thick bar = seed-level CI, thin = image bootstrap."""
    width = max(1, len(pairs))
    fig, axes = plt.subplots(1, width, figsize=(4.2 * width, 0.5 * len(items) + 1.5),
                             squeeze=False, sharey=True)
    if not pairs:
        axes[0][0].text(0.5, 0.5, "a single arm: nothing to compare", ha="center")
    for ax, (arm, reference) in zip(axes[0], pairs):
        for y, (name, endpoint) in enumerate(items):
            mask = (res["arm"] == arm) & (res["reference"] == reference)
            for c, v in zip(ENDPOINT, endpoint):
                mask &= res[c] == v
            if not mask.any():
                continue
            r = res[mask].iloc[0]
            if math.isfinite(r["lower"]):
                ax.plot([r["lower"], r["upper"]], [y, y], color="C0", lw=5, alpha=0.5,
                        label="CI over seeds" if y == 0 else None)
            if math.isfinite(r["boot_lower"]):
                ax.plot([r["boot_lower"], r["boot_upper"]], [y + 0.25] * 2, color="0.3", lw=1.2,
                        label="CI over test images" if y == 0 else None)
            ax.plot(r["diff"], y, "o", color="C3")
        ax.axvline(0, color="k", lw=0.8)
        ax.legend(fontsize=7, loc="lower right")
        ax.set_yticks(range(len(items)), [n for n, _ in items])
        ax.invert_yaxis()
        ax.set_title(f"{arm} − {reference}")
        ax.set_xlabel("difference in accuracy")
    return save(fig, out, formats)


def figure_seeds(runs: pd.DataFrame, methods: list[str], items, out: Path, formats) -> list[Path]:
    """Every seed's value per arm (lines join the same seed): gap, overall, each group."""
    shown = [(n, e) for n, e in items if n != "ES-accuracy"]
    fig, axes = plt.subplots(1, len(shown), figsize=(2.6 * len(shown), 3.2), squeeze=False)
    for ax, (name, endpoint) in zip(axes[0], shown):
        mask = np.logical_and.reduce([runs[c] == v for c, v in zip(ENDPOINT, endpoint)])
        part = runs[mask].pivot_table(index="seed", columns="method", values="value")
        part = part[[m for m in methods if m in part.columns]]
        for seed, values in part.iterrows():
            ax.plot(range(len(part.columns)), values.to_numpy(), "-o", ms=3, lw=0.8, alpha=0.7,
                    label=f"seed {seed}")
        ax.set_xticks(range(len(part.columns)), part.columns, rotation=45, ha="right")
        ax.set_title(name)
    axes[0][0].set_ylabel("accuracy (gap: max − min)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save(fig, out, formats)


def figure_sigma(trajectories: dict, attributes: dict, methods: list[str], window: int,
                 out: Path, formats) -> list[Path]:
    """Sigma of every group over training (window means; mean over seeds, band = sd)."""
    arms = bo_arms(methods) or list(methods)
    attrs = list(attributes)
    fig, axes = plt.subplots(len(arms), len(attrs), figsize=(3.6 * len(attrs), 2.6 * len(arms)),
                             squeeze=False, sharey=True)
    for i, arm in enumerate(arms):
        runs = {s: t for (m, s), t in trajectories.items() if m == arm}
        for j, attribute in enumerate(attrs):
            ax = axes[i][j]
            for k, group in enumerate(attributes[attribute]):
                column = f"sigma_{attribute}_{group}"
                series = [t.groupby(np.arange(len(t)) // window)[[column, "step"]].mean()
                          for t in runs.values() if column in t.columns]
                if not series:
                    continue
                n = min(len(s) for s in series)
                values = np.stack([s[column].to_numpy()[:n] for s in series])
                steps = series[0]["step"].to_numpy()[:n]
                mean, sd = values.mean(axis=0), values.std(axis=0)
                ax.plot(steps, mean, color=f"C{k}", label=group)
                ax.fill_between(steps, mean - sd, mean + sd, color=f"C{k}", alpha=0.2)
            ax.set_title(f"{arm}: {attribute}")
            ax.set_ylim(-0.02, 1.02)
            if i == len(arms) - 1:
                ax.set_xlabel("step")
            if j == 0:
                ax.set_ylabel("sigma")
            ax.legend(fontsize=7)
    fig.tight_layout()
    return save(fig, out, formats)


# -- page --------------------------------------------------------------------------------------


def page(name: str, conclusion: str, checks, runs, res, settings, attributes, methods, window,
         figures: dict[str, str], command: str, seconds: pd.Series, root: str = "") -> str:
    groups = group_order(runs, settings, attributes)
    items = primary_endpoints(settings, groups)
    level, alpha = settings["level"], 1.0 - settings["level"]
    check_rows = pd.DataFrame([{"check": c["check"],
                                "met": {True: "yes", False: "**no**", None: "not checked"}[c["ok"]],
                                "detail": c["detail"]} for c in checks])
    per_arm = seconds.groupby(level="method").mean() if len(seconds) else seconds
    runtime = (f"Training time measured by the training loop: {seconds.sum() / 3600:.2f} h over "
               f"{len(seconds)} runs (mean per run: "
               + ", ".join(f"{m} {per_arm[m] / 60:.1f} min" for m in per_arm.index) + ").")
    fig_md = "\n\n".join(f"![{caption}]({root}{path})" for path, caption in figures.items())
    return f"""# Validity study: {name}

## Conclusion

{conclusion}

## Primary endpoint: {settings['task']} accuracy by {settings['attribute']} (measured labels)

Per arm, mean ± sd over seeds (gap = max − min group accuracy; overall accuracy beside it):

{arm_table(runs, methods, items)}

Paired differences (arm − reference, same seeds). CI (seeds): t-interval over seeds; CI (images):
bootstrap over test images with the models fixed; MDE: smallest difference a paired t-test on
these seeds detects with {round(100 * settings['power'])}% power at alpha {alpha:g}; seeds
needed: for the observed difference. p-values are not adjusted for multiple comparisons.

{effect_table(res, items, level)}

{fig_md}

## Preconditions

{markdown(check_rows)}

## Secondary endpoints

{secondary_table(res, settings, level)}

## BO objective: signal-to-noise

Windows of {window} steps. within-window sd: the noise the GP is fitted to; between-window sd:
spread of window means (successive differences); snr: between-window sd / (within-window sd /
sqrt({window})), about 1 when the means vary only by noise; p: permutation test over steps.

{snr_table(runs, methods, alpha)}

Final sigma by group (mean of the last window, mean ± sd over seeds):

{sigma_table(runs, methods)}

## Reproduce

    {command}

{runtime} Every number is in `study.csv` (paired effects) and `runs.csv` (per arm and seed);
the rules that turn them into the conclusion are in `fairdiffusion/report/study.py`.
"""


# -- CLI ---------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--measured", nargs="+", required=True, help="measured.csv of every run")
    parser.add_argument("--measured-images", nargs="+", required=True,
                        help="measured_images.csv of every run (.../{method}/seed{seed}/)")
    parser.add_argument("--quality", nargs="*", default=[], help="quality.csv of every run")
    parser.add_argument("--semantic", nargs="*", default=[], help="semantic.csv of every run")
    parser.add_argument("--trajectories", nargs="+", required=True,
                        help="bo_trajectory.csv of every run (.../{method}/seed{seed}/)")
    parser.add_argument("--run-info", nargs="+", required=True,
                        help="run_info.json of every training run (.../{method}/seed{seed}/)")
    parser.add_argument("--manifest", required=True, help="the dataset's manifest.csv")
    parser.add_argument("--ceiling", default=None, help="the base model's vae_ceiling.csv")
    parser.add_argument("--dataset", type=json_arg, required=True, help="the dataset's config")
    parser.add_argument("--name", required=True, help="dataset name")
    parser.add_argument("--methods", type=json_arg, required=True, help="config['methods']")
    parser.add_argument("--study", type=json_arg, required=True, help="config['study']")
    parser.add_argument("--window", type=int, required=True, help="fair_bayes.time_window")
    parser.add_argument("--command", required=True, help="the command that reproduces the study")
    parser.add_argument("--formats", nargs="+", default=["png"], choices=FORMATS)
    parser.add_argument("--out", required=True, help="output folder")


def run(args: argparse.Namespace) -> None:
    settings, attributes = args.study, args.dataset["attributes"]
    labels = list(args.dataset["labels"])
    if settings["attribute"] not in attributes:
        raise FairDiffError(f"study.attribute '{settings['attribute']}' is not an attribute of "
                            f"{args.name} ({list(attributes)})")
    if settings["task"] not in [*labels, "all"]:
        raise FairDiffError(f"study.task '{settings['task']}': expected one of {labels + ['all']}")
    methods = list(args.methods)
    unknown = [m for m in methods if m not in ARMS]
    if unknown:
        raise FairDiffError(f"--methods: {unknown} not in method.ARMS ({list(ARMS)})")
    if settings["baseline"] not in methods:
        raise FairDiffError(f"study.baseline '{settings['baseline']}' is not among methods "
                            f"{methods}")
    tidy = pd.concat([read_tidy(args.measured, "measured", MEASURED_METRICS),
                      read_tidy(args.quality, "quality", QUALITY_METRICS),
                      read_tidy(args.semantic, "semantic", SEMANTIC_METRICS)], ignore_index=True)
    primary = primary_data(args.measured_images, args.manifest, settings["task"],
                           settings["attribute"], labels)
    check_consistent(primary, tidy, settings["task"])
    trajectories = read_runs(args.trajectories, read_trajectory)
    seconds = read_runs(args.run_info, read_seconds)
    ceiling = None
    if args.ceiling:
        if not Path(args.ceiling).exists():
            raise FairDiffError(f"{args.ceiling}: VAE ceiling file not found")
        ceiling = pd.read_csv(args.ceiling)
    runs = run_values(tidy, trajectories, seconds, attributes, args.window,
                      settings["permutations"])
    pairs = comparisons(methods, settings["baseline"])
    log.info("paired effects: %d comparisons, %d seeds", len(pairs), runs["seed"].nunique())
    res = effects(runs, pairs, primary, settings)
    values, counts = np.unique(primary.groups, return_counts=True)
    majority = str(values[counts.argmax()]) if len(values) else None
    checks = preconditions(runs, ceiling, majority, settings, attributes, labels)
    conclusion = conclude(res, runs, checks, settings, attributes, methods, args.window)

    out = Path(args.out)
    groups = group_order(runs, settings, attributes)
    items = primary_endpoints(settings, groups)
    written = {
        "effects": figure_effects(res, items, pairs, out / "effects", args.formats),
        "seeds": figure_seeds(runs, methods, items, out / "seeds", args.formats),
        "sigma": figure_sigma(trajectories, attributes, methods, args.window, out / "sigma",
                              args.formats),
    }
    captions = {"effects": "paired differences of the primary endpoint (thick: seed CI, thin: "
                           "image-bootstrap CI)",
                "seeds": "every seed's gap, overall and group accuracy per arm",
                "sigma": "sigma of every group over training (mean ± sd over seeds)"}
    local = {f"{k}.png": captions[k] for k in written}
    seconds_series = pd.Series({k: v for k, v in seconds.items()}, dtype=float)
    if len(seconds_series):
        seconds_series.index = pd.MultiIndex.from_tuples(seconds_series.index,
                                                         names=["method", "seed"])
    common = (args.name, conclusion, checks, runs, res, settings, attributes, methods,
              args.window)
    io.write_csv(out / "study.csv", res)
    io.write_csv(out / "runs.csv", runs)
    io.write_text(out / "study.md", page(*common, local, args.command, seconds_series))
    section = page(*common, local, args.command, seconds_series, root=f"{out.as_posix()}/")
    io.write_text(out / "readme.md", section.replace(f"# Validity study: {args.name}",
                                                     "## Results", 1).replace("\n## ", "\n### "))
    io.write_json(out / "run_info.json", io.run_info(io.stage_settings(args)))
    log.info("conclusion: %s", conclusion)
