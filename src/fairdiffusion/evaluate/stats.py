"""Statistics over seeds and test images: summaries, bootstrap CIs, paired arm-vs-baseline tests.

- `seed_summary`: mean and sample std (ddof=1) of each metric row over training seeds.
- `bootstrap_ci`: percentile bootstrap CI over test images (seeded, so reproducible).
- `paired_seed_test`: arm vs baseline paired by training seed: paired t-test and exact sign
  test (two-sided), with the mean difference and its sign.
- `paired_bootstrap`: arm vs baseline on the same resampled test images (paired by image):
  the difference, its percentile CI and a two-sided bootstrap p-value.
- `paired_mean_ci`: t-interval of the mean of paired differences (seed-level CI).
- `paired_t_power`, `minimum_detectable_effect`, `pairs_needed`: power of the two-sided paired
  t-test from the sd of the paired differences (noncentral t): the smallest effect n pairs
  detect, and the pairs an effect needs.
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


def percentile_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates (non-finite ones dropped)."""
    return _percentiles(np.asarray(values, dtype=float), level)


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


def paired_mean_ci(diff: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """t-interval of the mean of paired differences: mean -/+ t_{(1+level)/2, n-1} sd / sqrt(n)
    (sd with ddof=1); (nan, nan) below 2 values, (mean, mean) when they are all equal."""
    diff = np.asarray(diff, float)
    n = len(diff)
    if n < 2:
        return math.nan, math.nan
    mean = float(diff.mean())
    half = float(sps.t.ppf((1.0 + level) / 2.0, n - 1) * diff.std(ddof=1) / math.sqrt(n))
    return mean - half, mean + half


def paired_t_power(effect: float, sd: float, n, alpha: float = 0.05) -> np.ndarray:
    """Power of the two-sided paired t-test at level alpha for a true mean difference `effect`,
    differences of sd `sd`, n pairs (scalar or array of n >= 2): P(|T| > t_crit) with
    T ~ noncentral t(n - 1, effect sqrt(n) / sd)."""
    n = np.asarray(n, float)
    df = n - 1.0
    crit = sps.t.ppf(1.0 - alpha / 2.0, df)
    nc = abs(effect) * np.sqrt(n) / sd
    power = np.asarray(sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc), float)
    # scipy's noncentral t gives nan far in the tails (large nc, few df): integrate instead.
    for i in zip(*np.nonzero(np.isnan(power))) if power.ndim else ([()] if np.isnan(power) else []):
        power[i] = _power_by_quadrature(float(np.broadcast_to(df, power.shape)[i]),
                                        float(np.broadcast_to(nc, power.shape)[i]),
                                        float(np.broadcast_to(crit, power.shape)[i]))
    return power


def _power_by_quadrature(df: float, nc: float, crit: float) -> float:
    """P(|T| > crit) for T = (Z + nc) / sqrt(V / df), Z ~ N(0,1), V ~ chi2(df):
    the integral over z of phi(z) P(V < df (z + nc)^2 / crit^2)."""
    from scipy.integrate import quad

    value, _ = quad(lambda z: sps.norm.pdf(z) * sps.chi2.cdf(df * (z + nc) ** 2 / crit**2, df),
                    -12.0, 12.0, points=[-nc] if abs(nc) < 12.0 else None)
    return float(min(1.0, value))


def minimum_detectable_effect(sd: float, n: int, alpha: float = 0.05,
                              power: float = 0.8) -> float:
    """Smallest |mean difference| the two-sided paired t-test on n pairs detects with `power`,
    for paired differences of sd `sd` (nan below 2 pairs or without a finite sd; 0 for sd 0)."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    from scipy.optimize import brentq

    upper = sd
    while paired_t_power(upper, sd, n, alpha) < power:
        upper *= 2.0
    return float(brentq(lambda e: float(paired_t_power(e, sd, n, alpha)) - power, 0.0, upper,
                        xtol=1e-10 * sd))


def pairs_needed(effect: float, sd: float, alpha: float = 0.05, power: float = 0.8,
                 max_pairs: int = 10000) -> int | None:
    """Fewest pairs (>= 2) whose two-sided paired t-test detects `effect` with `power`, given
    paired differences of sd `sd`; None when effect is 0 or nan, or more than max_pairs needed."""
    if not (math.isfinite(effect) and math.isfinite(sd)) or effect == 0:
        return None
    if sd == 0:
        return 2

    def enough(n: int) -> bool:
        return bool(paired_t_power(effect, sd, n, alpha) >= power)

    # Power grows with n: double until enough, then bisect (a few dozen evaluations).
    low, high = 1, 2
    while not enough(high):
        if high >= max_pairs:
            return None
        low, high = high, min(2 * high, max_pairs)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if enough(mid) else (mid, high)
    return high


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN entries are left out of the
    family and stay NaN): sorted ascending, p_(i) * (m - i + 1), made monotone, capped at 1."""
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out

