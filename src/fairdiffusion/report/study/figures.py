"""The study's figures: paired effects, every seed's values, sigma over training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..figures import plt, save
from .compute import ENDPOINT, bo_arms

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

