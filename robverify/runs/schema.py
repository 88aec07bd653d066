"""The tidy results table: its column names, the verdict and sweep-status vocabularies, the files of a run
directory, and the check that a table has this shape.

Tidy means one row per (model, backend, method, sample[, eps]) with run-level columns repeated, so that
``pd.concat`` of many runs is already the comparison table (:func:`load_results`). Numbers are stored as
numbers; ``eps_hi`` is ``inf`` where nothing was falsified (kept as inf in parquet, written ``inf`` in CSV).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from robverify.errors import RobverifyError

__all__ = [
    "CERTIFY_COLUMNS",
    "CERTIFY_DECISION_COLUMNS",
    "COMMON_COLUMNS",
    "SWEEP_COLUMNS",
    "SWEEP_DECISION_COLUMNS",
    "VERDICTS",
    "SweepStatus",
    "load_results",
    "validate_table",
]

# ---------------------------------------------------------------------------------------------------------------
# Column names of the tidy table (DESIGN.md, "Results"). Other tools and the checks rely on them.

COMMON_COLUMNS: list[str] = ["run_id", "model", "backend", "method", "task", "sample_id", "label", "pred", "time_s"]
CERTIFY_COLUMNS: list[str] = COMMON_COLUMNS + ["eps", "verdict", "margin_lb"]
SWEEP_COLUMNS: list[str] = COMMON_COLUMNS + ["eps_lo", "eps_hi", "status", "n_calls"]
#: Written by robverify's bracket search after :data:`SWEEP_COLUMNS` and ``n_attacks`` (absent from imported VERONA
#: runs): how each end of the bracket was decided (``bound``, ``attack``, ``bab`` or ``none``; see
#: :data:`robverify.runs.search.DECIDED_BY`) and the effort of branch and bound (domains bounded, seconds).
SWEEP_DECISION_COLUMNS: list[str] = ["lo_by", "hi_by", "domains", "bab_s"]
#: Written by ``certify`` after :data:`CERTIFY_COLUMNS`: how each verdict was decided (``bound``: the sound bound;
#: ``attack``: a re-checked counterexample of the attack; ``bab``: robverify's branch and bound, a proof or a re-checked
#: counterexample; ``complete``: a complete verifier behind the backend (Marabou, external, VERONA); ``none``: open or
#: misclassified) and the effort of branch and bound (domains bounded, seconds).
CERTIFY_DECISION_COLUMNS: list[str] = ["decided_by", "domains", "bab_s"]

#: The verdict vocabulary (DESIGN.md); mirrors :class:`robverify.spec.Verdict`.
VERDICTS: frozenset[str] = frozenset({"verified", "falsified", "unknown", "misclassified", "timeout", "error"})

_TABLE_COLUMNS = {"certify": CERTIFY_COLUMNS, "sweep": SWEEP_COLUMNS}
_NUMERIC_COLUMNS = {
    "certify": ["sample_id", "label", "pred", "time_s", "eps", "margin_lb"],
    "sweep": ["sample_id", "label", "pred", "time_s", "eps_lo", "eps_hi", "n_calls"],
}



class SweepStatus(str, enum.Enum):
    """How a sample's bracket ended (the ``status`` column of a sweep table)."""

    EXACT = "exact"                  # eps_hi - eps_lo within the tolerance (or adjacent grid points)
    GAP = "gap"                      # the search stopped with an open bracket (bounds too loose)
    ROBUST = "robust"                # verified at the largest eps searched
    UNVERIFIED = "unverified"        # not verified even at eps = 0
    MISCLASSIFIED = "misclassified"  # the clean input is already wrong
    GRID = "grid"                    # read from VERONA's result_df.csv (grid bracket)
    UPPER_BOUND = "upper-bound"      # VERONA's attack module: eps_lo is no certificate

    def __str__(self) -> str:
        return self.value


RUN_JSON = "run.json"
RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
CHUNKS_DIR = "chunks"
FIGURES_DIR = "figures"


def validate_table(df: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Check that ``df`` is a tidy ``"certify"`` or ``"sweep"`` table; returns it unchanged.

    Raises RobverifyError when a column is missing, a number is stored as text (or as Python objects), a verdict is
    outside the vocabulary, or a sweep bracket has ``eps_lo > eps_hi``.
    """
    if kind not in _TABLE_COLUMNS:
        raise RobverifyError(f"table kind: expected one of {', '.join(_TABLE_COLUMNS)}, got {kind!r}")
    missing = [c for c in _TABLE_COLUMNS[kind] if c not in df.columns]
    if missing:
        raise RobverifyError(f"{kind} table: missing column(s) {', '.join(missing)}")
    not_numeric = [
        f"{c} ({df[c].dtype})"
        for c in _NUMERIC_COLUMNS[kind]
        if not pd.api.types.is_numeric_dtype(df[c]) or pd.api.types.is_bool_dtype(df[c])
    ]
    if not_numeric:
        raise RobverifyError(f"{kind} table: numbers must be stored as numbers, got {', '.join(not_numeric)}")
    if kind == "certify":
        bad = sorted(set(df["verdict"].dropna().astype(str)) - VERDICTS)
        if bad:
            raise RobverifyError(f"certify table: expected verdicts among {', '.join(sorted(VERDICTS))}, got {bad}")
    else:
        inverted = df["eps_lo"] > df["eps_hi"]
        if inverted.any():
            row = df[inverted].iloc[0]
            raise RobverifyError(
                f"sweep table: eps_lo > eps_hi in {int(inverted.sum())} row(s), e.g. model {row['model']!r} "
                f"sample {row['sample_id']} [{row['eps_lo']}, {row['eps_hi']}]"
            )
    return df


def load_results(run_dirs: Sequence[Path]) -> pd.DataFrame:
    """``pd.concat`` of the runs' ``results.parquet``: the comparison table of many runs."""
    if not run_dirs:
        raise RobverifyError("load_results: no run directories given")
    frames = []
    for run_dir in run_dirs:
        parquet = Path(run_dir) / RESULTS_PARQUET
        if not parquet.is_file():
            raise RobverifyError(f"{run_dir} has no {RESULTS_PARQUET} (not a finished run directory)")
        frames.append(pd.read_parquet(parquet))
    return pd.concat(frames, ignore_index=True)
