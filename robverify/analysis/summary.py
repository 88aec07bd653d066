"""The summary table of a strategies comparison: every number the report quotes, one tidy row each.

Columns :data:`SUMMARY_COLUMNS`: ``section`` (what kind of number), ``strategy``, ``task`` (the target task),
``versus`` (the other strategy of a pairwise comparison, or the similarity measure of a correlation), ``measure``,
``eps`` (where the number depends on eps), ``value``, ``ci_low`` / ``ci_high`` (95% interval where there is one)
and ``n`` (the samples or points behind it). Sections:

- ``entry``: per (strategy, task): ``n``, ``n_correct``, ``clean_acc``, ``n_falsified``, ``train_time_s``,
  ``card_eps`` (from the model card).
- ``accuracy``: per (strategy, task, eps): ``certified_acc`` (correct and ``eps_lo >= eps``) and ``pgd_acc``
  (correct and not falsified at or below eps: ``eps_hi > eps``), fractions of all samples.
- ``radius``: per (strategy, task): ``eps_lo_q25/q50/q75``, ``eps_hi_q25/q50/q75`` over correctly classified
  samples (``eps_hi`` may be inf) and ``gap_q50`` / ``gap_mean`` of ``eps_hi - eps_lo`` over falsified samples,
  each with a bootstrap interval.
- ``similarity``: per (strategy, task): the model card's score, measure = the similarity measure.
- ``pairwise``: per task, strategy vs versus on their shared samples (certified radius, 0 if misclassified):
  ``median_a``, ``median_b``, ``median_diff``, ``ratio``, ``wilcoxon_stat``, ``p_value``, ``p_holm`` (Holm over all
  pairs of the report), ``effect`` (rank-biserial).
- ``correlation``: per strategy (and ``all`` pooled), versus = similarity measure: ``spearman_rho`` (interval) and
  ``spearman_p`` between the measure and ``eps_lo_q50`` over the strategy's tasks.
- ``lognormal``: per (strategy, task): ``mu``, ``sigma``, ``shapiro_p``, ``ks_stat`` of the positive eps_lo.
- ``settings``: ``eps_ref`` (the eps of the headline accuracies), ``confidence``, ``n_boot``, ``seed``.
- ``search``: per (strategy, task), how its sweep searched: measure = a setting of
  :data:`robverify.analysis.runs.SEARCH_SETTINGS`, ``versus`` = its value as text (``-``: not recorded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import permutations

import numpy as np
import pandas as pd

from robverify.analysis.distribution import certified_accuracy_curve, correctly_classified
from robverify.analysis.statistics import (
    CONFIDENCE,
    N_BOOT,
    bootstrap_ci,
    holm,
    lognormal_fit,
    paired_comparison,
    quantile_ci,
    spearman,
)

__all__ = ["ALL_STRATEGIES", "SUMMARY_COLUMNS", "build_summary", "entry_points", "reference_eps", "value"]

SUMMARY_COLUMNS = ["section", "strategy", "task", "versus", "measure", "eps", "value", "ci_low", "ci_high", "n"]
ALL_STRATEGIES = "all"
QUANTILES = {"q25": 0.25, "q50": 0.5, "q75": 0.75}


def _row(section: str, strategy: str, task: str | None, measure: str, value: float, *, versus: str | None = None,
         eps: float | None = None, ci: tuple[float, float] = (math.nan, math.nan), n: int | None = None) -> dict:
    return {"section": section, "strategy": strategy, "task": task, "versus": versus, "measure": measure,
            "eps": math.nan if eps is None else float(eps), "value": float(value), "ci_low": float(ci[0]),
            "ci_high": float(ci[1]), "n": math.nan if n is None else float(n)}


def reference_eps(table: pd.DataFrame, runs: pd.DataFrame) -> float:
    """The eps of the headline accuracies: the most common training eps of the transferred models' cards, else the
    pooled median of the positive ``eps_lo`` (two significant digits), else 0."""
    card_eps = runs.loc[runs["strategy"] != "source", "card_eps"].dropna() if "card_eps" in runs else pd.Series([])
    card_eps = card_eps[card_eps > 0]
    if len(card_eps):
        return float(card_eps.mode().min())
    lo = table.loc[correctly_classified(table).to_numpy(), "eps_lo"].to_numpy(dtype=float)
    lo = lo[lo > 0]
    return float(f"{np.median(lo):.2g}") if lo.size else 0.0


def _radius(rows: pd.DataFrame) -> np.ndarray:
    """Certified radius per row: eps_lo where correctly classified, else 0."""
    return np.where(correctly_classified(rows).to_numpy(), rows["eps_lo"].to_numpy(dtype=float), 0.0)


def _entry_rows(strategy: str, task: str, rows: pd.DataFrame, run: pd.Series, grid: Sequence[float], seed: int
                ) -> list[dict]:
    correct = correctly_classified(rows).to_numpy()
    lo = rows["eps_lo"].to_numpy(dtype=float)[correct]
    hi = rows["eps_hi"].to_numpy(dtype=float)[correct]
    falsified = np.isfinite(hi)
    gap = hi[falsified] - lo[falsified]
    out = [
        _row("entry", strategy, task, "n", len(rows)),
        _row("entry", strategy, task, "n_correct", int(correct.sum())),
        _row("entry", strategy, task, "clean_acc", correct.mean() if len(rows) else math.nan, n=len(rows)),
        _row("entry", strategy, task, "n_falsified", int(falsified.sum())),
    ]
    for key in ("train_time_s", "card_eps"):
        if key in run and pd.notna(run[key]):
            out.append(_row("entry", strategy, task, key, run[key]))
    curve = certified_accuracy_curve(rows.assign(model=strategy), eps=grid)
    for _, point in curve.iterrows():
        out.append(_row("accuracy", strategy, task, "certified_acc", point["certified_acc"], eps=point["eps"],
                        n=point["n"]))
        out.append(_row("accuracy", strategy, task, "pgd_acc", 1 - point["falsified_frac"], eps=point["eps"],
                        n=point["n"]))
    for name, values in (("eps_lo", lo), ("eps_hi", hi)):
        for label, q in QUANTILES.items():
            v, ci_lo, ci_hi = quantile_ci(values, q, seed=seed)
            out.append(_row("radius", strategy, task, f"{name}_{label}", v, ci=(ci_lo, ci_hi), n=values.size))
    v, ci_lo, ci_hi = quantile_ci(gap, 0.5, seed=seed)
    out.append(_row("radius", strategy, task, "gap_q50", v, ci=(ci_lo, ci_hi), n=gap.size))
    mean_ci = bootstrap_ci(gap, lambda s: s.mean(axis=1), seed=seed)
    out.append(_row("radius", strategy, task, "gap_mean", gap.mean() if gap.size else math.nan, ci=mean_ci,
                    n=gap.size))
    fit = lognormal_fit(lo)
    for key in ("mu", "sigma", "shapiro_p", "ks_stat"):
        out.append(_row("lognormal", strategy, task, key, getattr(fit, key), n=fit.n))
    out.append(_row("lognormal", strategy, task, "n_zero", fit.n_zero))
    for key in sorted(k for k in run.index if str(k).startswith("sim_")):
        if pd.notna(run[key]):
            out.append(_row("similarity", strategy, task, key[4:], run[key]))
    return out


def _pairwise_rows(table: pd.DataFrame, seed: int) -> list[dict]:
    out: list[dict] = []
    for task, rows in table.groupby("task", sort=True):
        strategies = sorted(rows["strategy"].unique())
        for a, b in permutations(strategies, 2):
            ra = rows[rows["strategy"] == a].drop_duplicates("sample_id").set_index("sample_id")
            rb = rows[rows["strategy"] == b].drop_duplicates("sample_id").set_index("sample_id")
            shared = ra.index.intersection(rb.index).sort_values()
            if len(shared) == 0:
                continue
            result = paired_comparison(_radius(ra.loc[shared]), _radius(rb.loc[shared]), seed=seed)
            n = result.n
            base = dict(versus=b, n=n)
            out += [
                _row("pairwise", a, task, "median_a", result.median_a, **base),
                _row("pairwise", a, task, "median_b", result.median_b, **base),
                _row("pairwise", a, task, "median_diff", result.median_diff,
                     ci=(result.diff_ci_low, result.diff_ci_high), **base),
                _row("pairwise", a, task, "ratio", result.ratio, ci=(result.ratio_ci_low, result.ratio_ci_high),
                     **base),
                _row("pairwise", a, task, "wilcoxon_stat", result.wilcoxon_stat, **base),
                _row("pairwise", a, task, "p_value", result.p_value, **base),
                _row("pairwise", a, task, "effect", result.effect, **base),
            ]
    # Holm over the family of unordered pairs; both directions of a pair carry its adjusted p-value
    p_rows = [r for r in out if r["measure"] == "p_value"]
    family = [r for r in p_rows if r["strategy"] < r["versus"]]
    adjusted = {(r["task"], r["strategy"], r["versus"]): float(p) for r, p in zip(family, holm([r["value"] for r in family]))}
    for r in p_rows:
        pair = (r["task"], *sorted((r["strategy"], r["versus"])))
        out.append({**r, "measure": "p_holm", "value": adjusted[pair]})
    return out


def _correlation_rows(summary: pd.DataFrame) -> list[dict]:
    points = entry_points(summary)
    measures = sorted(summary.loc[summary["section"] == "similarity", "measure"].unique())
    points = points[points["strategy"] != "source"]
    out = []
    groups = [(s, points[points["strategy"] == s]) for s in sorted(points["strategy"].unique())]
    for strategy, part in groups + [(ALL_STRATEGIES, points)]:
        for measure in measures:
            if measure not in part:
                continue
            r = spearman(part[measure].to_numpy(dtype=float), part["eps_lo_q50"].to_numpy(dtype=float))
            out.append(_row("correlation", strategy, None, "spearman_rho", r.rho, versus=measure,
                            ci=(r.ci_low, r.ci_high), n=r.n))
            out.append(_row("correlation", strategy, None, "spearman_p", r.p_value, versus=measure, n=r.n))
    return out


def build_summary(table: pd.DataFrame, runs: pd.DataFrame, *, eps_ref: float, eps_grid: Sequence[float],
                  seed: int = 0) -> pd.DataFrame:
    """All numbers of the report (see the module docstring).

    ``table``: the sweep rows of all runs with ``strategy`` and ``task``; ``runs``: one row per run
    (:func:`robverify.analysis.runs.runs_frame`).
    """
    grid = sorted({float(e) for e in eps_grid} | {float(eps_ref)})
    rows: list[dict] = []
    for (strategy, task), part in table.groupby(["strategy", "task"], sort=True):
        run = runs[(runs["strategy"] == strategy) & (runs["task"] == task)].iloc[0]
        rows += _entry_rows(strategy, task, part, run, grid, seed)
    rows += _pairwise_rows(table, seed)
    for run in runs.itertuples(index=False):
        for column in runs.columns:
            if column.startswith("search_"):
                rows.append(_row("search", run.strategy, run.task, column[len("search_"):], math.nan,
                                 versus=str(getattr(run, column))))
    rows += [_row("settings", ALL_STRATEGIES, None, "eps_ref", eps_ref),
             _row("settings", ALL_STRATEGIES, None, "confidence", CONFIDENCE),
             _row("settings", ALL_STRATEGIES, None, "n_boot", N_BOOT),
             _row("settings", ALL_STRATEGIES, None, "seed", seed)]
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    summary = pd.concat([summary, pd.DataFrame(_correlation_rows(summary), columns=SUMMARY_COLUMNS)],
                        ignore_index=True)
    return summary


# ---------------------------------------------------------------------------------------------------------------
# reading the summary


def value(summary: pd.DataFrame, section: str, measure: str, *, strategy: str | None = None,
          task: str | None = None, versus: str | None = None, eps: float | None = None) -> pd.Series | None:
    """The one summary row matching the given keys (None where there is none)."""
    mask = (summary["section"] == section) & (summary["measure"] == measure)
    for column, wanted in (("strategy", strategy), ("task", task), ("versus", versus)):
        if wanted is not None:
            mask &= summary[column] == wanted
    if eps is not None:
        mask &= np.isclose(summary["eps"].to_numpy(dtype=float), eps, rtol=1e-9, atol=1e-12)
    found = summary[mask]
    return found.iloc[0] if len(found) else None


def entry_points(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (strategy, task): entry facts, radius quantiles (values only), similarity scores, and
    ``certified_acc`` / ``pgd_acc`` at ``eps_ref``."""
    keyed = summary[summary["section"].isin(["entry", "radius", "similarity"])]
    wide = keyed.pivot_table(index=["strategy", "task"], columns="measure", values="value", aggfunc="first")
    eps_row = summary[(summary["section"] == "settings") & (summary["measure"] == "eps_ref")]
    if len(eps_row):
        eps_ref = float(eps_row["value"].iloc[0])
        acc = summary[(summary["section"] == "accuracy")
                      & np.isclose(summary["eps"].to_numpy(dtype=float), eps_ref, rtol=1e-9, atol=1e-12)]
        acc = acc.pivot_table(index=["strategy", "task"], columns="measure", values="value", aggfunc="first")
        wide = wide.join(acc, how="left")
    wide.columns.name = None
    return wide.reset_index()

