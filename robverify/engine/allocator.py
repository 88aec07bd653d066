"""Large tensors of one bound computation reuse freed memory instead of fresh pages from the kernel.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it
back to the kernel on ``free``, so every large temporary of a backward pass (coefficient tensors of hundreds of MB,
made and dropped per layer and chunk) is paid again in page faults and kernel zero-filling. Measured on this
project's machines (1 thread): filling a new 232 MB tensor takes 0.19 s, 0.01 s in reused memory; CROWN on
resnet-tiny (8 samples, benchmarks/bench_scale.py) 43.3 s -> 22.3 s.

:func:`reused_memory` is a context: inside it glibc serves large blocks from its heap and keeps freed memory for
the next allocation (``mallopt``: ``M_MMAP_MAX = 0``, no trimming); on leaving the outermost one the defaults come
back and ``malloc_trim`` returns the free memory to the kernel. Scoped so, because a whole process run this way
(a long branch-and-bound search whose block sizes change every round) kept growing its heap: one reached 23 GB
and was killed. The engine enters it around each bound computation. glibc on Linux only (elsewhere nothing
changes); ``ROBVERIFY_MALLOC=system`` leaves malloc as it is.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import sys
from collections.abc import Iterator

__all__ = ["reused_memory"]

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4
#: glibc's defaults (``mallopt(3)``), restored on leaving
_DEFAULTS = ((_M_MMAP_MAX, 65536), (_M_TRIM_THRESHOLD, 128 * 1024), (_M_TOP_PAD, 128 * 1024))
_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet; None: not glibc
_depth = 0


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is False:
        _libc = None
        if sys.platform.startswith("linux") and os.environ.get("ROBVERIFY_MALLOC", "").strip().lower() != "system":
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
                libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
                _libc = libc
            except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
                _libc = None
    return _libc  # type: ignore[return-value]


@contextlib.contextmanager
def reused_memory() -> Iterator[bool]:
    """Within the block, freed large blocks are kept and reused (see the module docstring); yields whether the
    setting is in force. Nested blocks share the outermost one's setting."""
    global _depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    if _depth == 0:
        libc.mallopt(_M_MMAP_MAX, 0)
        libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)
        libc.mallopt(_M_TOP_PAD, 2**26)  # grow the heap 64 MB at a time
    _depth += 1
    try:
        yield True
    finally:
        _depth -= 1
        if _depth == 0:
            for option, value in _DEFAULTS:
                libc.mallopt(option, value)
            libc.malloc_trim(0)
