"""The summary table of a strategies comparison: every number the report quotes, one tidy row each.

Columns :data:`SUMMARY_COLUMNS`: ``section`` (what kind of number), ``strategy``, ``task`` (the target task),
``versus`` (the other strategy of a pairwise comparison, the similarity measure of a correlation or regression,
or a replicate's training seed), ``measure``, ``eps`` (where the number depends on eps), ``value``,
``ci_low`` / ``ci_high`` (95% interval where there is one) and ``n`` (the samples, points or tasks behind it).

An *entry* is a (strategy, task) pair; its *replicates* are its runs whose models were trained with different seeds
(:mod:`robverify.analysis.runs`). Entry sections pool the samples of an entry's replicates (a sample's certified
radius in paired comparisons is its mean over them); aggregates over target tasks resample tasks as clusters.
Sections:

- ``entry``: per (strategy, task): ``n``, ``n_correct``, ``clean_acc``, ``n_falsified``, ``n_replicates``,
  ``train_time_s``, ``card_eps`` (from the model cards; means over replicates).
- ``replicate``: per run, versus = its training seed: ``eps_lo_q50`` (median eps_lo of its correctly classified
  samples, n = their number) and ``train_time_s``.
- ``accuracy``: per (strategy, task, eps): ``certified_acc`` (correct and ``eps_lo >= eps``) and ``pgd_acc``
  (correct and not falsified at or below eps: ``eps_hi > eps``), fractions of all samples.
- ``radius``: per (strategy, task): ``eps_lo_q25/q50/q75``, ``eps_hi_q25/q50/q75`` over correctly classified
  samples (``eps_hi`` may be inf) and ``gap_q50`` / ``gap_mean`` of ``eps_hi - eps_lo`` over falsified samples,
  each with a bootstrap interval.
- ``similarity``: per (strategy, task): the model cards' task-similarity scores (mean over replicates),
  measure = the similarity measure (``logme``, ``hscore``, ``leep``, ``gbc``, ``label_overlap``, ``ot_distance``,
  ``otdd``, ...).
- ``representation``: per (strategy, task): ``representation_change_cka``, the linear CKA between the source and
  the transferred model's features of the target samples (``cka`` in older cards). It measures how much the
  strategy changed the representation, not how similar the tasks are, and takes no part in the correlations or
  the regression.
- ``strategy``: per strategy over its target tasks: ``eps_lo_q50_mean``, the mean over tasks of the replicates'
  mean median eps_lo, with a two-stage cluster bootstrap interval (tasks, then replicates within; n = tasks),
  and ``n_runs``.
- ``pairwise``: per task, strategy vs versus on their shared samples (certified radius, 0 if misclassified):
  ``median_a``, ``median_b``, ``median_diff``, ``ratio``, ``wilcoxon_stat``, ``p_value``, ``p_holm`` (Holm over all
  pairs of the report), ``effect`` (rank-biserial).
- ``retention``: per transferred (strategy, task) where a ``source`` run on the same task exists (the source
  model swept on the target task, hence on the same samples): versus = ``source``, ``retention`` = median certified
  radius of the transfer / of the source model on their shared samples (paired bootstrap interval),
  ``median_transfer``, ``median_source``. No row where no source run shares the task.
- ``correlation``: per strategy, versus = task-similarity measure: ``spearman_rho`` (Fisher-z interval, NaN for
  fewer than 4 points), ``spearman_p`` and ``spearman_p_holm`` (Holm over every correlation of the report: this
  section and ``cost``) between the measure and ``eps_lo_q50`` over the strategy's tasks. Strategy ``all`` pools
  the transferred strategies with one point per target task (measure and eps_lo_q50 averaged over the strategies
  on it), so that a task's strategies do not count as independent targets.
- ``cost``: strategy ``all``, versus = ``train_time_s``: ``spearman_rho`` / ``spearman_p`` / ``spearman_p_holm``
  of training time vs eps_lo_q50 across entries.
- ``regression``: versus = the primary task-similarity measure (:data:`PRIMARY_SIMILARITY`): OLS of
  ``log(eps_lo_q50)`` per run on the measure with a strategy factor and strategy-specific slopes
  (:func:`robverify.analysis.statistics.slope_regression`, replicates averaged per entry, runs with a zero median
  left out); measure = ``intercept``, ``strategy[s]``, ``slope``, ``slope:strategy[s]``, ``slope_of[s]`` (strategy
  = the reference strategy, or s), n = entries; plus ``n_tasks``, ``n_runs`` and ``ci_cluster_bootstrap`` (1:
  intervals by cluster bootstrap over target tasks, 0: OLS t-intervals, for fewer than ``regression_min_tasks``).
- ``lognormal``: per (strategy, task): ``mu``, ``sigma``, ``shapiro_p``, ``ks_stat`` of the positive eps_lo.
- ``settings``: ``eps_ref`` (the eps of the headline accuracies), ``confidence``, ``n_boot``, ``seed``,
  ``regression_min_tasks``.
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
from robverify.analysis.runs import REPRESENTATION_CHANGE, SOURCE_STRATEGY
from robverify.analysis.statistics import (
    CONFIDENCE,
    MIN_CLUSTERS,
    N_BOOT,
    bootstrap_ci,
    cluster_bootstrap_ci,
    holm,
    lognormal_fit,
    mean_of_cluster_means,
    paired_comparison,
    quantile,
    quantile_ci,
    slope_regression,
    spearman,
)

__all__ = ["ALL_STRATEGIES", "PRIMARY_SIMILARITY", "SUMMARY_COLUMNS", "build_summary", "entry_points",
           "primary_similarity", "reference_eps", "value"]

SUMMARY_COLUMNS = ["section", "strategy", "task", "versus", "measure", "eps", "value", "ci_low", "ci_high", "n"]
ALL_STRATEGIES = "all"
QUANTILES = {"q25": 0.25, "q50": 0.5, "q75": 0.75}
#: the task-similarity measure the regression and the conclusions use, in order of preference, fixed before
#: looking at any correlation (all measures are in the tables)
PRIMARY_SIMILARITY = ("logme", "leep", "hscore", "gbc", "otdd", "ot_distance", "label_overlap")
#: sections whose ``spearman_p`` form the Holm family of correlations
CORRELATION_SECTIONS = ("correlation", "cost")


def _row(section: str, strategy: str, task: str | None, measure: str, value: float, *, versus: str | None = None,
         eps: float | None = None, ci: tuple[float, float] = (math.nan, math.nan), n: int | None = None) -> dict:
    return {"section": section, "strategy": strategy, "task": task, "versus": versus, "measure": measure,
            "eps": math.nan if eps is None else float(eps), "value": float(value), "ci_low": float(ci[0]),
            "ci_high": float(ci[1]), "n": math.nan if n is None else float(n)}


def primary_similarity(measures: Sequence[str]) -> str | None:
    """The first of :data:`PRIMARY_SIMILARITY` among ``measures``, else the first measure in sorted order."""
    present = sorted(set(measures))
    return next((m for m in PRIMARY_SIMILARITY if m in present), present[0] if present else None)


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


def _sample_radius(rows: pd.DataFrame) -> pd.Series:
    """Certified radius per sample_id (sorted), the mean over the replicates that swept it."""
    return pd.Series(_radius(rows), index=rows["sample_id"].to_numpy()).groupby(level=0).mean().sort_index()


def _replicates(frame: pd.DataFrame) -> pd.Series:
    return frame["replicate"].astype(str) if "replicate" in frame else pd.Series("-", index=frame.index)


# ---------------------------------------------------------------------------------------------------------------
# per run and per entry


def _run_points(table: pd.DataFrame, runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run (strategy, task, replicate): ``eps_lo_q50`` (median eps_lo of its correctly classified
    samples), ``n_correct``, and the run's facts (``train_time_s``, ``sim_<measure>``)."""
    table = table.assign(replicate=_replicates(table), _correct=correctly_classified(table).to_numpy())
    rows = []
    for (strategy, task, replicate), part in table.groupby(["strategy", "task", "replicate"], sort=True):
        lo = part.loc[part["_correct"], "eps_lo"].to_numpy(dtype=float)
        rows.append({"strategy": strategy, "task": task, "replicate": replicate, "eps_lo_q50": quantile(lo, 0.5),
                     "n_correct": lo.size})
    points = pd.DataFrame(rows, columns=["strategy", "task", "replicate", "eps_lo_q50", "n_correct"])
    facts = runs.assign(replicate=_replicates(runs)).drop_duplicates(["strategy", "task", "replicate"])
    keep = [c for c in facts.columns if c in ("train_time_s", "card_eps") or str(c).startswith("sim_")]
    facts = facts[["strategy", "task", "replicate", *keep]].astype({c: float for c in keep})
    return points.merge(facts, how="left", on=["strategy", "task", "replicate"])


def _entry_facts(points: pd.DataFrame) -> pd.DataFrame:
    """Per (strategy, task): the means over replicates of the run facts, and ``n_replicates``."""
    numeric = [c for c in points.columns if c in ("train_time_s", "card_eps") or str(c).startswith("sim_")]
    grouped = points.groupby(["strategy", "task"], sort=True)
    facts = grouped[numeric].mean() if numeric else pd.DataFrame(index=grouped.size().index)
    return facts.assign(n_replicates=grouped.size())


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
        _row("entry", strategy, task, "n_replicates", run["n_replicates"]),
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
            measure = key[4:]
            section = "representation" if measure == REPRESENTATION_CHANGE else "similarity"
            out.append(_row(section, strategy, task, measure, run[key]))
    return out


def _replicate_rows(points: pd.DataFrame) -> list[dict]:
    out = []
    for p in points.itertuples(index=False):
        out.append(_row("replicate", p.strategy, p.task, "eps_lo_q50", p.eps_lo_q50, versus=p.replicate,
                        n=p.n_correct))
        if "train_time_s" in points and pd.notna(p.train_time_s):
            out.append(_row("replicate", p.strategy, p.task, "train_time_s", p.train_time_s, versus=p.replicate))
    return out


def _strategy_rows(points: pd.DataFrame, seed: int) -> list[dict]:
    """Per strategy: the mean over target tasks of the replicates' mean median eps_lo, cluster-bootstrapped."""
    out = []
    for strategy, part in points.dropna(subset=["eps_lo_q50"]).groupby("strategy", sort=True):
        values, tasks = part["eps_lo_q50"].to_numpy(dtype=float), part["task"].to_numpy()
        ci = cluster_bootstrap_ci(values, tasks, mean_of_cluster_means, seed=seed)
        n_tasks = int(np.unique(tasks).size)
        out.append(_row("strategy", strategy, None, "eps_lo_q50_mean", mean_of_cluster_means(values, tasks), ci=ci,
                        n=n_tasks))
        out.append(_row("strategy", strategy, None, "n_runs", len(part), n=n_tasks))
    return out


# ---------------------------------------------------------------------------------------------------------------
# paired comparisons on shared samples


def _pairwise_rows(table: pd.DataFrame, seed: int) -> list[dict]:
    out: list[dict] = []
    for task, rows in table.groupby("task", sort=True):
        strategies = sorted(rows["strategy"].unique())
        radius = {s: _sample_radius(rows[rows["strategy"] == s]) for s in strategies}
        for a, b in permutations(strategies, 2):
            shared = radius[a].index.intersection(radius[b].index).sort_values()
            if len(shared) == 0:
                continue
            result = paired_comparison(radius[a].loc[shared].to_numpy(), radius[b].loc[shared].to_numpy(), seed=seed)
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


def _retention_rows(table: pd.DataFrame, seed: int) -> list[dict]:
    """Transfer vs the source model on the same task (so on the same samples); no row without a source run."""
    out: list[dict] = []
    for task, rows in table.groupby("task", sort=True):
        source = rows[rows["strategy"] == SOURCE_STRATEGY]
        if source.empty:
            continue
        base = _sample_radius(source)
        for strategy in sorted(set(rows["strategy"]) - {SOURCE_STRATEGY}):
            own = _sample_radius(rows[rows["strategy"] == strategy])
            shared = own.index.intersection(base.index).sort_values()
            if len(shared) == 0:
                continue
            result = paired_comparison(own.loc[shared].to_numpy(), base.loc[shared].to_numpy(), seed=seed)
            keys = dict(versus=SOURCE_STRATEGY, n=result.n)
            out += [_row("retention", strategy, task, "retention", result.ratio,
                         ci=(result.ratio_ci_low, result.ratio_ci_high), **keys),
                    _row("retention", strategy, task, "median_transfer", result.median_a, **keys),
                    _row("retention", strategy, task, "median_source", result.median_b, **keys)]
    return out


# ---------------------------------------------------------------------------------------------------------------
# correlations and the regression over target tasks


def _spearman_rows(section: str, strategy: str, versus: str, x: np.ndarray, y: np.ndarray) -> list[dict]:
    r = spearman(x, y)
    return [_row(section, strategy, None, "spearman_rho", r.rho, versus=versus, ci=(r.ci_low, r.ci_high), n=r.n),
            _row(section, strategy, None, "spearman_p", r.p_value, versus=versus, n=r.n)]


def _task_similarity_measures(summary: pd.DataFrame) -> list[str]:
    return sorted(summary.loc[summary["section"] == "similarity", "measure"].unique())


def _correlation_rows(summary: pd.DataFrame) -> list[dict]:
    """Per transferred strategy one point per task; pooled (``all``) one point per task, averaged over its
    strategies (the strategies on one target task are one cluster, not independent targets)."""
    points = entry_points(summary)
    points = points[points["strategy"] != SOURCE_STRATEGY]
    out = []
    for measure in _task_similarity_measures(summary):
        if measure not in points:
            continue
        part = points.dropna(subset=[measure])
        for strategy, own in part.groupby("strategy", sort=True):
            out += _spearman_rows("correlation", strategy, measure, own[measure].to_numpy(dtype=float),
                                  own["eps_lo_q50"].to_numpy(dtype=float))
        per_task = part.groupby("task", sort=True)[[measure, "eps_lo_q50"]].mean()
        out += _spearman_rows("correlation", ALL_STRATEGIES, measure, per_task[measure].to_numpy(dtype=float),
                              per_task["eps_lo_q50"].to_numpy(dtype=float))
    return out


def _cost_rows(summary: pd.DataFrame) -> list[dict]:
    points = entry_points(summary)
    if "train_time_s" not in points or points["train_time_s"].isna().all():
        return []
    return _spearman_rows("cost", ALL_STRATEGIES, "train_time_s", points["train_time_s"].to_numpy(dtype=float),
                          points["eps_lo_q50"].to_numpy(dtype=float))


def _holm_rows(rows: list[dict]) -> list[dict]:
    """``spearman_p_holm``: each correlation's p-value adjusted over every correlation in ``rows``."""
    family = [r for r in rows if r["section"] in CORRELATION_SECTIONS and r["measure"] == "spearman_p"]
    adjusted = holm([r["value"] for r in family])
    return [{**r, "measure": "spearman_p_holm", "value": float(p)} for r, p in zip(family, adjusted)]


def _regression_rows(summary: pd.DataFrame, points: pd.DataFrame, seed: int) -> list[dict]:
    """log(eps_lo_q50) per run on the primary task-similarity measure x strategy (transferred strategies)."""
    measure = primary_similarity(_task_similarity_measures(summary))
    column = f"sim_{measure}"
    if measure is None or column not in points:
        return []
    part = points[(points["strategy"] != SOURCE_STRATEGY) & (points["eps_lo_q50"] > 0)].dropna(subset=[column])
    fit = slope_regression(part[column].to_numpy(dtype=float), np.log(part["eps_lo_q50"].to_numpy(dtype=float)),
                           part["strategy"].to_numpy(), part["task"].to_numpy(), factor="strategy", seed=seed)
    if fit is None:
        return []
    out = []
    for name, v, lo, hi in zip(fit.names, fit.value, fit.ci_low, fit.ci_high):
        strategy = name[name.index("[") + 1:-1] if "[" in name else fit.reference
        out.append(_row("regression", strategy, None, name, v, versus=measure, ci=(lo, hi), n=fit.n_cells))
    for name, v in (("n_tasks", fit.n_clusters), ("n_runs", fit.n_points),
                    ("ci_cluster_bootstrap", float(fit.cluster_bootstrap))):
        out.append(_row("regression", fit.reference, None, name, v, versus=measure, n=fit.n_cells))
    return out


def build_summary(table: pd.DataFrame, runs: pd.DataFrame, *, eps_ref: float, eps_grid: Sequence[float],
                  seed: int = 0) -> pd.DataFrame:
    """All numbers of the report (see the module docstring).

    ``table``: the sweep rows of all runs with ``strategy``, ``task`` (and ``replicate``, else one replicate per
    entry); ``runs``: one row per run (:func:`robverify.analysis.runs.runs_frame`).
    """
    grid = sorted({float(e) for e in eps_grid} | {float(eps_ref)})
    points = _run_points(table, runs)
    facts = _entry_facts(points)
    rows: list[dict] = []
    for (strategy, task), part in table.groupby(["strategy", "task"], sort=True):
        rows += _entry_rows(strategy, task, part, facts.loc[(strategy, task)], grid, seed)
    rows += _replicate_rows(points)
    rows += _strategy_rows(points, seed)
    rows += _pairwise_rows(table, seed)
    rows += _retention_rows(table, seed)
    for run in runs.itertuples(index=False):
        for column in runs.columns:
            if column.startswith("search_"):
                rows.append(_row("search", run.strategy, run.task, column[len("search_"):], math.nan,
                                 versus=str(getattr(run, column))))
    rows += [_row("settings", ALL_STRATEGIES, None, "eps_ref", eps_ref),
             _row("settings", ALL_STRATEGIES, None, "confidence", CONFIDENCE),
             _row("settings", ALL_STRATEGIES, None, "n_boot", N_BOOT),
             _row("settings", ALL_STRATEGIES, None, "seed", seed),
             _row("settings", ALL_STRATEGIES, None, "regression_min_tasks", MIN_CLUSTERS)]
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    derived = _correlation_rows(summary) + _cost_rows(summary)
    derived += _holm_rows(derived) + _regression_rows(summary, points, seed)
    return pd.concat([summary, pd.DataFrame(derived, columns=SUMMARY_COLUMNS)], ignore_index=True)


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
    """One row per (strategy, task): entry facts, radius quantiles (values only), similarity and representation
    scores, and ``certified_acc`` / ``pgd_acc`` at ``eps_ref``."""
    keyed = summary[summary["section"].isin(["entry", "radius", "similarity", "representation"])]
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

