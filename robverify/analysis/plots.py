"""Figures of robustness distributions and certified accuracy (PNG at 150 dpi + SVG).

Nothing global is changed: figures are ``matplotlib.figure.Figure`` objects with their own Agg canvas (no pyplot
state, no backend switch), and styles apply only inside ``with`` blocks. Every function returns the data it drew,
read back from the matplotlib line objects, so tests check what is on the figure rather than what was meant to be.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from robverify.analysis.distribution import CURVE_COLUMNS, robustness_distribution, series_labels
from robverify.errors import RobverifyError

__all__ = ["EPS_LABEL", "plot_certified_accuracy", "plot_ecdf"]

EPS_LABEL = "epsilon (L-inf, pixel scale [0,1])"
PLOT_STYLE = {"svg.hashsalt": "robverify", "svg.fonttype": "none", "font.size": 10}


@contextlib.contextmanager
def figure_style() -> Iterator[None]:
    """robverify's plot style, on matplotlib's defaults whatever another library set globally (ada_verona calls
    ``sns.set_theme`` at import); everything is restored on exit."""
    with matplotlib.rc_context():
        matplotlib.rcdefaults()  # keeps the backend
        with sns.axes_style("whitegrid"), matplotlib.rc_context(PLOT_STYLE):
            yield


@contextlib.contextmanager
def _figure() -> Iterator[tuple[Figure, object]]:
    """A fresh figure and axes under a local style (restored on exit)."""
    with figure_style():
        fig = Figure(figsize=(6.4, 4.4), layout="constrained")
        FigureCanvasAgg(fig)
        yield fig, fig.add_subplot()


def save_figure(fig: Figure, out_dir: Path, name: str) -> None:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(out_dir / f"{name}.png", dpi=150, metadata={"Software": None})
        fig.savefig(out_dir / f"{name}.svg", metadata={"Date": None})
    except OSError as exc:
        raise RobverifyError(f"cannot write figures to {out_dir}: {exc.strerror or exc}") from None


def _drawn(lo: Line2D, hi: Line2D) -> dict[str, np.ndarray]:
    return {
        "lo_x": np.asarray(lo.get_xdata(), dtype=float),
        "lo_y": np.asarray(lo.get_ydata(), dtype=float),
        "hi_x": np.asarray(hi.get_xdata(), dtype=float),
        "hi_y": np.asarray(hi.get_ydata(), dtype=float),
    }


def _right_limit(values: list[np.ndarray]) -> float:
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.zeros(0)
    top = float(finite.max()) if finite.size else 0.0
    return top * 1.05 if top > 0 else 1.0


def plot_ecdf(df: pd.DataFrame, out_dir: Path, name: str = "ecdf") -> dict[str, dict[str, np.ndarray]]:
    """The robustness-distribution plot ("anneplot") of a sweep table: ``out_dir/<name>.png`` and ``.svg``.

    Per model (series), over its OWN correctly classified samples only: a solid step line, the ECDF of ``eps_lo``
    (certified lower bracket), and a dashed one of the same colour, the ECDF of ``eps_hi`` (smallest falsified
    eps). With n correct samples the k-th point of a line is (k-th smallest value, k/n); samples never falsified
    (eps_hi = inf) are not drawn, so the dashed line ends below 1. The true ECDF lies between the two lines.

    Returns ``{series: {"lo_x", "lo_y", "hi_x", "hi_y"}}`` read back from the drawn lines.
    """
    dist = robustness_distribution(df)
    palette = sns.color_palette("colorblind", max(len(dist), 1))
    drawn: dict[str, dict[str, np.ndarray]] = {}
    with _figure() as (fig, ax):
        for (label, (lo, hi)), color in zip(dist.items(), palette):
            n = len(lo)
            hi_finite = hi[np.isfinite(hi)]
            (lo_line,) = ax.plot(
                lo, np.arange(1, n + 1) / max(n, 1), drawstyle="steps-post", color=color, linestyle="-",
                label=f"{label}: certified eps_lo (n={n})",
            )
            (hi_line,) = ax.plot(
                hi_finite, np.arange(1, hi_finite.size + 1) / max(n, 1), drawstyle="steps-post", color=color,
                linestyle="--", label=f"{label}: falsified eps_hi ({hi_finite.size}/{n})",
            )
            drawn[label] = _drawn(lo_line, hi_line)
        ax.set_xlim(0.0, _right_limit([d for lo, hi in dist.values() for d in (lo, hi)]))
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(EPS_LABEL)
        ax.set_ylabel("fraction of correctly classified samples")
        ax.set_title("Robustness distribution: ECDF of per-sample brackets\n"
                     "solid = certified lower bound, dashed = falsified upper bound")
        if dist:
            ax.legend(loc="lower right", fontsize="small")
        save_figure(fig, out_dir, name)
    return drawn


def plot_certified_accuracy(
    curve_df: pd.DataFrame, out_dir: Path, name: str = "certified_accuracy"
) -> dict[str, dict[str, np.ndarray]]:
    """Certified accuracy vs eps per model from :func:`certified_accuracy_curve`: ``out_dir/<name>.png`` / ``.svg``.

    Per series: solid = ``certified_acc`` (lower bound on robust accuracy), dashed, same colour =
    ``1 - falsified_frac`` (upper bound from falsification); the shaded band between them is unknown.

    Returns ``{series: {"lo_x", "lo_y", "hi_x", "hi_y"}}`` (lo = certified, hi = upper envelope), read back from the
    drawn lines.
    """
    missing = [c for c in CURVE_COLUMNS if c not in curve_df.columns]
    if missing:
        raise RobverifyError(f"certified-accuracy plot: the curve table lacks column(s) {', '.join(missing)}")
    labels = series_labels(curve_df)
    names = sorted(set(labels.tolist()))
    palette = sns.color_palette("colorblind", max(len(names), 1))
    drawn: dict[str, dict[str, np.ndarray]] = {}
    with _figure() as (fig, ax):
        for label, color in zip(names, palette):
            part = curve_df[labels.to_numpy() == label].sort_values("eps", kind="stable")
            eps = part["eps"].to_numpy(dtype=float)
            cert = part["certified_acc"].to_numpy(dtype=float)
            upper = 1.0 - part["falsified_frac"].to_numpy(dtype=float)
            marker = "o" if eps.size <= 20 else None
            (lo_line,) = ax.plot(eps, cert, color=color, linestyle="-", marker=marker, markersize=3,
                                 label=f"{label}: certified")
            (hi_line,) = ax.plot(eps, upper, color=color, linestyle="--", label=f"{label}: not falsified (upper)")
            ax.fill_between(eps, cert, upper, color=color, alpha=0.12, linewidth=0)
            drawn[label] = _drawn(lo_line, hi_line)
        ax.set_xlim(0.0, _right_limit([curve_df["eps"].to_numpy(dtype=float)]))
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(EPS_LABEL)
        ax.set_ylabel("fraction of all samples (misclassified = not robust)")
        ax.set_title("Certified accuracy (solid) and falsification upper bound (dashed)")
        if names:
            ax.legend(loc="upper right", fontsize="small")
        save_figure(fig, out_dir, name)
    return drawn


def draw_run_figures(table: pd.DataFrame, figures_dir: Path) -> list[str]:
    """The standard figures of one run's tidy table into ``figures_dir``: the robustness-distribution ECDF (sweep
    tables) and certified accuracy vs eps (sweep and certify tables). Returns their paths relative to the run
    directory (``figures/NAME.png`` / ``.svg``)."""
    from robverify.analysis.distribution import certified_accuracy_curve
    from robverify.runs.schema import CERTIFY_COLUMNS, FIGURES_DIR, SWEEP_COLUMNS

    names: list[str] = []
    if set(SWEEP_COLUMNS) <= set(table.columns):
        plot_ecdf(table, figures_dir)
        names.append("ecdf")
    if set(SWEEP_COLUMNS) <= set(table.columns) or set(CERTIFY_COLUMNS) <= set(table.columns):
        plot_certified_accuracy(certified_accuracy_curve(table), figures_dir)
        names.append("certified_accuracy")
    return [f"{FIGURES_DIR}/{n}.{ext}" for n in names for ext in ("png", "svg")]

