"""Figures of the strategies report: certified radius per strategy, radius vs task similarity, the
clean-vs-certified Pareto front, training cost, and training cost vs certified radius (PNG + SVG, local style
only, as in :mod:`plots`).

Every function returns the data read back from the drawn artists (box medians, scatter offsets, fitted lines,
bar heights), so tests check what is on the figure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from robverify.analysis.distribution import correctly_classified
from robverify.analysis.plots import EPS_LABEL, figure_style, save_figure

__all__ = ["pareto_front", "plot_cost_vs_radius", "plot_pareto", "plot_radius_by_strategy",
           "plot_radius_vs_similarity", "plot_training_cost"]


@contextlib.contextmanager
def _figure(ncols: int = 1, width: float = 6.4, height: float = 4.4) -> Iterator[tuple[Figure, list]]:
    with figure_style():
        fig = Figure(figsize=(width, height), layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(1, ncols, squeeze=False)[0]
        yield fig, list(axes)


def _palette(names: Sequence[str]) -> dict[str, tuple]:
    return dict(zip(names, sns.color_palette("colorblind", max(len(names), 1))))


def plot_radius_by_strategy(table: pd.DataFrame, out_dir: Path, name: str = "radius_by_strategy"
                            ) -> dict[str, dict[str, np.ndarray | float]]:
    """Box plot of the certified radius ``eps_lo`` of correctly classified samples, one box per (task, strategy),
    grouped by task and coloured by strategy. ``table``: a sweep table with ``strategy`` and ``task`` columns.

    Returns ``{"<strategy> | <task>": {"values": sorted eps_lo, "median": the drawn median line's height}}``.
    """
    rows = table[correctly_classified(table).to_numpy()]
    tasks = sorted(table["task"].astype(str).unique())
    strategies = sorted(table["strategy"].astype(str).unique())
    colours = _palette(strategies)
    drawn: dict[str, dict[str, np.ndarray | float]] = {}
    with _figure(width=max(6.4, 1.2 + 0.45 * len(tasks) * len(strategies))) as (fig, (ax,)):
        step = len(strategies) + 1
        for t, task in enumerate(tasks):
            for s, strategy in enumerate(strategies):
                part = rows[(rows["task"] == task) & (rows["strategy"] == strategy)]
                values = np.sort(part["eps_lo"].to_numpy(dtype=float))
                if values.size == 0:
                    continue
                box = ax.boxplot([values], positions=[t * step + s], widths=0.7, patch_artist=True,
                                 showfliers=True, medianprops={"color": "black"})
                box["boxes"][0].set_facecolor(colours[strategy])
                drawn[f"{strategy} | {task}"] = {"values": values,
                                                 "median": float(box["medians"][0].get_ydata()[0])}
        ax.set_xticks([t * step + (len(strategies) - 1) / 2 for t in range(len(tasks))], tasks, rotation=15)
        ax.set_xlim(-1, len(tasks) * step - 1)
        ax.set_ylabel("certified radius eps_lo (" + EPS_LABEL.split("(")[1])
        ax.set_title("Certified radius of correctly classified samples per strategy")
        handles = [matplotlib.patches.Patch(color=colours[s], label=s) for s in strategies]
        ax.legend(handles=handles, loc="upper right", fontsize="small")
        save_figure(fig, out_dir, name)
    return drawn


def plot_radius_vs_similarity(points: pd.DataFrame, measures: Sequence[str], out_dir: Path,
                              name: str = "radius_vs_similarity") -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Median certified radius vs each similarity measure, one panel per measure, one colour per strategy with its
    least-squares line (where the strategy has two distinct x values).

    ``points``: one row per (strategy, task) with ``median_eps_lo`` and a column per measure.
    Returns ``{measure: {strategy: {"x", "y", "fit_x", "fit_y"}}}`` read back from the drawn artists.
    """
    strategies = sorted(points["strategy"].astype(str).unique())
    colours = _palette(strategies)
    drawn: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    measures = list(measures)
    with _figure(ncols=max(len(measures), 1), width=3.2 * max(len(measures), 1) + 1, height=3.6) as (fig, axes):
        for ax, measure in zip(axes, measures):
            drawn[measure] = {}
            for strategy in strategies:
                part = points[points["strategy"] == strategy].dropna(subset=[measure, "median_eps_lo"])
                x = part[measure].to_numpy(dtype=float)
                y = part["median_eps_lo"].to_numpy(dtype=float)
                if x.size == 0:
                    continue
                dots = ax.scatter(x, y, color=colours[strategy], label=strategy, s=22)
                offsets = np.asarray(dots.get_offsets(), dtype=float)
                entry = {"x": offsets[:, 0], "y": offsets[:, 1], "fit_x": np.zeros(0), "fit_y": np.zeros(0)}
                if np.unique(x).size >= 2:
                    slope, intercept = np.polyfit(x, y, 1)
                    grid = np.array([x.min(), x.max()])
                    (line,) = ax.plot(grid, slope * grid + intercept, color=colours[strategy], linewidth=1)
                    entry["fit_x"] = np.asarray(line.get_xdata(), dtype=float)
                    entry["fit_y"] = np.asarray(line.get_ydata(), dtype=float)
                drawn[measure][strategy] = entry
            ax.set_xlabel(measure)
            ax.set_ylabel("median certified radius")
        if measures:
            axes[-1].legend(loc="best", fontsize="x-small")
        fig.suptitle("Median certified radius vs task similarity (lines: least-squares per strategy)")
        save_figure(fig, out_dir, name)
    return drawn


def pareto_front(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mask [N] of the points not dominated when maximising both x [N] and y [N] (a point is dominated if another
    is >= in both and > in one)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    geq = (x[None, :] >= x[:, None]) & (y[None, :] >= y[:, None])
    gt = (x[None, :] > x[:, None]) | (y[None, :] > y[:, None])
    return ~np.any(geq & gt, axis=1)


def plot_pareto(points: pd.DataFrame, eps: float, out_dir: Path, name: str = "pareto"
                ) -> dict[str, dict[str, np.ndarray]]:
    """Clean vs certified accuracy at ``eps`` per (strategy, task), one panel per task, with the Pareto front.

    ``points``: one row per (strategy, task) with ``clean_acc`` and ``certified_acc``.
    Returns ``{task: {"x", "y" (all points as drawn), "front_x", "front_y" (the front line), "labels"}}``.
    """
    tasks = sorted(points["task"].astype(str).unique())
    strategies = sorted(points["strategy"].astype(str).unique())
    colours = _palette(strategies)
    drawn: dict[str, dict[str, np.ndarray]] = {}
    with _figure(ncols=max(len(tasks), 1), width=3.4 * max(len(tasks), 1) + 1, height=3.8) as (fig, axes):
        for ax, task in zip(axes, tasks):
            part = points[points["task"] == task].sort_values("strategy")
            x = part["clean_acc"].to_numpy(dtype=float)
            y = part["certified_acc"].to_numpy(dtype=float)
            labels = part["strategy"].astype(str).to_numpy()
            dots = ax.scatter(x, y, c=[colours[s] for s in labels], s=30, zorder=3)
            for xi, yi, label in zip(x, y, labels):
                ax.annotate(label, (xi, yi), fontsize="x-small", xytext=(3, 3), textcoords="offset points")
            front = pareto_front(x, y)
            order = np.argsort(x[front])
            (line,) = ax.plot(x[front][order], y[front][order], color="grey", linestyle="--", zorder=2)
            offsets = np.asarray(dots.get_offsets(), dtype=float)
            drawn[task] = {"x": offsets[:, 0], "y": offsets[:, 1], "labels": labels,
                           "front_x": np.asarray(line.get_xdata(), dtype=float),
                           "front_y": np.asarray(line.get_ydata(), dtype=float)}
            ax.set_title(task, fontsize="small")
            ax.set_xlabel("clean accuracy")
            ax.set_ylabel(f"certified accuracy at eps {eps:.3g}")
        fig.suptitle("Clean vs certified accuracy (dashed: Pareto front)")
        save_figure(fig, out_dir, name)
    return drawn


def plot_training_cost(points: pd.DataFrame, out_dir: Path, name: str = "training_cost") -> dict[str, float]:
    """Training time (seconds, from the model cards) per (strategy, task) as grouped bars.

    ``points``: one row per (strategy, task) with ``train_time_s``. Returns ``{"<strategy> | <task>": height}``.
    """
    points = points.dropna(subset=["train_time_s"])
    tasks = sorted(points["task"].astype(str).unique())
    strategies = sorted(points["strategy"].astype(str).unique())
    colours = _palette(strategies)
    width = 0.8 / max(len(strategies), 1)
    drawn: dict[str, float] = {}
    with _figure(width=max(6.4, 1.5 + 0.4 * len(tasks) * len(strategies))) as (fig, (ax,)):
        for s, strategy in enumerate(strategies):
            part = points[points["strategy"] == strategy].set_index("task")
            present = [t for t in tasks if t in part.index]
            heights = [float(part.loc[t, "train_time_s"]) for t in present]
            bars = ax.bar([tasks.index(t) + s * width for t in present], heights, width=width,
                          color=colours[strategy], label=strategy)
            for task, bar in zip(present, bars.patches):
                drawn[f"{strategy} | {task}"] = float(bar.get_height())
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(tasks))], tasks, rotation=15)
        ax.set_ylabel("training time (s)")
        ax.set_title("Training cost per strategy and target task")
        if strategies:
            ax.legend(loc="upper right", fontsize="small")
        save_figure(fig, out_dir, name)
    return drawn


def plot_cost_vs_radius(points: pd.DataFrame, out_dir: Path, name: str = "cost_vs_radius"
                        ) -> dict[str, dict[str, np.ndarray]]:
    """Training time (log x) vs median certified radius, one point per (strategy, task), one colour per strategy.

    ``points``: one row per (strategy, task) with ``train_time_s`` and ``eps_lo_q50``.
    Returns ``{strategy: {"x", "y" (as drawn), "tasks"}}``.
    """
    points = points.dropna(subset=["train_time_s", "eps_lo_q50"])
    strategies = sorted(points["strategy"].astype(str).unique())
    colours = _palette(strategies)
    drawn: dict[str, dict[str, np.ndarray]] = {}
    with _figure() as (fig, (ax,)):
        for strategy in strategies:
            part = points[points["strategy"] == strategy].sort_values("task")
            dots = ax.scatter(part["train_time_s"].to_numpy(dtype=float), part["eps_lo_q50"].to_numpy(dtype=float),
                              color=colours[strategy], label=strategy, s=30)
            offsets = np.asarray(dots.get_offsets(), dtype=float)
            drawn[strategy] = {"x": offsets[:, 0], "y": offsets[:, 1], "tasks": part["task"].astype(str).to_numpy()}
        if len(points) and (points["train_time_s"] > 0).all():
            ax.set_xscale("log")
        ax.set_xlabel("training time (s)")
        ax.set_ylabel("median certified radius eps_lo")
        ax.set_title("Training cost vs certified radius")
        if strategies:
            ax.legend(loc="best", fontsize="small")
        save_figure(fig, out_dir, name)
    return drawn
