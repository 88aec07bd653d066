"""Run directories: resumable, locked, crash-safe homes of one command's work.

Every command that computes writes one run directory::

    RUN_DIR/run.json           command, arguments, versions (+ the backend's verifiers), model + data hashes, seed,
                               start/end, status
    RUN_DIR/chunks/            committed work, one parquet file per chunk (resumable)
    RUN_DIR/results.parquet    one tidy table (and results.csv beside it), written by RunDir.finalize
    RUN_DIR/figures/           PNG + SVG, drawn by the app layer after finalising

The table's shape is :mod:`robverify.runs.schema`'s. Crash safety: every file is written with
:func:`robverify.files.atomic_write`, so a reader sees either the old file or the complete new one; a temporary
``*.tmp`` left behind by a killed process is never read and is removed the next time the directory is opened.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import re
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from robverify.errors import RobverifyError
from robverify.files import atomic_write, atomic_write_text, remove_stale_tmp
from robverify.runs.schema import CHUNKS_DIR, FIGURES_DIR, RESULTS_CSV, RESULTS_PARQUET, RUN_JSON

log = logging.getLogger(__name__)

__all__ = ["RunDir"]

_PART_RE = re.compile(r"^part-(\d{6})\.parquet$")
_VERSION_PACKAGES = ("robverify", "torch", "onnx", "onnxruntime", "numpy", "pandas")
# run.json fields owned by RunDir itself; update() may not overwrite them.
_RESERVED = frozenset({"run_id", "command", "arguments", "fingerprint", "key", "status", "start", "end", "resumed"})



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
        table = run.finalize()                # results.parquet + results.csv, status "complete"
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
        remove_stale_tmp(path)
        remove_stale_tmp(path / CHUNKS_DIR)
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
        atomic_write_text(self.path / RUN_JSON, json.dumps(self._meta, indent=2) + "\n")

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
        atomic_write(part, lambda handle: frame.to_parquet(handle, index=False))
        self._next_part += 1
        return part

    def done(self) -> pd.DataFrame:
        """All committed rows, deduplicated on the key (the last committed wins), in commit order.

        Only complete ``part-NNNNNN.parquet`` files are read; half-written ``*.tmp`` files are ignored and removed.
        """
        remove_stale_tmp(self._chunks)
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

    def finalize(self) -> pd.DataFrame:
        """Write the final table and mark the run complete.

        Concatenates the committed chunks, deduplicates on the key, sorts by the key, writes ``results.parquet`` and
        ``results.csv`` atomically, sets status "complete", ``end``, ``n_rows`` and an empty ``figures`` list (the
        app layer draws the figures afterwards and records them with :meth:`record_figures`).
        """
        table = self.done()
        if not table.empty:
            table = table.sort_values(self.key, kind="stable").reset_index(drop=True)
        atomic_write(self.path / RESULTS_PARQUET, lambda handle: table.to_parquet(handle, index=False))
        atomic_write(self.path / RESULTS_CSV, lambda handle: table.to_csv(handle, index=False))
        self._meta.update(status="complete", end=_now(), n_rows=len(table), figures=[])
        self._write_meta()
        return table

    def record_figures(self, names: Sequence[str]) -> None:
        """Record the figures drawn into ``figures/`` (paths relative to the run directory) in run.json."""
        self._meta["figures"] = list(names)
        self._write_meta()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, run_id={self.run_id!r}, status={self.status!r})"
