"""Files written so that a crash never leaves a half-written one, and the one file hash.

:func:`atomic_write` writes to a temporary file beside the target (``.NAME.PID.RANDOM.tmp``, created with the
usual umask permissions), flushes and fsyncs it, moves it into place with :func:`os.replace` and fsyncs the
directory, so a reader sees either the old file or the complete new one, also after a power cut. A temporary
file left behind by a killed process ends in ``.tmp``: :func:`remove_stale_tmp` clears them.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO

from robverify.errors import RobverifyError

log = logging.getLogger(__name__)

__all__ = ["atomic_write", "atomic_write_text", "file_sha256", "fsync_dir", "remove_stale_tmp"]


def fsync_dir(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (best effort: not every filesystem allows it)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write ``path`` through ``write(handle)`` on a temporary binary file in the same directory (created with
    its parents), then flush, fsync, ``os.replace`` and fsync the directory. Returns the path written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with open(tmp, "xb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of ``text`` as UTF-8 with the newlines as given (no platform translation)."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda handle: handle.write(data))


def remove_stale_tmp(directory: Path) -> list[Path]:
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


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks (the identity of models, data and imported files)."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise RobverifyError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()
