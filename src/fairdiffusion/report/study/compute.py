"""The study's numbers: reading the runs, the run values, the paired effects, the
preconditions (fairdiffusion.report.study; the text and figures are made from these).

Endpoints. Primary (SynthFundus labels measured on the generated images, so exact): for the
measured label study.task and the attribute study.attribute, the accuracy gap (max - min group
accuracy), overall accuracy, every group's accuracy and ES-accuracy. Secondary: every other
measured row, FID/KID overall, by group, ES and gap (quality.csv), train-on-synthetic AUC,
ES-AUC and AUC-gap (semantic.csv), the BO objective's signal-to-noise and the final sigma of
every group (bo_trajectory.csv), training seconds (run_info.json).

Comparisons: study.comparisons, declared before the study runs ([arm, reference] pairs); when
null, every arm vs study.baseline and each arm with a control in method.ARMS (the BO arms:
fairdiffusion, fairdiffusion_vr, controlled by random) also vs its control when that ran (does
the BO add anything over random weights?).

Multiplicity: per endpoint, the family is the comparisons; holm_pvalue is Holm's adjustment of
the paired t-test's p over them, and adj_lower/adj_upper the t-interval at level 1 - alpha/m
(Bonferroni: the simultaneous interval that agrees with Holm's first step). Only the primary
endpoint is confirmatory; the conclusion reads its adjusted intervals.

Statistics (fairdiffusion.evaluate.stats):
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

"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import FairDiffError
from ...evaluate import stats
from ...method import ARMS
from .. import metrics as M
from ..render import number

ENDPOINT = ["source", "metric", "task", "attribute", "group"]
QUALITY_METRICS = {"FID", "KID", "ES-FID", "ES-KID", "FID-gap", "KID-gap"}
SEMANTIC_METRICS = {"AUC", "ES-AUC", "AUC-gap"}
MEASURED_METRICS = {"accuracy", "ES-accuracy", "accuracy-gap"}
RESULT_COLUMNS = [
    "arm", "reference", *ENDPOINT, "n_seeds", "reference_mean", "arm_mean", "diff", "diff_sd",
    "lower", "upper", "t_pvalue", "holm_pvalue", "adj_lower", "adj_upper", "sign_pvalue",
    "boot_diff", "boot_lower", "boot_upper", "boot_pvalue", "mde", "seeds_needed"]



# -- reading -----------------------------------------------------------------------------------


def read_tidy(paths: list[str], source: str, keep: set[str]) -> pd.DataFrame:
    """Rows of the given metrics (of the arms, not the real reference) as run values."""
    if not paths:
        return pd.DataFrame(columns=["method", "seed", *ENDPOINT, "value"])
    frame = M.read(paths)
    frame = frame[frame["metric"].isin(keep) & (frame["method"] != M.REFERENCE)]
    frame = frame.assign(source=source, seed=frame["seed"].astype(int))
    return frame[["method", "seed", *ENDPOINT, "value"]]


Run = tuple[str, int]  # (method, seed)


def parse_runs(values: list[str]) -> list[Run]:
    """--runs METHOD:SEED ... -> [(method, seed)]."""
    runs = []
    for value in values:
        method, sep, seed = value.rpartition(":")
        if not (sep and method and seed.isdigit()):
            raise FairDiffError(f"--runs: '{value}' is not METHOD:SEED")
        runs.append((method, int(seed)))
    return runs


def files_of_runs(paths: list[str], runs: list[Run], option: str) -> dict[Run, Path]:
    """The n-th file of a per-run list belongs to the n-th run of --runs."""
    if len(paths) != len(runs):
        raise FairDiffError(f"{option}: {len(paths)} file(s) for {len(runs)} run(s) of --runs; "
                            f"expected one file per run")
    return dict(zip(runs, map(Path, paths)))


def check_run(path: Path, run: Run, method, seed) -> None:
    """A file that names its run (method and seed columns or settings) must name `run`."""
    if method is not None and (str(method), int(seed)) != run:
        raise FairDiffError(f"{path}: written by {method} seed {seed}, but passed as the file of "
                            f"{run[0]} seed {run[1]} (--runs)")


def read_runs(files: dict[Run, Path], reader) -> dict[Run, object]:
    """(method, seed) -> reader(path, run) for every run's file."""
    out = {}
    for run, path in files.items():
        if not path.exists():
            raise FairDiffError(f"{path}: not found")
        out[run] = reader(path, run)
    return out


def read_seconds(path: Path, run: Run) -> float:
    settings = json.loads(path.read_text()).get("settings", {})
    check_run(path, run, settings.get("method"), settings.get("seed"))
    if "seconds" not in settings:
        raise FairDiffError(f"{path}: no settings.seconds (expected the run_info.json of a "
                            f"training run)")
    return float(settings["seconds"])


def read_trajectory(path: Path, run: Run) -> pd.DataFrame:
    frame = pd.read_csv(path)
    missing = [c for c in ("step", "kind", "y", "y_vr") if c not in frame.columns]
    if missing:
        raise FairDiffError(f"{path}: missing column(s) {missing}; expected a bo_trajectory.csv")
    if {"method", "seed"} <= set(frame.columns):
        for method, seed in frame[["method", "seed"]].drop_duplicates().itertuples(index=False):
            check_run(path, run, method, seed)
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


def primary_data(files: dict[Run, Path], manifest_path: str, task: str, attribute: str,
                 labels: list[str]) -> Primary:
    runs = read_runs(files, lambda path, run: image_correctness(path, task, labels))
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
    groups = groups_of(pd.Index(ids), manifest, attribute, str(next(iter(files.values()))))
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


def comparisons(methods: list[str], baseline: str,
                declared: list | None = None) -> list[tuple[str, str]]:
    """The pre-declared (arm, reference) pairs, or by default every arm vs the baseline and each
    arm vs its control (method.ARMS) when both ran."""
    if declared is not None:
        pairs = [tuple(pair) for pair in declared]
        for i, (arm, reference) in enumerate(pairs):
            for name in (arm, reference):
                if name not in methods:
                    raise FairDiffError(f"config key 'study.comparisons.{i}': '{name}' is not "
                                        f"among methods {methods}")
        return pairs
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
    rows, diffs = [], []
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
            diffs.append(diff)
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
    adjust(out, diffs, len(pairs), settings["level"])
    out["seeds_needed"] = out["seeds_needed"].astype("Int64")
    out["n_seeds"] = out["n_seeds"].astype("Int64")
    return out


def adjust(res: pd.DataFrame, diffs: list[np.ndarray], family: int, level: float) -> None:
    """Fill holm_pvalue (per endpoint, over the comparisons) and the Bonferroni intervals."""
    adjusted_level = 1.0 - (1.0 - level) / max(family, 1)
    for i, diff in enumerate(diffs):
        res.loc[i, ["adj_lower", "adj_upper"]] = stats.paired_mean_ci(diff, adjusted_level)
    for _, part in res.groupby(ENDPOINT, sort=False, dropna=False):
        res.loc[part.index, "holm_pvalue"] = stats.holm(part["t_pvalue"].to_numpy(float))


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
    if settings.get("min_gap") is not None:
        gap = runs[(runs["method"] == baseline) & (runs["source"] == "measured")
                   & (runs["metric"] == "accuracy-gap") & (runs["task"] == task)
                   & (runs["attribute"] == attribute)]["value"]
        checks.append({"check": "baseline gap", "ok": bool(len(gap)) and
                       bool(gap.mean() >= settings["min_gap"]),
                       "detail": f"baseline {task} accuracy gap across {attribute}: "
                                 f"{number(gap.mean(), 3) if len(gap) else 'none'} (required >= "
                                 f"{settings['min_gap']}: a gap to narrow)"})
    # A pair needs both arms: count the seeds every arm shares with the baseline.
    seeds = runs.groupby("method")["seed"].agg(set)
    base_seeds = seeds.get(baseline, set())
    n = min((len(base_seeds & s) for m, s in seeds.items() if m != baseline),
            default=len(base_seeds))
    checks.append({"check": "paired seeds", "ok": n >= settings["min_seeds"],
                   "detail": f"{n} seeds shared by every arm with {baseline} "
                             f"(design: >= {settings['min_seeds']})"})
    return checks



def primary_endpoints(settings: dict, groups: list[str]) -> list[tuple[str, tuple]]:
    task, attribute = settings["task"], settings["attribute"]
    items = [("gap", ("measured", "accuracy-gap", task, attribute, "all")),
             ("overall", ("measured", "accuracy", task, "all", "all"))]
    items += [(g, ("measured", "accuracy", task, attribute, g)) for g in groups]
    items += [("ES-accuracy", ("measured", "ES-accuracy", task, attribute, "all"))]
    return items
