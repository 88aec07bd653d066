"""Large tensors reuse freed memory instead of fresh pages from the kernel.

glibc's ``malloc`` serves every block above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and gives it
back to the kernel on ``free``, so every large temporary of a backward pass (coefficient tensors of hundreds of MB,
made and dropped per layer and chunk) is paid again in page faults and kernel zero-filling. Measured on this
project's machines (1 thread): filling a new 232 MB tensor takes 0.19 s, 0.01 s in reused memory; CROWN on
resnet-tiny (8 samples, benchmarks/bench_scale.py) 43.3 s -> 22.3 s, peak RSS 3.25 -> 3.66 GB (freed blocks are
kept, and a block freed between two smaller ones is reused only by a request that fits it). :func:`keep_freed_memory` asks glibc to serve large blocks from its heap
and to keep freed memory for the next allocation (``mallopt``: ``M_MMAP_MAX = 0``, ``M_TRIM_THRESHOLD`` at its
maximum), so a process's resident memory stays at its peak instead of shrinking after it. Applied once when the
engine is imported; glibc only (elsewhere nothing changes); ``ROBVERIFY_MALLOC=system`` leaves malloc as it is.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_TOP_PAD = -2
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc as described above (once per process); True when it was applied."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("ROBVERIFY_MALLOC", "").strip().lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    mallopt(_M_TOP_PAD, 2**26)  # grow the heap 64 MB at a time
    return _applied
