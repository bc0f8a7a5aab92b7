"""Equity scaling (ES-metrics) and group gaps.

ES-M follows the authors' ES-AUC code (Luo et al., FairDiffusion / FairCLIP):

    higher-is-better M (AUC, IS):  ES-M = M / (1 + alpha * sum_g |M - M_g|)
    lower-is-better  M (FID, KID): ES-M = M + |M| * alpha * sum_g |M - M_g|

where M is the metric over all images and M_g the metric on group g of one attribute. Either
way a disparity between groups makes the scaled value worse, and ES-M = M when every group
equals the overall value. For M >= 0 the lower-is-better form is M * (1 + alpha * sum); |M|
keeps it worse with disparity for KID, whose unbiased estimate can be negative. The paper's
exact normalisation of ES-FID could not be checked from here (no code for it was available);
the lower-is-better form above is this reproduction's choice, mirroring ES-AUC. Groups that
could not be evaluated (too few images, a single class) are left out of the sum.
"""

from __future__ import annotations

import math
from typing import Iterable

# The one table of metric directions (the report asks `direction`). Variants name their base:
# "ES-M" has M's direction (the lower-is-better form scales up with disparity), "M-raw" (at
# each group's own size) and "M-inf" (extrapolated to infinitely many images) too, and every
# "<metric>-gap" (max - min over groups) is lower-is-better.
LOWER_IS_BETTER = {"FID", "KID", "MiFID", "DPD", "EOD"}
HIGHER_IS_BETTER = {"IS", "precision", "recall", "F-score", "AUC", "accuracy"}
VARIANTS = ("-raw", "-inf")


def direction(metric: str) -> str | None:
    """'lower', 'higher', or None for a metric of unknown direction (no arrow, no best)."""
    if metric.endswith("-gap"):
        return "lower"
    base = metric.removeprefix("ES-")
    for suffix in VARIANTS:
        base = base.removesuffix(suffix)
    if base in LOWER_IS_BETTER:
        return "lower"
    if base in HIGHER_IS_BETTER:
        return "higher"
    return None


def higher_is_better(metric: str) -> bool:
    way = direction(metric)
    if way is None:
        raise ValueError(f"metric {metric!r} has no known direction")
    return way == "higher"


def equity_scaled(overall: float, group_values: Iterable[float], alpha: float = 1.0,
                  higher_is_better: bool = True) -> float:
    """ES-M of an overall metric and its per-group values for one attribute (see module doc)."""
    disparity = sum(abs(overall - g) for g in group_values)
    factor = 1.0 + alpha * disparity
    return overall / factor if higher_is_better else overall + abs(overall) * (factor - 1.0)


def gap(group_values: Iterable[float]) -> float:
    """max_g M_g - min_g M_g (nan without any group value)."""
    values = list(group_values)
    return max(values) - min(values) if values else math.nan
