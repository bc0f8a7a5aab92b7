"""Statistics over seeds and test images: summaries, bootstrap CIs, paired arm-vs-baseline tests.

- `seed_summary`: mean and sample std (ddof=1) of each metric row over training seeds.
- `bootstrap_ci`: percentile bootstrap CI over test images (seeded, so reproducible).
- `paired_seed_test`: arm vs baseline paired by training seed: paired t-test and exact sign
  test (two-sided), with the mean difference and its sign.
- `paired_bootstrap`: arm vs baseline on the same resampled test images (paired by image):
  the difference, its percentile CI and a two-sided bootstrap p-value.
- `compare_arms`: `paired_seed_test` for every metric row of a tidy metrics table.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats as sps

# Columns that identify one metric value apart from its seed (the tidy CSV contract).
KEYS = ["dataset", "method", "metric", "task", "attribute", "group", "extractor"]


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] resampled row indices (with replacement), reproducible for a seed."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_ci(statistic: Callable[[np.ndarray], float], n: int, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of statistic(indices) over `n_boot` resamples of `n` items.

    Resamples where the statistic is undefined (nan, e.g. a single class drawn) are dropped;
    (nan, nan) when none is left or n_boot is 0.
    """
    if n_boot <= 0 or n == 0:
        return math.nan, math.nan
    values = np.array([statistic(idx) for idx in bootstrap_indices(n, n_boot, seed)], dtype=float)
    return _percentiles(values, level)


def bootstrap_mean_ci(x: np.ndarray, n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> tuple[float, float]:
    """Percentile CI of the mean of x (vectorised; e.g. per-image correctness -> accuracy)."""
    x = np.asarray(x, dtype=float)
    if n_boot <= 0 or len(x) == 0:
        return math.nan, math.nan
    return _percentiles(x[bootstrap_indices(len(x), n_boot, seed)].mean(axis=1), level)


def _percentiles(values: np.ndarray, level: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return math.nan, math.nan
    tail = (1.0 - level) / 2.0 * 100.0
    lower, upper = np.percentile(values, [tail, 100.0 - tail])
    return float(lower), float(upper)


def seed_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1; nan for one seed) and number of seeds of each metric over seeds."""
    keys = [k for k in KEYS if k in frame.columns]
    grouped = frame.groupby(keys, sort=False, dropna=False)["value"]
    return grouped.agg(mean="mean", std="std", n_seeds="count").reset_index()


def paired_seed_test(arm: np.ndarray, baseline: np.ndarray) -> dict:
    """Arm vs baseline values paired by seed.

    Returns n, mean_diff (arm - baseline), sign (+1/-1/0 of mean_diff), t_pvalue (paired
    t-test; nan below 2 seeds or with zero variance of the differences), sign_pvalue (exact
    two-sided binomial sign test on the non-zero differences; nan if all are zero).
    """
    arm, baseline = np.asarray(arm, float), np.asarray(baseline, float)
    if arm.shape != baseline.shape:
        raise ValueError("arm and baseline need one value per shared seed")
    diff = arm - baseline
    n = len(diff)
    mean_diff = float(diff.mean()) if n else math.nan
    t_p = math.nan
    if n >= 2 and np.std(diff) > 0:
        t_p = float(sps.ttest_rel(arm, baseline).pvalue)
    nonzero = diff[diff != 0]
    sign_p = float(sps.binomtest(int((nonzero > 0).sum()), len(nonzero)).pvalue) if len(nonzero) else math.nan
    return {"n": n, "mean_diff": mean_diff, "sign": int(np.sign(mean_diff)) if n else 0,
            "t_pvalue": t_p, "sign_pvalue": sign_p}


def paired_bootstrap(statistic_arm: Callable[[np.ndarray], float],
                     statistic_baseline: Callable[[np.ndarray], float], n: int,
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Arm vs baseline on the same resampled test images (each statistic takes row indices).

    Returns diff (on all images), lower/upper (percentile CI of the difference), pvalue
    (two-sided: 2 * the smaller share of resampled differences on either side of 0, capped
    at 1) and sign of diff.
    """
    diff = statistic_arm(np.arange(n)) - statistic_baseline(np.arange(n))
    boot = np.array([statistic_arm(idx) - statistic_baseline(idx)
                     for idx in bootstrap_indices(n, n_boot, seed)], dtype=float)
    boot = boot[np.isfinite(boot)]
    lower, upper = _percentiles(boot, level)
    pvalue = math.nan
    if len(boot):
        pvalue = float(min(1.0, 2.0 * min((boot <= 0).mean(), (boot >= 0).mean())))
    return {"diff": float(diff), "lower": lower, "upper": upper, "pvalue": pvalue,
            "sign": int(np.sign(diff))}


def compare_arms(frame: pd.DataFrame, arm: str, baseline: str = "baseline") -> pd.DataFrame:
    """`paired_seed_test` of `arm` vs `baseline` for every metric row, on the seeds both have."""
    keys = [k for k in KEYS if k in frame.columns and k != "method"]
    a = frame[frame["method"] == arm]
    b = frame[frame["method"] == baseline]
    joined = a.merge(b, on=[*keys, "seed"], suffixes=("_arm", "_base"))
    rows = []
    for key, part in joined.groupby(keys, sort=False, dropna=False):
        result = paired_seed_test(part["value_arm"].to_numpy(), part["value_base"].to_numpy())
        rows.append({**dict(zip(keys, key)), "arm": arm, "baseline": baseline, **result})
    return pd.DataFrame(rows)
