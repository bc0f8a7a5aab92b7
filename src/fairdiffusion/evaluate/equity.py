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

# The one table of metric directions: equity scaling reads it, and so do the report's arrows
# and best-arm marks (direction()). Every "<metric>-gap" (max - min over groups) is lower is
# better, and ES-M has M's direction.
HIGHER_IS_BETTER = {"AUC": True, "IS": True, "precision": True, "recall": True, "F-score": True,
                    "accuracy": True, "FID": False, "KID": False, "DPD": False, "EOD": False}


def direction(metric: str) -> str | None:
    """'lower', 'higher', or None for a metric of unknown direction (no arrow, no best)."""
    base = metric.removeprefix("ES-")
    if base.endswith("-gap"):
        return "lower"
    if base in HIGHER_IS_BETTER:
        return "higher" if HIGHER_IS_BETTER[base] else "lower"
    return None


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
