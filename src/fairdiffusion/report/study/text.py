"""The study's words: the conclusion, the tables and the page (fairdiffusion.report.study).

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
The brief form (the README's section, `readme_section`) keeps 1, 2, 4 and the mechanism of a
narrowed gap (3), and leaves out the group changes of an unchanged gap and 5.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ...method import ARMS
from .. import metrics as M
from ..render import number, p_value
from .compute import ENDPOINT, bo_arms, comparisons, group_order, primary_endpoints

# -- conclusion ------------------------------------------------------------------------------------


def fmt(row, level: float) -> str:
    """'-0.100, adjusted 95% CI -0.150 to -0.050, Holm p = 0.003' (seed level, adjusted over
    the pre-declared comparisons)."""
    d = f"{row['diff']:+.3f}"
    if not math.isfinite(row["adj_lower"]):
        return f"{d}; no interval with {row['n_seeds']} seed(s)"
    p = p_value(row["holm_pvalue"])
    p = p.replace("<", "< ") if p.startswith("<") else "= " + p
    return (f"{d}, adjusted {round(100 * level)}% CI {row['adj_lower']:+.3f} to "
            f"{row['adj_upper']:+.3f}, Holm p {p}")


def verdict(row) -> str:
    """'down', 'up', 'none' (the adjusted CI covers 0) or 'untested' (fewer than 2 seeds)."""
    if not math.isfinite(row["adj_lower"]):
        return "untested"
    if row["adj_upper"] < 0:
        return "down"
    if row["adj_lower"] > 0:
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
             attributes: dict, methods: list[str], window: int, brief: bool = False) -> str:
    """The conclusion paragraph, derived from the numbers by the rules of the module doc
    (`brief`: its short form)."""
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
    for arm, reference in comparisons(methods, baseline, settings.get("comparisons")):
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
        elif (worse or better) and not brief:
            sentence += (" Detectable group changes: " + ", ".join(
                [f"{g} worse ({f(by_group[g])})" for g in worse]
                + [f"{g} better ({f(by_group[g])})" for g in better]) + ".")
        parts.append(head + sentence)
    alpha = 1.0 - level
    for arm in [] if brief else bo_arms(methods):
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
            f"adjusted {pct}% CI": _ci(row.adj_lower, row.adj_upper),
            "p (t)": p_value(row.t_pvalue), "p (Holm)": p_value(row.holm_pvalue),
            "p (sign)": p_value(row.sign_pvalue),
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


# -- page --------------------------------------------------------------------------------------


def readme_section(name: str, conclusion: str, checks, runs, settings, attributes,
                   methods, page_link: str) -> str:
    """The README's 'Results' section: the brief conclusion, the primary table, the link."""
    groups = group_order(runs, settings, attributes)
    unmet = [c["check"] for c in checks if c["ok"] is False]
    header = (f"**Validity study on {name}**: {runs['seed'].nunique()} paired seeds, "
              f"pre-registered; primary endpoint the {settings['task']} accuracy gap across "
              f"{settings['attribute']}; preconditions "
              + ("not met: " + ", ".join(unmet) if unmet else "met")
              + ". The conclusion, generated from the Holm-adjusted intervals:")
    return f"""## Results

{header}

{conclusion}

Per arm, mean ± sd over seeds ({settings['task']} accuracy of the generated test images,
measured; gap = max − min over {settings['attribute']}):

{arm_table(runs, methods, primary_endpoints(settings, groups))}

Paired effects, preconditions, secondary endpoints and figures: [{page_link}]({page_link}).
"""


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
needed: for the observed difference. Multiplicity: p (Holm) is the t-test's p adjusted by Holm
over the {len(comparisons(methods, settings['baseline'], settings.get('comparisons')))}
pre-declared comparisons; the adjusted CI is the t-interval at level 1 − alpha/m (Bonferroni).
The conclusion reads the adjusted values; the unadjusted ones are shown beside them.

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
the rules that turn them into the conclusion are in `fairdiffusion/report/study/text.py`.
"""

