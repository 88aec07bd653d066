"""Run directories and the tidy results table.

Every command that computes writes one run directory::

    RUN_DIR/run.json           command, arguments, versions, model + data hashes, seed, start/end, status
    RUN_DIR/chunks/            committed work, one parquet file per chunk (resumable)
    RUN_DIR/results.parquet    one tidy table (and results.csv beside it), written by RunDir.finalize
    RUN_DIR/figures/           PNG + SVG

Tidy means one row per (model, backend, method, sample[, eps]) with run-level columns repeated, so that
``pd.concat`` of many runs is already the comparison table (:func:`load_results`). Numbers are stored as
numbers; ``eps_hi`` is ``inf`` where nothing was falsified (kept as inf in parquet, written ``inf`` in CSV).

Crash safety: every file is written to a temporary file in the same directory, flushed, fsync'ed and moved into
place with :func:`os.replace`, so a reader sees either the old file or the complete new one. A temporary
``*.tmp`` left behind by a killed process is never read and is removed the next time the directory is opened.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from robverify.errors import RobverifyError

log = logging.getLogger(__name__)

__all__ = [
    "CERTIFY_COLUMNS",
    "COMMON_COLUMNS",
    "SWEEP_COLUMNS",
    "VERDICTS",
    "VERONA_COLUMNS",
    "RunDir",
    "load_results",
    "import_verona_run",
    "read_verona_result_df",
    "validate_table",
    "write_verona_result_df",
]

# ---------------------------------------------------------------------------------------------------------------
# Column names of the tidy table (DESIGN.md, "Results"). Other tools and the checks rely on them.

COMMON_COLUMNS: list[str] = ["run_id", "model", "backend", "method", "task", "sample_id", "label", "pred", "time_s"]
CERTIFY_COLUMNS: list[str] = COMMON_COLUMNS + ["eps", "verdict", "margin_lb"]
SWEEP_COLUMNS: list[str] = COMMON_COLUMNS + ["eps_lo", "eps_hi", "status", "n_calls"]

#: The verdict vocabulary (DESIGN.md); mirrors :class:`robverify.spec.Verdict`.
VERDICTS: frozenset[str] = frozenset({"verified", "falsified", "unknown", "misclassified", "timeout", "error"})

_TABLE_COLUMNS = {"certify": CERTIFY_COLUMNS, "sweep": SWEEP_COLUMNS}
_NUMERIC_COLUMNS = {
    "certify": ["sample_id", "label", "pred", "time_s", "eps", "margin_lb"],
    "sweep": ["sample_id", "label", "pred", "time_s", "eps_lo", "eps_hi", "n_calls"],
}

RUN_JSON = "run.json"
RESULTS_PARQUET = "results.parquet"
RESULTS_CSV = "results.csv"
CHUNKS_DIR = "chunks"
FIGURES_DIR = "figures"
_PART_RE = re.compile(r"^part-(\d{6})\.parquet$")
_VERSION_PACKAGES = ("robverify", "torch", "onnx", "onnxruntime", "numpy", "pandas")
# run.json fields owned by RunDir itself; update() may not overwrite them.
_RESERVED = frozenset({"run_id", "command", "arguments", "fingerprint", "key", "status", "start", "end", "resumed"})


# ---------------------------------------------------------------------------------------------------------------
# Atomic file writes


def _fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` via a temp file in the same directory: write, flush, fsync, ``os.replace``."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _atomic_write_text(path: Path, text: str) -> None:
    _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _remove_stale_tmp(directory: Path) -> list[Path]:
    """Delete ``*.tmp`` files (half-written by a killed process) directly inside ``directory``."""
    removed = []
    if directory.is_dir():
        for tmp in directory.glob("*.tmp"):
            if tmp.is_file():
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    if removed:
        log.info("removed %d stale temporary file(s) in %s", len(removed), directory)
    return removed


# ---------------------------------------------------------------------------------------------------------------
# JSON helpers


def _jsonable(value: Any) -> Any:
    """Plain JSON types: Paths as str, enums as their value, numpy scalars/arrays as Python, tuples/sets as lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, Enum):
        return _jsonable(value.value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, frozenset)):
        return [_jsonable(v) for v in sorted(value, key=repr)]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise RobverifyError(f"run.json: expected a JSON-serialisable value, got {type(value).__name__} {value!r}")


def _normalise(value: Any) -> Any:
    """What a value looks like after a trip through run.json (so a fresh and a stored fingerprint compare)."""
    return json.loads(json.dumps(_jsonable(value)))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSION_PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


# ---------------------------------------------------------------------------------------------------------------
# Run directory


LOCK = ".lock"
_HELD: dict[Path, int] = {}  # run directories this process holds: path -> descriptor of the locked file


def _lock(path: Path) -> None:
    """Hold an exclusive lock on ``path`` for the rest of this process: a second process that opens the same
    run directory gets a clear error instead of interleaving its chunks with ours."""
    import fcntl

    key = path.resolve()
    if key in _HELD:
        return
    try:
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise RobverifyError(f"cannot write to {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise RobverifyError(f"{path} is in use by another robverify process; wait for it or choose another --out")
    _HELD[key] = fd


class RunDir:
    """One run directory: ``run.json``, committed chunks, the final tidy table and figures.

    Open it with :meth:`RunDir.open`; never construct it directly. A typical command::

        run = RunDir.open(out, "sweep-epsilon", arguments, fingerprint, key=["model", "backend", "method", "sample_id"])
        run.update(model_sha256=sha)
        todo = [s for s in samples if (name, backend, method, s) not in run.done_keys()]
        for batch in batches(todo):
            run.commit(compute(batch))        # atomic; a killed run loses at most the chunk in flight
        table = run.finalize()                # results.parquet + results.csv + figures, status "complete"
    """

    def __init__(self, path: Path, key: Sequence[str], meta: dict[str, Any]) -> None:
        self.path = path
        self.key: list[str] = list(key)
        self._meta = meta
        self._next_part = self._last_part() + 1

    # -- opening -------------------------------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: Path,
        command: str,
        arguments: Mapping[str, Any],
        fingerprint: Mapping[str, Any],
        key: Sequence[str],
    ) -> RunDir:
        """Create the run directory ``path``, or resume the same run found there.

        Args:
            path: the run directory (created with its parents).
            command: the command name, e.g. ``"sweep-epsilon"``.
            arguments: the user-visible arguments (JSON-serialisable; Paths are stored as str).
            fingerprint: what makes two runs the same work (model sha256, task, method, seed, eps list, ...).
                Reopening with the same command and fingerprint resumes; anything else is refused.
            key: the columns that identify one row (rows committed twice under one key: the last one wins).

        Raises:
            RobverifyError: ``path`` cannot be written, holds a different run, or is a non-empty directory
                that is not a run directory.
        """
        path = Path(path)
        if isinstance(key, str) or not key:
            raise RobverifyError(f"run key: expected a non-empty list of column names, got {key!r}")
        arguments_j = _normalise(dict(arguments))
        fingerprint_j = _normalise(dict(fingerprint))
        if path.exists() and not path.is_dir():
            raise RobverifyError(f"cannot write to {path}: it is a file, not a directory; choose another --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RobverifyError(f"cannot write to {path}: {exc.strerror or exc}") from None

        _lock(path)
        run_json = path / RUN_JSON
        if run_json.is_file():
            meta = cls._read_meta(run_json)
            differs = []
            if meta.get("command") != command:
                differs.append("command")
            old_fp = meta.get("fingerprint") or {}
            keys = set(old_fp) | set(fingerprint_j)
            differs += sorted(k for k in keys if old_fp.get(k, ...) != fingerprint_j.get(k, ...))
            if differs:
                raise RobverifyError(
                    f"{path} holds a different run (command {meta.get('command')!r}, differs in: "
                    f"{', '.join(differs)}); choose another --out or delete it"
                )
            meta.update(
                arguments=arguments_j,
                key=list(key),
                status="running",
                end=None,
                resumed=int(meta.get("resumed", 0)) + 1,
            )
            meta.pop("error", None)
            log.info("resuming run %s in %s (resume #%d)", meta.get("run_id"), path, meta["resumed"])
        else:
            try:
                foreign = any(not p.name.endswith(".tmp") and p.name != LOCK for p in path.iterdir())
            except OSError as exc:
                raise RobverifyError(f"cannot write to {path}: {exc.strerror or exc}") from None
            if foreign:
                raise RobverifyError(
                    f"{path} is not empty and holds no {RUN_JSON}; choose another --out or delete it"
                )
            seed = arguments_j.get("seed", fingerprint_j.get("seed"))
            meta = {
                "run_id": uuid.uuid4().hex[:12],
                "command": command,
                "arguments": arguments_j,
                "fingerprint": fingerprint_j,
                "key": list(key),
                "versions": _versions(),
                "seed": seed,
                "start": _now(),
                "end": None,
                "status": "running",
                "resumed": 0,
                "host": {"node": platform.node(), "cpu_count": os.cpu_count(), "platform": platform.platform()},
            }
        _remove_stale_tmp(path)
        _remove_stale_tmp(path / CHUNKS_DIR)
        run = cls(path, key, meta)
        try:
            run._write_meta()
        except OSError as exc:
            raise RobverifyError(f"cannot write to {path}: {exc.strerror or exc}") from None
        return run

    @staticmethod
    def _read_meta(run_json: Path) -> dict[str, Any]:
        try:
            meta = json.loads(run_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RobverifyError(f"{run_json} is not readable JSON ({exc}); delete the run directory") from None
        if not isinstance(meta, dict):
            raise RobverifyError(f"{run_json}: expected a JSON object, got {type(meta).__name__}")
        return meta

    # -- metadata ------------------------------------------------------------------------------------------------

    @property
    def meta(self) -> dict[str, Any]:
        """A copy of what run.json holds."""
        return json.loads(json.dumps(self._meta))

    @property
    def run_id(self) -> str:
        return str(self._meta["run_id"])

    @property
    def status(self) -> str:
        return str(self._meta["status"])

    @property
    def figures_dir(self) -> Path:
        """``RUN_DIR/figures``, created on first use."""
        figures = self.path / FIGURES_DIR
        figures.mkdir(exist_ok=True)
        return figures

    def update(self, **fields: Any) -> None:
        """Record run-level facts in run.json (e.g. ``model_sha256``, ``data_sha256``, ``input_reshape``)."""
        reserved = sorted(set(fields) & _RESERVED)
        if reserved:
            raise ValueError(f"run.json fields {reserved} are managed by RunDir and cannot be set with update()")
        self._meta.update(_normalise(fields))
        self._write_meta()

    def fail(self, message: str) -> None:
        """Mark the run failed (status "failed", the message, the end time). Committed chunks stay for a resume."""
        self._meta.update(status="failed", error=str(message), end=_now())
        self._write_meta()

    def _write_meta(self) -> None:
        _atomic_write_text(self.path / RUN_JSON, json.dumps(self._meta, indent=2) + "\n")

    # -- chunks --------------------------------------------------------------------------------------------------

    @property
    def _chunks(self) -> Path:
        return self.path / CHUNKS_DIR

    def _parts(self) -> list[Path]:
        if not self._chunks.is_dir():
            return []
        return sorted(p for p in self._chunks.iterdir() if _PART_RE.match(p.name))

    def _last_part(self) -> int:
        parts = self._parts()
        return int(_PART_RE.match(parts[-1].name).group(1)) if parts else 0  # type: ignore[union-attr]

    def commit(self, df: pd.DataFrame) -> Path | None:
        """Append ``df`` as the next chunk, atomically. Returns the chunk's path (None for an empty frame)."""
        missing = [c for c in self.key if c not in df.columns]
        if missing:
            raise ValueError(f"commit: the chunk lacks the key column(s) {missing}")
        if df.empty:
            return None
        self._chunks.mkdir(exist_ok=True)
        self._next_part = max(self._next_part, self._last_part() + 1)  # never reuse a number found on disk
        part = self._chunks / f"part-{self._next_part:06d}.parquet"
        frame = df.reset_index(drop=True)
        _atomic_write(part, lambda handle: frame.to_parquet(handle, index=False))
        self._next_part += 1
        return part

    def done(self) -> pd.DataFrame:
        """All committed rows, deduplicated on the key (the last committed wins), in commit order.

        Only complete ``part-NNNNNN.parquet`` files are read; half-written ``*.tmp`` files are ignored and removed.
        """
        _remove_stale_tmp(self._chunks)
        frames = []
        for part in self._parts():
            try:
                frames.append(pd.read_parquet(part))
            except Exception as exc:  # a committed chunk is complete by construction; anything else is damage
                raise RobverifyError(f"{part} is unreadable ({type(exc).__name__}); delete it to recompute") from None
        frames = [f for f in frames if not f.empty]
        if not frames:
            return pd.DataFrame()
        table = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
        return table.drop_duplicates(subset=self.key, keep="last").reset_index(drop=True)

    def done_keys(self) -> set[tuple[Any, ...]]:
        """The keys of committed rows, as tuples in the order of ``key`` (what a resumed run can skip)."""
        table = self.done()
        if table.empty:
            return set()
        return set(table[self.key].itertuples(index=False, name=None))

    # -- finishing -----------------------------------------------------------------------------------------------

    def finalize(self, figures: bool = True) -> pd.DataFrame:
        """Write the final table and mark the run complete.

        Concatenates the committed chunks, deduplicates on the key, sorts by the key, writes ``results.parquet`` and
        ``results.csv`` atomically and, with ``figures``, draws the standard figures of a sweep or certify table
        into ``figures/`` (robustness-distribution ECDF, certified accuracy). Sets status "complete" and ``end``.
        """
        table = self.done()
        if not table.empty:
            table = table.sort_values(self.key, kind="stable").reset_index(drop=True)
        _atomic_write(self.path / RESULTS_PARQUET, lambda handle: table.to_parquet(handle, index=False))
        _atomic_write(self.path / RESULTS_CSV, lambda handle: table.to_csv(handle, index=False))
        drawn: list[str] = []
        if figures and not table.empty:
            drawn = self._draw_figures(table)
        self._meta.update(status="complete", end=_now(), n_rows=len(table), figures=drawn)
        self._write_meta()
        return table

    def _draw_figures(self, table: pd.DataFrame) -> list[str]:
        from robverify.analysis.distribution import certified_accuracy_curve
        from robverify.analysis.plots import plot_certified_accuracy, plot_ecdf

        names: list[str] = []
        if set(SWEEP_COLUMNS) <= set(table.columns):
            plot_ecdf(table, self.figures_dir)
            names.append("ecdf")
        if set(SWEEP_COLUMNS) <= set(table.columns) or set(CERTIFY_COLUMNS) <= set(table.columns):
            plot_certified_accuracy(certified_accuracy_curve(table), self.figures_dir)
            names.append("certified_accuracy")
        return [f"{FIGURES_DIR}/{n}.{ext}" for n in names for ext in ("png", "svg")]

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, run_id={self.run_id!r}, status={self.status!r})"


# ---------------------------------------------------------------------------------------------------------------
# The tidy table


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


# ---------------------------------------------------------------------------------------------------------------
# VERONA's result_df.csv

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
    rows = df[df["status"].astype(str) != "misclassified"]
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
        _atomic_write(path, lambda handle: out.to_csv(handle))
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
            "status": np.where(attack, "upper-bound", "grid"),
            "n_calls": np.full(n, np.nan),
        },
        columns=SWEEP_COLUMNS,
    )


def import_verona_run(result_df: Path, out: Path, *, model: str | None = None, task: str | None = None
                      ) -> pd.DataFrame:
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
    import hashlib

    digest = hashlib.sha256(result_df.read_bytes()).hexdigest()
    names = table["model"].unique().tolist()
    arguments = {"imported_from": str(result_df), "model": model or (names[0] if len(names) == 1 else None),
                 "task": task, "backend": "verona"}
    run = RunDir.open(Path(out), "sweep-epsilon", arguments, {"result_df_sha256": digest, **arguments}, key)
    run.update(imported_from=str(result_df.resolve()), result_df_sha256=digest)
    table["run_id"] = run.run_id
    if not run.done_keys():
        run.commit(table)
    return run.finalize()
