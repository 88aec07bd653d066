"""The VNN-COMP answer interface: result words and the counterexample format of result files.

A result file starts with one word: ``unsat`` (the property holds), ``sat`` (a counterexample follows),
``unknown``, ``timeout`` or ``error``; VNN-COMP 2021's ``holds`` / ``violated`` are read as ``unsat`` / ``sat``.
A counterexample is written ``((X_0 v) (X_1 v) ... (Y_0 v) ...)``, one assignment per line.
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from robverify.spec import Verdict


class Result(str, enum.Enum):
    """A VNN-COMP answer word."""

    UNSAT = "unsat"
    SAT = "sat"
    UNKNOWN = "unknown"
    TIMEOUT = "timeout"
    ERROR = "error"

    @property
    def verdict(self) -> Verdict:
        return {Result.UNSAT: Verdict.VERIFIED, Result.SAT: Verdict.FALSIFIED, Result.UNKNOWN: Verdict.UNKNOWN,
                Result.TIMEOUT: Verdict.TIMEOUT, Result.ERROR: Verdict.ERROR}[self]


_WORDS = {"unsat": Result.UNSAT, "holds": Result.UNSAT, "sat": Result.SAT, "violated": Result.SAT,
          "unknown": Result.UNKNOWN, "timeout": Result.TIMEOUT, "error": Result.ERROR}
_ASSIGN_RE = re.compile(r"\(\s*([XY])_(\d+)\s+([^\s()]+)\s*\)")
_MAX_INDEX = 100_000_000


def format_counterexample(x: Tensor | np.ndarray, y: Tensor | np.ndarray) -> str:
    """``((X_0 v)\\n (X_1 v) ... (Y_0 v))`` for flattened inputs ``x`` and outputs ``y``; every value is written
    with the digits that read back as the same float64 (float32 inputs are exact)."""
    xs = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=np.float64).reshape(-1)
    ys = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y, dtype=np.float64).reshape(-1)
    parts = [f"(X_{i} {float(v)!r})" for i, v in enumerate(xs)] + [f"(Y_{j} {float(v)!r})" for j, v in enumerate(ys)]
    return "(" + "\n ".join(parts) + ")"


def format_result(result: Result, x: Tensor | None = None, y: Tensor | None = None) -> str:
    """The text of a result file: the word, and for ``sat`` the counterexample."""
    if result is Result.SAT:
        if x is None or y is None:
            raise ValueError("a sat result needs its counterexample")
        return f"sat\n{format_counterexample(x, y)}\n"
    return f"{result.value}\n"


@dataclass(frozen=True)
class ParsedResult:
    """A result file read back: ``result`` and, for ``sat`` with an assignment, ``x`` ``[n_inputs]`` (float64)
    and ``y`` ``[n_outputs]`` (None where the file gives no values); ``problem`` says what was wrong (the result
    is then ERROR)."""

    result: Result
    x: Tensor | None = None
    y: Tensor | None = None
    problem: str = ""


def parse_result(text: str, n_inputs: int, n_outputs: int) -> ParsedResult:
    """Read a result file's text. Never raises: unreadable text gives ``ERROR`` with the problem named."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ParsedResult(Result.ERROR, problem="empty result file")
    word = lines[0].lower()
    result = _WORDS.get(word)
    if result is None:
        return ParsedResult(Result.ERROR, problem=f"unrecognised result {lines[0][:60]!r}")
    if result is not Result.SAT:
        return ParsedResult(result)
    body = "\n".join(lines[1:])
    values: dict[tuple[str, int], float] = {}
    for m in _ASSIGN_RE.finditer(body):
        kind, index = m.group(1), int(m.group(2))
        try:
            v = float(m.group(3))
        except ValueError:
            return ParsedResult(Result.ERROR, problem=f"sat: malformed value {m.group(3)[:40]!r}")
        if not math.isfinite(v) or index > _MAX_INDEX:
            return ParsedResult(Result.ERROR, problem=f"sat: bad assignment {m.group(0)[:60]!r}")
        values[(kind, index)] = v
    missing = [i for i in range(n_inputs) if ("X", i) not in values]
    if missing:
        return ParsedResult(Result.ERROR, problem=f"sat without a complete counterexample (X_{missing[0]} missing)")
    extra = [i for (k, i) in values if k == "X" and i >= n_inputs]
    if extra:
        return ParsedResult(Result.ERROR, problem=f"sat: counterexample assigns X_{extra[0]}, the model has "
                                                  f"{n_inputs} inputs")
    x = torch.tensor([values[("X", i)] for i in range(n_inputs)], dtype=torch.float64)
    y = None
    if all(("Y", j) in values for j in range(n_outputs)):
        y = torch.tensor([values[("Y", j)] for j in range(n_outputs)], dtype=torch.float64)
    return ParsedResult(Result.SAT, x, y)
