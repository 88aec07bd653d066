"""VERONA's ``result_df.csv``: written beside every sweep, read back (ours or VERONA's own) as a sweep table, and
imported as a run directory so that ``compare`` reads VERONA's results like any sweep."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from robverify.errors import RobverifyError
from robverify.files import atomic_write, file_sha256
from robverify.runs.rundir import RunDir
from robverify.runs.schema import SWEEP_COLUMNS, SweepStatus, validate_table

__all__ = ["VERONA_COLUMNS", "import_verona_run", "read_verona_result_df", "write_verona_result_df"]

VERONA_COLUMNS: list[str] = [
    "network",
    "image_id",
    "original_label",
    "epsilon_value",
    "smallest_sat_value",
    "total_time",
    "verifier",
]


#: the part of VERONA's verifier name that marks its attack module (answers are upper estimates)
_VERONA_ATTACK = "AttackEstimationModule"


def write_verona_result_df(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Write a sweep table as a VERONA-compatible ``result_df.csv`` (atomically); returns what was written.

    Columns map as: network = model, image_id = sample_id, original_label = label, epsilon_value = eps_lo,
    smallest_sat_value = eps_hi, total_time = time_s, verifier = ``f"{backend}-{method}"``. As in VERONA's file the
    CSV starts with an unnamed index column, so VERONA's own ``pd.read_csv(path, index_col=0)`` reads it.

    Semantics kept from VERONA: ``epsilon_value`` is the largest epsilon not found SAT (here: the largest certified
    epsilon, a certificate) and ``smallest_sat_value`` the smallest epsilon found SAT (here: falsified and re-checked).
    Two deliberate differences: VERONA only lists correctly classified samples, so rows with status
    ``"misclassified"`` are left out; and where nothing was falsified ``smallest_sat_value`` is ``inf``, not the
    largest epsilon of the grid as VERONA writes.
    """
    validate_table(df, "sweep")
    rows = df[df["status"].astype(str) != SweepStatus.MISCLASSIFIED.value]
    out = pd.DataFrame(
        {
            "network": rows["model"].astype(str).to_numpy(),
            "image_id": rows["sample_id"].to_numpy(),
            "original_label": rows["label"].to_numpy(),
            "epsilon_value": rows["eps_lo"].astype(float).to_numpy(),
            "smallest_sat_value": rows["eps_hi"].astype(float).to_numpy(),
            "total_time": rows["time_s"].astype(float).to_numpy(),
            "verifier": (rows["backend"].astype(str) + "-" + rows["method"].astype(str)).to_numpy(),
        }
    )
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: out.to_csv(handle))
    except OSError as exc:
        raise RobverifyError(f"cannot write to {path}: {exc.strerror or exc}") from None
    return out


def read_verona_result_df(path: Path) -> pd.DataFrame:
    """Read a VERONA ``result_df.csv`` (ours or VERONA's own) into sweep-table columns.

    Returns columns :data:`SWEEP_COLUMNS` with model = network, sample_id = image_id, label = original_label,
    eps_lo = epsilon_value, eps_hi = smallest_sat_value, time_s = total_time, backend = ``"verona"``,
    method = verifier, status = ``"grid"``, n_calls = NaN; run_id, task and pred are unknown (NaN/None). VERONA's
    extra columns (``tmp_path``, property-generator fields) are dropped.

    Caution, VERONA's semantics: ``epsilon_value`` is the largest epsilon of the grid *not found SAT*. It is a
    certificate only when VERONA ran a sound, complete verifier; for VERONA's own runs with an attack
    (``AttackEstimationModule``), a failed attack counts as UNSAT and ``epsilon_value`` is an upper estimate, NOT
    a certificate: rows whose verifier names that module get ``eps_lo`` = 0 and status ``"upper-bound"``. Where VERONA found nothing SAT it writes the grid's largest epsilon as ``smallest_sat_value``
    (also after a TIMEOUT); a ``smallest_sat_value`` that is not above ``epsilon_value`` is therefore read as
    ``inf`` (nothing falsified). One ambiguity cannot be undone: a grid maximum written after timeouts looks like a
    SAT at the grid maximum.
    """
    path = Path(path)
    if not path.is_file():
        raise RobverifyError(f"{path}: no such VERONA result file")
    try:
        raw = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise RobverifyError(f"{path} is not a readable CSV ({exc})") from None
    missing = [c for c in VERONA_COLUMNS if c not in raw.columns]
    if missing:
        raise RobverifyError(f"{path}: not a VERONA result_df.csv, missing column(s) {', '.join(missing)}")
    numeric = ["image_id", "original_label", "epsilon_value", "smallest_sat_value", "total_time"]
    for col in numeric:
        if not pd.api.types.is_numeric_dtype(raw[col]):
            raise RobverifyError(f"{path}: column {col} holds non-numbers, e.g. {raw[col].iloc[0]!r}")
    eps_lo = raw["epsilon_value"].astype(float)
    eps_hi = raw["smallest_sat_value"].astype(float)
    eps_hi = eps_hi.where(eps_hi > eps_lo, math.inf)
    # VERONA's attack module answers UNSAT whenever its attack fails: nothing is certified beyond the clean sample.
    attack = raw["verifier"].astype(str).str.contains(_VERONA_ATTACK, regex=False)
    eps_lo = eps_lo.where(~attack, 0.0)
    n = len(raw)
    return pd.DataFrame(
        {
            "run_id": pd.Series([None] * n, dtype=object),
            "model": raw["network"].astype(str),
            "backend": "verona",
            "method": raw["verifier"].astype(str),
            "task": pd.Series([None] * n, dtype=object),
            "sample_id": raw["image_id"],
            "label": raw["original_label"],
            "pred": np.full(n, np.nan),
            "time_s": raw["total_time"].astype(float),
            "eps_lo": eps_lo,
            "eps_hi": eps_hi,
            "status": np.where(attack, SweepStatus.UPPER_BOUND.value, SweepStatus.GRID.value),
            "n_calls": np.full(n, np.nan),
        },
        columns=SWEEP_COLUMNS,
    )


def import_verona_run(result_df: Path, out: Path, *, model: str | None = None, task: str | None = None,
                      finish: Callable[[RunDir], pd.DataFrame] | None = None) -> pd.DataFrame:
    """Turn a VERONA ``result_df.csv`` into the run directory ``out``, recorded as a ``sweep-epsilon`` run with
    ``backend`` ``verona`` and ``imported_from`` the file, so that ``compare`` reads it like any sweep.

    The tidy table is :func:`read_verona_result_df`'s, with ``run_id`` set, ``model`` / ``task`` when given, and
    VERONA's own numbers kept beside it (``verona_epsilon_value``, ``verona_smallest_sat_value`` and, for one2one
    properties, ``target_class``). Importing the same file into the same directory again is a no-op resume.
    """
    result_df = Path(result_df)
    table = read_verona_result_df(result_df)
    raw = pd.read_csv(result_df)
    table["verona_epsilon_value"] = raw["epsilon_value"].astype(float).to_numpy()
    table["verona_smallest_sat_value"] = raw["smallest_sat_value"].astype(float).to_numpy()
    key = ["model", "method", "sample_id"]
    if "target_class" in raw.columns:
        table["target_class"] = raw["target_class"].to_numpy()
        key.append("target_class")
    if model is not None:
        table["model"] = model
    if task is not None:
        table["task"] = task
    digest = file_sha256(result_df)
    names = table["model"].unique().tolist()
    arguments = {"imported_from": str(result_df), "model": model or (names[0] if len(names) == 1 else None),
                 "task": task, "backend": "verona"}
    run = RunDir.open(Path(out), "sweep-epsilon", arguments, {"result_df_sha256": digest, **arguments}, key)
    run.update(imported_from=str(result_df.resolve()), result_df_sha256=digest)
    table["run_id"] = run.run_id
    if not run.done_keys():
        run.commit(table)
    return finish(run) if finish is not None else run.finalize()
