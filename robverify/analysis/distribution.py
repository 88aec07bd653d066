"""Robustness distributions and certified-accuracy curves from tidy result tables.

A sweep table holds one bracket per sample: ``eps_lo`` (largest eps verified) and ``eps_hi`` (smallest eps
falsified, inf if none); the sample's true critical epsilon lies in ``[eps_lo, eps_hi]``. Conventions here:

- A row is *correctly classified* unless its ``status`` (or ``verdict``) is ``"misclassified"`` or its known
  ``pred`` differs from its known ``label``. Misclassified rows are never certified and never robust: they count
  in every denominator over *all* samples and are falsified at every eps.
- A missing bound is the trivial one: NaN ``eps_lo`` reads as 0 (nothing certified), NaN ``eps_hi`` as inf
  (nothing falsified).
- Series are per (model, backend, method). They are labelled by the model name alone when every model appears
  with one backend/method only, else ``"model (backend/method)"`` (see :func:`series_labels`). Nothing is ever
  pooled across series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from robverify.errors import RobverifyError

__all__ = [
    "CURVE_COLUMNS",
    "GROUP_COLUMNS",
    "certified_accuracy_curve",
    "correctly_classified",
    "robustness_distribution",
    "series_labels",
    "summary_statistics",
]

GROUP_COLUMNS: list[str] = ["model", "backend", "method"]
CURVE_COLUMNS: list[str] = GROUP_COLUMNS + ["eps", "certified_acc", "falsified_frac", "unknown_frac", "n"]
_DEFAULT_POINTS = 101


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise RobverifyError(f"{what}: the table lacks column(s) {', '.join(missing)}")


def correctly_classified(df: pd.DataFrame) -> pd.Series:
    """Boolean mask of correctly classified rows (see the module docstring)."""
    correct = pd.Series(True, index=df.index)
    for col in ("status", "verdict"):
        if col in df.columns:
            correct &= df[col].astype(str).ne("misclassified").to_numpy()
    if "pred" in df.columns and "label" in df.columns:
        pred = pd.to_numeric(df["pred"], errors="coerce")
        label = pd.to_numeric(df["label"], errors="coerce")
        correct &= ~(pred.notna() & label.notna() & pred.ne(label)).to_numpy()
    return correct


def series_labels(df: pd.DataFrame) -> pd.Series:
    """Per row, the name of its series: the model, or ``"model (backend/method)"`` where a model has several."""
    _require(df, ["model"], "series labels")
    model = df["model"].astype(str)
    if not {"backend", "method"} <= set(df.columns):
        return model
    backend, method = df["backend"].astype(str), df["method"].astype(str)
    pairs = pd.DataFrame({"model": model, "backend": backend, "method": method}).drop_duplicates()
    if pairs["model"].duplicated().any():
        return model + " (" + backend + "/" + method + ")"
    return model


def _brackets(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """eps_lo, eps_hi as float arrays with the trivial bound for missing values."""
    lo = pd.to_numeric(df["eps_lo"], errors="raise").astype(float).to_numpy(copy=True)
    hi = pd.to_numeric(df["eps_hi"], errors="raise").astype(float).to_numpy(copy=True)
    lo[np.isnan(lo)] = 0.0
    hi[np.isnan(hi)] = np.inf
    return lo, hi


def _check_brackets(df: pd.DataFrame, lo: np.ndarray, hi: np.ndarray, correct: np.ndarray) -> None:
    bad = correct & (lo >= hi)
    if bad.any():
        row = df[bad].iloc[0]
        raise RobverifyError(
            f"{int(bad.sum())} correctly classified row(s) have eps_lo >= eps_hi (verified and falsified at once), "
            f"e.g. model {row['model']!r} sample {row.get('sample_id', '?')}: [{row['eps_lo']}, {row['eps_hi']}]"
        )


def _eps_grid(eps: Sequence[float] | None, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    if eps is not None:
        grid = np.asarray(list(eps), dtype=float).ravel()
        if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
            raise RobverifyError(f"eps grid: expected finite values >= 0, got {list(eps)}")
        return np.unique(grid)
    values = np.concatenate([lo, hi])
    values = values[np.isfinite(values)]
    top = float(values.max()) if values.size else 0.0
    return np.linspace(0.0, top, _DEFAULT_POINTS) if top > 0 else np.zeros(1)


def certified_accuracy_curve(df: pd.DataFrame, eps: Sequence[float] | None = None) -> pd.DataFrame:
    """Certified accuracy, falsified and unknown fractions per (model, backend, method) and eps.

    For a sweep table (``eps_lo``/``eps_hi``), at each ``eps`` and over ALL rows of the series:
    ``certified_acc`` = fraction correctly classified with ``eps_lo >= eps``; ``falsified_frac`` = fraction
    misclassified or with ``eps_hi <= eps``; ``unknown_frac`` = the rest. ``eps`` defaults to 101 points from 0 to
    the largest finite eps_lo / eps_hi of the table. Robust accuracy at eps lies in
    ``[certified_acc, 1 - falsified_frac]``.

    A certify table (``eps``/``verdict``) is read at its own eps values (``eps``, if given, must be among them):
    certified = verdict "verified", falsified = "falsified" or "misclassified".

    Returns columns :data:`CURVE_COLUMNS`, sorted by series and eps.
    """
    if {"eps_lo", "eps_hi"} <= set(df.columns):
        return _curve_from_sweep(df, eps)
    if {"eps", "verdict"} <= set(df.columns):
        return _curve_from_certify(df, eps)
    raise RobverifyError(
        "certified accuracy: expected a sweep table (eps_lo, eps_hi) or a certify table (eps, verdict)"
    )


def _curve_from_sweep(df: pd.DataFrame, eps: Sequence[float] | None) -> pd.DataFrame:
    _require(df, GROUP_COLUMNS + ["eps_lo", "eps_hi"], "certified accuracy")
    lo, hi = _brackets(df)
    correct = correctly_classified(df).to_numpy()
    _check_brackets(df, lo, hi, correct)
    grid = _eps_grid(eps, lo, hi)
    frames = []
    for (model, backend, method), idx in df.groupby(GROUP_COLUMNS, sort=True, dropna=False).indices.items():
        c, glo, ghi = correct[idx], lo[idx], hi[idx]
        n = len(idx)
        certified = (c[None, :] & (glo[None, :] >= grid[:, None])).sum(axis=1)
        falsified = (~c[None, :] | (ghi[None, :] <= grid[:, None])).sum(axis=1)
        frames.append(_curve_frame(model, backend, method, grid, certified, falsified, np.full(grid.size, n)))
    return _concat_curves(frames)


def _curve_from_certify(df: pd.DataFrame, eps: Sequence[float] | None) -> pd.DataFrame:
    _require(df, GROUP_COLUMNS + ["eps", "verdict"], "certified accuracy")
    table_eps = np.unique(pd.to_numeric(df["eps"], errors="raise").astype(float).to_numpy())
    if eps is not None:
        wanted = np.asarray(list(eps), dtype=float).ravel()
        absent = [e for e in wanted if not np.isclose(table_eps, e, rtol=1e-9, atol=0.0).any()]
        if absent:
            raise RobverifyError(
                f"certified accuracy: eps {absent} not in the certify table (it has {table_eps.tolist()})"
            )
    verdict = df["verdict"].astype(str)
    correct = correctly_classified(df).to_numpy()
    verified = (verdict.eq("verified").to_numpy()) & correct
    falsified = verdict.isin(["falsified", "misclassified"]).to_numpy() | ~correct
    frames = []
    for (model, backend, method), idx in df.groupby(GROUP_COLUMNS, sort=True, dropna=False).indices.items():
        geps = df["eps"].to_numpy(dtype=float)[idx]
        grid = np.unique(geps)
        if eps is not None:
            grid = grid[[np.isclose(wanted, e, rtol=1e-9, atol=0.0).any() for e in grid]]
        cert, fals, count = [], [], []
        for e in grid:
            at = idx[geps == e]
            cert.append(int(verified[at].sum()))
            fals.append(int(falsified[at].sum()))
            count.append(len(at))
        frames.append(_curve_frame(model, backend, method, grid, np.array(cert), np.array(fals), np.array(count)))
    return _concat_curves(frames)


def _curve_frame(model, backend, method, grid, certified, falsified, n) -> pd.DataFrame:  # noqa: ANN001
    """One series' curve from integer counts (certified, falsified, total) per eps: exact fractions."""
    n = np.asarray(n, dtype=int)
    unknown = n - certified - falsified
    return pd.DataFrame(
        {
            "model": model,
            "backend": backend,
            "method": method,
            "eps": grid.astype(float),
            "certified_acc": certified / n,
            "falsified_frac": falsified / n,
            "unknown_frac": unknown / n,
            "n": n,
        },
        columns=CURVE_COLUMNS,
    )


def _concat_curves(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def robustness_distribution(df: pd.DataFrame) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per series (usually: per model), the sorted ``eps_lo`` and sorted ``eps_hi`` of its correctly classified
    samples: the data of the two ECDFs that bracket its robustness distribution. ``eps_hi`` keeps its ``inf``
    values (at the end). Series are labelled as :func:`series_labels` says; each holds only its own rows.
    """
    _require(df, ["model", "eps_lo", "eps_hi"], "robustness distribution")
    lo, hi = _brackets(df)
    correct = correctly_classified(df).to_numpy()
    _check_brackets(df, lo, hi, correct)
    labels = series_labels(df).to_numpy()
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for label in sorted(set(labels.tolist())):
        rows = (labels == label) & correct
        out[label] = (np.sort(lo[rows]), np.sort(hi[rows]))
    return out


def summary_statistics(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, backend, method) of a sweep table.

    Columns: ``n`` (rows), ``n_correct``, ``clean_acc`` (= n_correct / n), ``median_eps_lo`` and ``mean_eps_lo``
    (over correctly classified samples), ``n_falsified`` (correct samples with finite eps_hi), ``median_eps_hi``
    (over those finite values only; NaN if none), ``mean_gap`` (mean eps_hi - eps_lo over those samples).
    """
    _require(df, GROUP_COLUMNS + ["eps_lo", "eps_hi"], "summary statistics")
    lo, hi = _brackets(df)
    correct = correctly_classified(df).to_numpy()
    _check_brackets(df, lo, hi, correct)
    rows = []
    for (model, backend, method), idx in df.groupby(GROUP_COLUMNS, sort=True, dropna=False).indices.items():
        c = correct[idx]
        glo, ghi = lo[idx][c], hi[idx][c]
        finite = np.isfinite(ghi)
        rows.append(
            {
                "model": model,
                "backend": backend,
                "method": method,
                "n": len(idx),
                "n_correct": int(c.sum()),
                "clean_acc": float(c.mean()) if len(idx) else np.nan,
                "median_eps_lo": float(np.median(glo)) if glo.size else np.nan,
                "mean_eps_lo": float(np.mean(glo)) if glo.size else np.nan,
                "n_falsified": int(finite.sum()),
                "median_eps_hi": float(np.median(ghi[finite])) if finite.any() else np.nan,
                "mean_gap": float(np.mean(ghi[finite] - glo[finite])) if finite.any() else np.nan,
            }
        )
    columns = GROUP_COLUMNS + [
        "n", "n_correct", "clean_acc", "median_eps_lo", "mean_eps_lo", "n_falsified", "median_eps_hi", "mean_gap",
    ]
    return pd.DataFrame(rows, columns=columns)
