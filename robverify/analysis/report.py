"""The strategies report of ``robverify compare``: ``summary.csv``, ``report.md``, a self-contained ``report.html``
and ``figures/`` (PNG + SVG).

The text of the report is written from the summary alone (:func:`report_blocks` reads nothing else), so every
number it quotes can be recomputed from ``summary.csv``: ``render_markdown(report_blocks(read_summary(csv)))``
gives back ``report.md``. The HTML shows the same blocks with the PNG figures embedded as base64 (no network).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from robverify.analysis.plots import plot_certified_accuracy, plot_ecdf
from robverify.analysis.render import FIGURES, Block, render_html, render_markdown
from robverify.analysis.distribution import certified_accuracy_curve
from robverify.analysis.runs import SEARCH_SETTINGS, load_study_runs, runs_frame, study_table
from robverify.analysis.strategy_plots import (
    plot_cost_vs_radius,
    plot_pareto,
    plot_radius_by_strategy,
    plot_radius_vs_similarity,
    plot_training_cost,
)
from robverify.analysis.summary import (
    ALL_STRATEGIES,
    SUMMARY_COLUMNS,
    build_summary,
    entry_points,
    primary_similarity,
    reference_eps,
    value,
)
from robverify.errors import RobverifyError
from robverify.files import atomic_write_text

__all__ = ["Block", "Report", "compare_runs", "conclusions", "draw_figures", "figure_names", "fmt", "headline_table",
           "read_summary", "render_html", "render_markdown", "report_blocks", "task_slug"]

SUMMARY_CSV, REPORT_MD, REPORT_HTML = "summary.csv", "report.md", "report.html"
#: strategy used as the reference in the conclusions when present (plain fine-tuning)
BASELINE = "full-ft"
ALPHA = 0.05
#: fewest points for a Spearman interval (:func:`robverify.analysis.statistics.spearman`)
MIN_CORRELATION_POINTS = 4
#: how the report names the representation-change measure wherever it shows it
REPRESENTATION_LABEL = "representation change (CKA between source and transferred features), not task similarity"


def fmt(v: float | None) -> str:
    """How the report writes a number: 3 significant digits, ``inf``, ``n/a`` for a missing one."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    v = float(v)
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.3g}"


def _ci(row: pd.Series | None) -> str:
    if row is None:
        return "n/a"
    if math.isnan(row["ci_low"]) and math.isnan(row["ci_high"]):
        return fmt(row["value"])
    return f"{fmt(row['value'])} [{fmt(row['ci_low'])}, {fmt(row['ci_high'])}]"


def _v(row: pd.Series | None) -> float:
    return math.nan if row is None else float(row["value"])


def _count(row: pd.Series | None) -> str:
    return "n/a" if row is None or math.isnan(row["value"]) else str(int(row["value"]))


def task_slug(task: str) -> str:
    """A file-name-safe form of a task: ``mnist5k[5-9]+rot90`` -> ``mnist5k-5-9-rot90``."""
    return re.sub(r"[^A-Za-z0-9]+", "-", task).strip("-")


# ---------------------------------------------------------------------------------------------------------------
# content


def read_summary(path: Path) -> pd.DataFrame:
    """``summary.csv`` as written by :func:`compare_runs` (text columns as str, missing ones as None)."""
    summary = pd.read_csv(path, dtype={"section": str, "strategy": str, "task": str, "versus": str, "measure": str})
    for column in ("strategy", "task", "versus"):
        summary[column] = summary[column].astype(object).where(summary[column].notna(), None)
    return summary[SUMMARY_COLUMNS]


def _eps_ref(summary: pd.DataFrame) -> float:
    return _v(value(summary, "settings", "eps_ref"))


def _tasks(summary: pd.DataFrame) -> list[str]:
    return sorted(summary.loc[summary["section"] == "entry", "task"].dropna().unique())


def _ranked(summary: pd.DataFrame, task: str) -> list[str]:
    """Strategies on ``task`` from the largest median certified radius (eps_lo_q50) down."""
    rows = summary[(summary["section"] == "radius") & (summary["measure"] == "eps_lo_q50") & (summary["task"] == task)]
    rows = rows.assign(key=rows["value"].fillna(-1.0)).sort_values(["key", "strategy"], ascending=[False, True])
    return rows["strategy"].tolist()


def headline_table(summary: pd.DataFrame) -> pd.DataFrame:
    """Per task and strategy (best median certified radius first): clean, certified and PGD accuracy at eps_ref,
    median eps_lo with its interval, training time; as text."""
    eps = _eps_ref(summary)
    rows = []
    for task in _tasks(summary):
        for strategy in _ranked(summary, task):
            keys = dict(strategy=strategy, task=task)
            rows.append({
                "task": task, "strategy": strategy,
                "clean acc": fmt(_v(value(summary, "entry", "clean_acc", **keys))),
                f"certified acc @ {fmt(eps)}": fmt(_v(value(summary, "accuracy", "certified_acc", eps=eps, **keys))),
                f"PGD acc @ {fmt(eps)}": fmt(_v(value(summary, "accuracy", "pgd_acc", eps=eps, **keys))),
                "median eps_lo [95% CI]": _ci(value(summary, "radius", "eps_lo_q50", **keys)),
                "train time (s)": fmt(_v(value(summary, "entry", "train_time_s", **keys))),
            })
    return pd.DataFrame(rows)


def _pair_sentence(summary: pd.DataFrame, task: str, a: str, b: str) -> str | None:
    keys = dict(strategy=a, task=task, versus=b)
    ratio = value(summary, "pairwise", "ratio", **keys)
    if ratio is None:
        return None
    n = str(int(ratio["n"]))
    med_a, med_b = _v(value(summary, "pairwise", "median_a", **keys)), _v(value(summary, "pairwise", "median_b", **keys))
    test = (f"Wilcoxon signed-rank p = {fmt(_v(value(summary, 'pairwise', 'p_holm', **keys)))} (Holm-adjusted), "
            f"rank-biserial r = {fmt(_v(value(summary, 'pairwise', 'effect', **keys)))}")
    if not math.isnan(ratio["value"]):
        return (f"On {task}, {a} keeps {fmt(ratio['value'])}x the median certified radius of {b} "
                f"({fmt(med_a)} vs {fmt(med_b)} on {n} shared samples; 95% CI of the ratio "
                f"[{fmt(ratio['ci_low'])}, {fmt(ratio['ci_high'])}]; {test}).")
    diff = value(summary, "pairwise", "median_diff", **keys)
    return (f"On {task}, {a} has a median certified radius of {fmt(med_a)} and {b} of {fmt(med_b)} on {n} shared "
            f"samples (difference {_ci(diff)}; {test}).")


def _accuracy_sentence(summary: pd.DataFrame, task: str) -> str | None:
    eps = _eps_ref(summary)
    strategies = _ranked(summary, task)
    cert = {s: _v(value(summary, "accuracy", "certified_acc", strategy=s, task=task, eps=eps)) for s in strategies}
    clean = {s: _v(value(summary, "entry", "clean_acc", strategy=s, task=task)) for s in strategies}
    if len(strategies) < 2 or all(math.isnan(v) for v in cert.values()):
        return None
    best_cert = max(strategies, key=lambda s: (np.nan_to_num(cert[s], nan=-1), clean[s]))
    best_clean = max(strategies, key=lambda s: (np.nan_to_num(clean[s], nan=-1), cert[s]))
    return (f"On {task}, the highest certified accuracy at eps {fmt(eps)} is {best_cert}'s {fmt(cert[best_cert])} "
            f"(clean {fmt(clean[best_cert])}); the highest clean accuracy is {best_clean}'s {fmt(clean[best_clean])} "
            f"(certified {fmt(cert[best_clean])}).")


def _rho_interval(rho: pd.Series) -> str:
    """``rho [lo, hi]``, or the flag of a correlation over too few points for an interval."""
    if math.isnan(rho["ci_low"]) and not math.isnan(rho["value"]) and rho["n"] < MIN_CORRELATION_POINTS:
        return f"{fmt(rho['value'])} (too few points for an interval: n < {MIN_CORRELATION_POINTS})"
    return _ci(rho)


def _correlation_sentences(summary: pd.DataFrame) -> list[str]:
    """One sentence per strategy (pooled first) for the primary similarity measure, chosen before looking at the
    correlations (:data:`robverify.analysis.summary.PRIMARY_SIMILARITY` where present) so that no measure is picked
    for its result."""
    rows = summary[(summary["section"] == "correlation") & (summary["measure"] == "spearman_rho")]
    primary = primary_similarity(rows["versus"].dropna().unique())
    if primary is None:
        return []
    out = []
    for strategy in sorted(rows["strategy"].unique(), key=lambda s: (s != ALL_STRATEGIES, s)):
        rho = value(summary, "correlation", "spearman_rho", strategy=strategy, versus=primary)
        if rho is None or math.isnan(rho["value"]):
            continue
        p = value(summary, "correlation", "spearman_p_holm", strategy=strategy, versus=primary)
        who = ("all strategies pooled, one point per target task" if strategy == ALL_STRATEGIES else strategy)
        interval = (f"too few points for an interval: n < {MIN_CORRELATION_POINTS}" if math.isnan(rho["ci_low"])
                    else f"95% CI [{fmt(rho['ci_low'])}, {fmt(rho['ci_high'])}]")
        out.append(f"Median certified radius vs {primary} ({who}, {int(rho['n'])} targets): Spearman rho = "
                   f"{fmt(rho['value'])} ({interval}, Holm-adjusted p = {fmt(_v(p))}).")
    return out


def _cost_sentence(summary: pd.DataFrame) -> str | None:
    rho = value(summary, "cost", "spearman_rho")
    if rho is None or math.isnan(rho["value"]):
        return None
    p = value(summary, "cost", "spearman_p_holm")
    return (f"Training time vs median certified radius across {int(rho['n'])} entries: Spearman rho = "
            f"{_rho_interval(rho)}, Holm-adjusted p = {fmt(_v(p))}.")


def _lognormal_sentence(summary: pd.DataFrame) -> str | None:
    p = summary[(summary["section"] == "lognormal") & (summary["measure"] == "shapiro_p")].dropna(subset=["value"])
    if p.empty:
        return None
    k = int((p["value"] >= ALPHA).sum())
    return (f"{k} of {len(p)} certified-radius distributions are consistent with a log-normal "
            f"(Shapiro-Wilk on log eps_lo, p >= {fmt(ALPHA)}).")


def _gap_sentence(summary: pd.DataFrame) -> str | None:
    gaps = summary[(summary["section"] == "radius") & (summary["measure"] == "gap_q50")].dropna(subset=["value"])
    if gaps.empty:
        return None
    lo, hi = gaps.loc[gaps["value"].idxmin()], gaps.loc[gaps["value"].idxmax()]
    return (f"The median verification gap (eps_hi - eps_lo of falsified samples) ranges from {fmt(lo['value'])} "
            f"({lo['strategy']} on {lo['task']}) to {fmt(hi['value'])} ({hi['strategy']} on {hi['task']}).")


def conclusions(summary: pd.DataFrame) -> list[str]:
    """The readable conclusions, each with its numbers and interval, all read from the summary."""
    out: list[str] = []
    for task in _tasks(summary):
        ranked = _ranked(summary, task)
        if len(ranked) >= 2:
            best = ranked[0]
            baseline = BASELINE if BASELINE in ranked and BASELINE != best else ranked[1]
            sentence = _pair_sentence(summary, task, best, baseline)
            if sentence:
                out.append(sentence)
        sentence = _accuracy_sentence(summary, task)
        if sentence:
            out.append(sentence)
    out += _correlation_sentences(summary)
    for sentence in (_cost_sentence(summary), _lognormal_sentence(summary), _gap_sentence(summary)):
        if sentence:
            out.append(sentence)
    return out


def _radius_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for task in _tasks(summary):
        for strategy in _ranked(summary, task):
            keys = dict(strategy=strategy, task=task)
            row = {"task": task, "strategy": strategy,
                   "n correct": _count(value(summary, "entry", "n_correct", **keys))}
            for name in ("eps_lo", "eps_hi"):
                for q in ("q25", "q50", "q75"):
                    row[f"{name} {q}"] = _ci(value(summary, "radius", f"{name}_{q}", **keys))
            row["median gap"] = _ci(value(summary, "radius", "gap_q50", **keys))
            rows.append(row)
    return pd.DataFrame(rows)


def _accuracy_table(summary: pd.DataFrame) -> pd.DataFrame:
    acc = summary[summary["section"] == "accuracy"]
    grid = sorted(acc["eps"].dropna().unique())
    rows = []
    for task in _tasks(summary):
        for strategy in _ranked(summary, task):
            row = {"task": task, "strategy": strategy}
            for eps in grid:
                cert = _v(value(summary, "accuracy", "certified_acc", strategy=strategy, task=task, eps=eps))
                pgd = _v(value(summary, "accuracy", "pgd_acc", strategy=strategy, task=task, eps=eps))
                row[f"eps {fmt(eps)}"] = f"{fmt(cert)} / {fmt(pgd)}"
            rows.append(row)
    return pd.DataFrame(rows)


def _pairwise_table(summary: pd.DataFrame) -> pd.DataFrame:
    pairs = summary[(summary["section"] == "pairwise") & (summary["measure"] == "ratio")]
    rows = []
    for _, pair in pairs.iterrows():
        a, b, task = pair["strategy"], pair["versus"], pair["task"]
        if a > b:
            continue  # each unordered pair once; summary.csv holds both directions
        keys = dict(strategy=a, task=task, versus=b)
        rows.append({"task": task, "a": a, "b": b, "n": str(int(pair["n"])),
                     "median a": fmt(_v(value(summary, "pairwise", "median_a", **keys))),
                     "median b": fmt(_v(value(summary, "pairwise", "median_b", **keys))),
                     "ratio a/b [95% CI]": _ci(pair),
                     "difference [95% CI]": _ci(value(summary, "pairwise", "median_diff", **keys)),
                     "p (Holm)": fmt(_v(value(summary, "pairwise", "p_holm", **keys))),
                     "effect r": fmt(_v(value(summary, "pairwise", "effect", **keys)))})
    return pd.DataFrame(rows)


def _correlation_table(summary: pd.DataFrame, section: str = "correlation") -> pd.DataFrame:
    rho = summary[(summary["section"] == section) & (summary["measure"] == "spearman_rho")]
    rows = []
    for _, r in rho.iterrows():
        keys = dict(strategy=r["strategy"], versus=r["versus"])
        who = f"{ALL_STRATEGIES} (task means)" if r["strategy"] == ALL_STRATEGIES and section == "correlation" \
            else r["strategy"]
        rows.append({"strategy": who, "vs": r["versus"], "n": str(int(r["n"])),
                     "Spearman rho [95% CI]": _rho_interval(r),
                     "p": fmt(_v(value(summary, section, "spearman_p", **keys))),
                     "p (Holm)": fmt(_v(value(summary, section, "spearman_p_holm", **keys)))})
    return pd.DataFrame(rows)


def _wide_table(summary: pd.DataFrame, section: str) -> pd.DataFrame:
    """Per (task, strategy) the section's values, one column per measure."""
    part = summary[summary["section"] == section]
    if part.empty:
        return pd.DataFrame()
    wide = part.pivot_table(index=["task", "strategy"], columns="measure", values="value", aggfunc="first")
    return wide.apply(lambda col: col.map(fmt)).reset_index().rename_axis(columns=None)


def _similarity_table(summary: pd.DataFrame) -> pd.DataFrame:
    return _wide_table(summary, "similarity")


def _strategy_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in summary[(summary["section"] == "strategy") & (summary["measure"] == "eps_lo_q50_mean")].iterrows():
        rows.append({"strategy": r["strategy"], "target tasks": str(int(r["n"])),
                     "runs": _count(value(summary, "strategy", "n_runs", strategy=r["strategy"])),
                     "mean over tasks of median eps_lo [95% CI]": _ci(r)})
    return pd.DataFrame(rows)


def _retention_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, r in summary[(summary["section"] == "retention") & (summary["measure"] == "retention")].iterrows():
        keys = dict(strategy=r["strategy"], task=r["task"])
        rows.append({"task": r["task"], "strategy": r["strategy"], "shared samples": str(int(r["n"])),
                     "median transfer": fmt(_v(value(summary, "retention", "median_transfer", **keys))),
                     "median source": fmt(_v(value(summary, "retention", "median_source", **keys))),
                     "retention [95% CI]": _ci(r)})
    return pd.DataFrame(rows)


def _regression_blocks(summary: pd.DataFrame) -> list[Block]:
    """The regression's model, how its intervals were made, and its coefficients."""
    reg = summary[summary["section"] == "regression"]
    method = value(summary, "regression", "ci_cluster_bootstrap")
    if reg.empty or method is None:
        return []
    measure = method["versus"]
    n_tasks = _count(value(summary, "regression", "n_tasks"))
    n_runs = _count(value(summary, "regression", "n_runs"))
    minimum = _count(value(summary, "settings", "regression_min_tasks"))
    how = ("Intervals: cluster bootstrap over target tasks (tasks resampled, then replicate runs within each "
           "strategy on a task)." if _v(method) == 1 else
           f"Intervals: OLS t-intervals (fewer than {minimum} target tasks for a cluster bootstrap; they treat the "
           f"entries as independent), n/a where the fit leaves no residual degrees of freedom.")
    text = (f"Least squares of log(median eps_lo) per run on {measure} with a strategy factor and strategy-specific "
            f"slopes, treatment-coded against {method['strategy']}: log r = intercept + strategy[s] + (slope + "
            f"slope:strategy[s]) x {measure}; slope_of[s] is strategy s's own slope. Replicates are averaged per "
            f"(strategy, task) and runs with a zero median are left out: {int(method['n'])} entries, {n_runs} runs, "
            f"{n_tasks} target tasks. {how}")
    coefficients = reg[~reg["measure"].isin(["n_tasks", "n_runs", "ci_cluster_bootstrap"])]
    table = pd.DataFrame([{"coefficient": r["measure"], "strategy": r["strategy"], "estimate [95% CI]": _ci(r)}
                          for _, r in coefficients.iterrows()])
    return [Block("h2", f"Regression of the certified radius on {measure} and strategy"), Block("p", text),
            Block("table", table=table)]


def _search_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per way of sweeping found among the runs: the settings and the (strategy, task) entries."""
    search = summary[summary["section"] == "search"]
    if search.empty:
        return pd.DataFrame()
    wide = search.pivot_table(index=["strategy", "task"], columns="measure", values="versus", aggfunc="first")
    settings = [c for c in SEARCH_SETTINGS if c in wide.columns]
    rows = []
    for combo, part in wide.reset_index().groupby(settings, sort=True, dropna=False):
        entries = [f"{r.strategy} on {r.task}" for r in part.itertuples(index=False)]
        rows.append({**dict(zip(settings, combo)), "runs": str(len(entries)) if len(entries) > 4 else
                     "; ".join(entries)})
    return pd.DataFrame(rows)


def _lognormal_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for task in _tasks(summary):
        for strategy in _ranked(summary, task):
            keys = dict(strategy=strategy, task=task)
            mu = value(summary, "lognormal", "mu", **keys)
            rows.append({"task": task, "strategy": strategy,
                         "n > 0": "n/a" if mu is None or math.isnan(mu["n"]) else str(int(mu["n"])),
                         "n = 0": _count(value(summary, "lognormal", "n_zero", **keys)),
                         "mu": fmt(_v(mu)), "sigma": fmt(_v(value(summary, "lognormal", "sigma", **keys))),
                         "Shapiro-Wilk p": fmt(_v(value(summary, "lognormal", "shapiro_p", **keys))),
                         "KS D": fmt(_v(value(summary, "lognormal", "ks_stat", **keys)))})
    return pd.DataFrame(rows)


def figure_names(summary: pd.DataFrame) -> list[str]:
    """The figures a report of this summary shows (file stems under ``figures/``)."""
    names = []
    for task in _tasks(summary):
        names += [f"ecdf_{task_slug(task)}", f"certified_accuracy_{task_slug(task)}"]
    names += ["radius_by_strategy", "pareto"]
    if (summary["section"] == "similarity").any():
        names.append("radius_vs_similarity")
    if value(summary, "entry", "train_time_s") is not None:
        names += ["training_cost", "cost_vs_radius"]
    return names


_CAPTIONS = {
    "ecdf": "Robustness distribution on {task}: ECDF of certified eps_lo (solid) and falsified eps_hi (dashed), "
            "one colour per strategy, each over its own correctly classified samples.",
    "certified_accuracy": "Certified accuracy (solid) and not-falsified fraction (dashed) vs eps on {task}.",
    "radius_by_strategy": "Certified radius eps_lo of correctly classified samples per strategy and target task.",
    "pareto": "Clean vs certified accuracy at eps_ref per target task; dashed: the Pareto front.",
    "radius_vs_similarity": "Median certified radius vs each task-similarity measure, least-squares line per "
                            "strategy.",
    "training_cost": "Training time per strategy and target task (model cards).",
    "cost_vs_radius": "Training time vs median certified radius, one point per (strategy, task).",
}


def _caption(name: str, summary: pd.DataFrame) -> str:
    for task in _tasks(summary):
        for prefix in ("ecdf", "certified_accuracy"):
            if name == f"{prefix}_{task_slug(task)}":
                return _CAPTIONS[prefix].format(task=task)
    return _CAPTIONS[name]


def report_blocks(summary: pd.DataFrame) -> list[Block]:
    """The report's content, read from the summary only."""
    eps = _eps_ref(summary)
    tasks = _tasks(summary)
    blocks = [
        Block("h1", "Transfer strategies: certified robustness report"),
        Block("p", f"{len(tasks)} task(s), {summary.loc[summary['section'] == 'entry', 'strategy'].nunique()} "
                   f"strateg(ies). Certified radius = eps_lo of a correctly classified sample (0 if misclassified in "
                   f"pairwise comparisons); intervals are 95% percentile bootstraps; headline accuracies at eps "
                   f"{fmt(eps)}. Every number here is a row of summary.csv."),
        Block("h2", "Headline"), Block("table", table=headline_table(summary)),
        Block("h2", "Conclusions"), Block("list", items=tuple(conclusions(summary))),
    ]
    names = figure_names(summary)
    blocks.append(Block("h2", "Robustness distributions"))
    blocks += [Block("figure", _caption(n, summary), figure=n) for n in names if n.startswith(("ecdf_", "certified_"))]
    blocks += [Block("h2", "Certified radius (quantiles with 95% CI)"), Block("table", table=_radius_table(summary)),
               Block("figure", _caption("radius_by_strategy", summary), figure="radius_by_strategy"),
               Block("h2", "Accuracy at eps (certified / PGD)"), Block("table", table=_accuracy_table(summary)),
               Block("figure", _caption("pareto", summary), figure="pareto")]
    pairwise = _pairwise_table(summary)
    if not pairwise.empty:
        blocks += [Block("h2", "Pairwise comparisons on shared samples"),
                   Block("p", "Wilcoxon signed-rank test of the certified radius per sample, Holm-adjusted over all "
                              "pairs; effect = matched-pairs rank-biserial correlation (> 0: a larger)."),
                   Block("table", table=pairwise)]
    retention = _retention_table(summary)
    if not retention.empty:
        blocks += [Block("h2", "Retention of the source model's certified radius"),
                   Block("p", "Median certified radius of the transferred model over that of the source model swept "
                              "on the same target task, on their shared samples (paired bootstrap interval). "
                              "Entries without a source run on their task have no row."),
                   Block("table", table=retention)]
    strategy_table = _strategy_table(summary)
    if not strategy_table.empty:
        blocks += [Block("h2", "Per strategy over target tasks"),
                   Block("p", "Mean over target tasks of the median certified radius (replicate runs averaged within "
                              "a task); intervals by a two-stage cluster bootstrap: target tasks, then the replicate "
                              "runs within each."),
                   Block("table", table=strategy_table)]
    blocks += _similarity_blocks(summary)
    blocks += _regression_blocks(summary)
    blocks += [Block("h2", "Log-normal fit of the certified radius"), Block("table", table=_lognormal_table(summary))]
    search = _search_table(summary)
    if not search.empty:
        mixed = len(search) > 1
        blocks += [Block("h2", "How the runs were swept"),
                   Block("p", "The runs were swept in different ways (compare --allow-mixed): their radii differ by "
                              "method as well as by model." if mixed else
                         "Every run was swept the same way (backend, method, verifier, time budget, tolerance, "
                         "grid, largest eps)."),
                   Block("table", table=search)]
    if "training_cost" in names:
        blocks += [Block("h2", "Training cost"),
                   Block("figure", _caption("training_cost", summary), figure="training_cost")]
        cost = _correlation_table(summary, "cost")
        if not cost.empty:
            blocks += [Block("p", "Spearman correlation of training time and median certified radius across entries "
                                  "(p Holm-adjusted with the task-similarity correlations)."),
                       Block("table", table=cost)]
        blocks.append(Block("figure", _caption("cost_vs_radius", summary), figure="cost_vs_radius"))
    return blocks


def _similarity_blocks(summary: pd.DataFrame) -> list[Block]:
    """Task similarity vs certified radius, then the representation change, labelled apart."""
    blocks: list[Block] = []
    similarity = _similarity_table(summary)
    if not similarity.empty:
        blocks += [Block("h2", "Task similarity and certified radius"), Block("table", table=similarity)]
        correlation = _correlation_table(summary)
        if not correlation.empty:
            blocks += [Block("p", f"Spearman correlation of each task-similarity measure with the median certified "
                                  f"radius over a strategy's target tasks; {ALL_STRATEGIES} (task means): one point "
                                  f"per target task, measure and radius averaged over the strategies on it, so that "
                                  f"a task's strategies do not count as independent targets. p (Holm): adjusted over "
                                  f"every correlation of this report. Fewer than {MIN_CORRELATION_POINTS} points: "
                                  f"no interval (too few points)."),
                       Block("table", table=correlation)]
        blocks.append(Block("figure", _caption("radius_vs_similarity", summary), figure="radius_vs_similarity"))
    representation = _wide_table(summary, "representation")
    if not representation.empty:
        blocks += [Block("h2", "Representation change"),
                   Block("p", f"representation_change_cka: {REPRESENTATION_LABEL}. It compares the source model's "
                              f"features of the target samples with the transferred model's (1 for a linear probe, "
                              f"which keeps the source features): an outcome of the strategy, so it is neither "
                              f"correlated with the radius as a task similarity nor used in the regression."),
                   Block("table", table=representation)]
    return blocks


# ---------------------------------------------------------------------------------------------------------------
# rendering


# ---------------------------------------------------------------------------------------------------------------
# the command


@dataclass(frozen=True)
class Report:
    """What :func:`compare_runs` wrote, the headline table and the data behind each figure."""

    out: Path
    summary: pd.DataFrame
    headline: pd.DataFrame
    figures: dict[str, object]

    @property
    def html(self) -> Path:
        return self.out / REPORT_HTML

    @property
    def markdown(self) -> Path:
        return self.out / REPORT_MD


def draw_figures(table: pd.DataFrame, summary: pd.DataFrame, figures_dir: Path) -> dict[str, object]:
    """All figures of the report (the names :func:`figure_names` lists); returns the data each drew."""
    drawn: dict[str, object] = {}
    eps_ref = _eps_ref(summary)
    points = entry_points(summary)
    for task in _tasks(summary):
        part = table[table["task"] == task]
        slug = task_slug(task)
        drawn[f"ecdf_{slug}"] = plot_ecdf(part, figures_dir, name=f"ecdf_{slug}")
        grid = sorted(summary.loc[(summary["section"] == "accuracy") & (summary["task"] == task), "eps"].unique())
        curve = certified_accuracy_curve(part, eps=sorted(set(grid) | set(np.linspace(0, max(grid) * 2, 41))))
        drawn[f"certified_accuracy_{slug}"] = plot_certified_accuracy(curve, figures_dir,
                                                                      name=f"certified_accuracy_{slug}")
    drawn["radius_by_strategy"] = plot_radius_by_strategy(table, figures_dir)
    drawn["pareto"] = plot_pareto(points, eps_ref, figures_dir)
    measures = sorted(summary.loc[summary["section"] == "similarity", "measure"].unique())
    if measures:
        drawn["radius_vs_similarity"] = plot_radius_vs_similarity(
            points.rename(columns={"eps_lo_q50": "median_eps_lo"}), measures, figures_dir)
    if "train_time_s" in points and points["train_time_s"].notna().any():
        drawn["training_cost"] = plot_training_cost(points, figures_dir)
        drawn["cost_vs_radius"] = plot_cost_vs_radius(points, figures_dir)
    return drawn


def compare_runs(run_dirs: Sequence[Path], out: Path, *, eps: Sequence[float] | None = None,
                 eps_ref: float | None = None, seed: int = 0, allow_mixed: bool = False) -> Report:
    """Read sweep run directories, compute the summary, draw the figures and write the report into ``out``.

    ``eps_ref``: the eps of the headline accuracies (default: the training eps of the model cards).
    ``eps``: accuracy grid (default: 0, eps_ref / 4, eps_ref / 2, eps_ref, 2 eps_ref).
    Raises RobverifyError for runs that are not finished sweeps, or that cannot be compared (their search settings
    differ, unless ``allow_mixed``).
    """
    runs = load_study_runs([Path(p) for p in run_dirs], allow_mixed=allow_mixed)
    table = study_table(runs)
    frame = runs_frame(runs)
    if eps_ref is not None and not (math.isfinite(eps_ref) and eps_ref >= 0):
        raise RobverifyError(f"--eps-ref must be a finite number >= 0, got {eps_ref}")
    eps_ref = reference_eps(table, frame) if eps_ref is None else float(eps_ref)
    grid = list(eps) if eps else [0.0, eps_ref / 4, eps_ref / 2, eps_ref, 2 * eps_ref]
    if any(not math.isfinite(e) or e < 0 for e in grid):
        raise RobverifyError(f"--eps must be finite numbers >= 0, got {list(grid)}")
    built = build_summary(table, frame, eps_ref=eps_ref, eps_grid=grid, seed=seed)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RobverifyError(f"cannot write to {out}: {exc.strerror or exc}") from None
    atomic_write_text(out / SUMMARY_CSV, built.to_csv(index=False))
    summary = read_summary(out / SUMMARY_CSV)  # the report is written from what the file holds
    figures = draw_figures(table, summary, out / FIGURES)
    blocks = report_blocks(summary)
    atomic_write_text(out / REPORT_MD, render_markdown(blocks))
    atomic_write_text(out / REPORT_HTML, render_html(blocks, out / FIGURES))
    return Report(out, summary, headline_table(summary), figures)

