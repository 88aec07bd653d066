"""VNN-LIB 1.0 property files: read the VNN-COMP dialect into :class:`VnnlibProperty` (and from there a
:class:`~robverify.spec.Spec`).

:func:`read_vnnlib` / :func:`parse_vnnlib` accept the dialect used by VNN-COMP benchmarks:

- ``;`` comments, ``(declare-const X_i Real)`` / ``(declare-const Y_j Real)`` (declared before use; indices must be
  ``0..n-1``), ``(assert F)``; ``set-logic``, ``set-info``, ``set-option``, ``check-sat``, ``get-model`` and
  ``exit`` are accepted and ignored.
- ``F`` is any nesting of ``and`` / ``or`` over comparisons ``<=``, ``>=``, ``<``, ``>``, ``=`` between linear terms:
  numbers (``-0.5``, ``1e-3``), variables, ``(+ ...)``, ``(- t)``, ``(- t1 t2 ...)``, ``(* c t)`` / ``(* t c)``.
  The assertions are brought to disjunctive normal form; each disjunct is a conjunction of input bounds and output
  rows. Disjuncts that carry their own input box (``(or (and (>= X_0 ..) (<= X_0 ..) (>= Y_0 ..)) ...)``) give one
  :class:`VnnlibProperty` per distinct box; disjuncts sharing a box become the groups of one property.
- Strict comparisons ``<`` / ``>`` are read as ``<=`` / ``>=``: the closed region contains the open one, so a
  property verified on it also holds for the strict file (sound for proofs; a counterexample on the boundary of a
  strict constraint must be re-checked with a tolerance, as every counterexample should be).
- Constants are read as the nearest float64 (the convention of VNN-COMP tools); terms are combined in float64,
  which is exact for the usual shapes (constants on one side, one coefficient per variable). An input bound that
  needs a division (``(<= (* 2 X_0) 1)``) is rounded outward.
- A constraint on a single input with coefficient ±1 (or any non-zero coefficient) is a box bound; constraints on
  several inputs (polytopes) or mixing inputs and outputs are rejected (unsupported). Output constraints are
  normalised to rows ``C·y <= d`` (``Y_1 >= Y_0`` becomes ``Y_0 - Y_1 <= 0``). A disjunct without output rows
  (every point of its box is unsafe) is represented by the always-true row ``0·y <= 0``.

Every problem in a file raises :class:`VnnlibError` with ``file:line:column:`` in front of the message.
"""

from __future__ import annotations

import bisect
import gc
import gzip
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from robverify.errors import RobverifyError
from robverify.spec import Spec

__all__ = [
    "VnnlibError",
    "VnnlibProperty",
    "parse_vnnlib",
    "read_vnnlib",
]

# Limits that keep malformed or hostile files from exhausting the stack, memory or time.
MAX_DEPTH = 200  # nesting of parentheses
MAX_DISJUNCTS = 200_000  # disjuncts after bringing the assertions to DNF
MAX_DNF_ATOMS = 5_000_000  # comparisons stored across all disjuncts (and input bounds copied per disjunct box)
MAX_MATRIX = 50_000_000  # entries of a property's dense C (rows x outputs)

_TOKEN_RE = re.compile(r"[()]|;[^\n]*|[^\s();]+")  # locates tokens for error messages
_COMMENT_RE = re.compile(r";[^\n]*")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_VAR_RE = re.compile(r"([XY])_(0|[1-9]\d{0,8})")
_IGNORED_COMMANDS = frozenset({"set-logic", "set-info", "set-option", "check-sat", "get-model", "exit"})
_COMPARISONS = frozenset({"<=", ">=", "<", ">", "="})


class VnnlibError(RobverifyError):
    """A VNN-LIB file that cannot be read; the message starts with ``file:line:column:``."""

    def __init__(self, message: str, filename: str = "<string>", line: int = 0, column: int = 0) -> None:
        self.filename = filename
        self.line = line
        self.column = column
        self.reason = message
        super().__init__(f"{filename}:{line}:{column}: {message}" if line else f"{filename}: {message}")


@dataclass(frozen=True, eq=False)
class VnnlibProperty:
    """One property read from a VNN-LIB file: an input box and a disjunction of conjunctions of rows.

    The unsafe region is ``OR_k AND_{s: group[s]==k} C[s]·y <= d[s]`` over ``x`` in ``[x_lo, x_hi]``.

    Attributes:
        x_lo, x_hi: ``[n_inputs]`` float64 box.
        C: ``[S, n_outputs]`` float64 rows; d: ``[S]`` float64; group: ``[S]`` long disjunct index ``0..K-1``.
    """

    x_lo: Tensor
    x_hi: Tensor
    C: Tensor
    d: Tensor
    group: Tensor
    n_inputs: int
    n_outputs: int

    @property
    def n_groups(self) -> int:
        return int(self.group.max().item()) + 1 if self.group.numel() else 0

    def to_spec(self, input_shape: Sequence[int] | torch.Size | None = None,
                dtype: torch.dtype = torch.float32) -> Spec:
        """A :class:`Spec` with a batch of one, ``x`` shaped ``[1, *input_shape]`` (default ``(n_inputs,)``).

        The cast to ``dtype`` never shrinks the box (a bound the cast moved inward is stepped outward by one ulp)
        nor the unsafe region's right-hand sides (``d`` is rounded up).
        """
        shape = (self.n_inputs,) if input_shape is None else tuple(int(s) for s in input_shape)
        if math.prod(shape) != self.n_inputs:
            raise RobverifyError(
                f"vnnlib property has {self.n_inputs} inputs, which do not fit the input shape {shape}"
            )
        x_lo = _cast_outward(self.x_lo, dtype, down=True).reshape(1, *shape)
        x_hi = _cast_outward(self.x_hi, dtype, down=False).reshape(1, *shape)
        d = _cast_outward(self.d, dtype, down=False).unsqueeze(0)
        return Spec(x_lo, x_hi, self.C.to(dtype).unsqueeze(0), d, self.group.clone())


def _cast_outward(t: Tensor, dtype: torch.dtype, down: bool) -> Tensor:
    """Cast to ``dtype`` rounding toward -inf (``down``) or +inf, for values the cast rounded the wrong way."""
    out = t.to(dtype)
    if out.dtype == t.dtype or not out.is_floating_point():
        return out
    back = out.to(t.dtype)
    moved = back > t if down else back < t
    if bool(moved.any()):
        inf = torch.tensor(-math.inf if down else math.inf, dtype=dtype)
        out = torch.where(moved, torch.nextafter(out, inf.expand_as(out)), out)
    return out


class _Source:
    """The text, its tokens, and ``line:column`` of a token (computed only when an error needs it).

    Tokens come from a fast C-level split; their character offsets are recomputed with an equivalent regex only
    to locate an error. Nodes refer to tokens by index: a list is ``[index of its '(', child, ...]``, an atom is
    the ``int`` index of its token.
    """

    def __init__(self, text: str, filename: str) -> None:
        self.text = text
        self.filename = filename
        stripped = _COMMENT_RE.sub("", text) if ";" in text else text
        self.tokens: list[str] = stripped.replace("(", " ( ").replace(")", " ) ").split()
        self._offsets: list[int] | None = None
        self._newlines: list[int] | None = None

    def offset(self, tix: int) -> int:
        if self._offsets is None:
            self._offsets = [m.start() for m in _TOKEN_RE.finditer(self.text) if m.group()[0] != ";"]
        return self._offsets[tix] if 0 <= tix < len(self._offsets) else len(self.text)

    def where(self, tix: int) -> tuple[int, int]:
        pos = self.offset(tix)
        if self._newlines is None:
            self._newlines = [m.start() for m in re.finditer("\n", self.text)]
        line = bisect.bisect_left(self._newlines, pos)
        start = self._newlines[line - 1] + 1 if line > 0 else 0
        return line + 1, pos - start + 1

    def error(self, tix: int, message: str) -> VnnlibError:
        line, col = self.where(tix)
        return VnnlibError(message, self.filename, line, col)

    def end(self) -> int:
        """The token index that stands for the end of the text."""
        return len(self.tokens)


def _sexprs(src: _Source) -> list:
    """Top-level S-expressions, built iteratively (no recursion, whatever the file's length)."""
    toks = src.tokens
    top: list = []
    stack: list[list] = []
    cur = top
    for i, tok in enumerate(toks):
        if tok == "(":
            node = [i]
            cur.append(node)
            stack.append(cur)
            cur = node
            if len(stack) > MAX_DEPTH:
                raise src.error(i, f"parentheses nested deeper than {MAX_DEPTH} levels")
        elif tok == ")":
            if not stack:
                raise src.error(i, "unexpected ')' (no matching '(')")
            cur = stack.pop()
        elif stack:
            cur.append(i)
        else:
            raise src.error(i, f"expected '(' to start a command, found {tok[:40]!r}")
    if stack:
        line, col = src.where(cur[0])
        raise src.error(src.end(), f"expected ')' to close the '(' opened at {line}:{col}, found end of file")
    return top


def _tix(node) -> int:
    return node[0] if type(node) is list else node


class _Parser:
    def __init__(self, src: _Source, n_inputs: int | None, n_outputs: int | None) -> None:
        self.src = src
        self.toks = src.tokens
        self.n_inputs = n_inputs
        self.n_outputs = n_outputs
        self.declared: dict[str, tuple[int, int]] = {}  # name -> (key, token index of the declaration)
        self.x_decl: dict[int, int] = {}
        self.y_decl: dict[int, int] = {}

    def err(self, node, message: str) -> VnnlibError:
        return self.src.error(_tix(node), message)

    def _head(self, node: list, what: str) -> str:
        """The operator or command name of a list node."""
        if len(node) < 2 or type(node[1]) is not int:
            raise self.err(node, f"expected {what} after '('")
        return self.toks[node[1]]

    def _describe(self, node) -> str:
        if type(node) is list:
            return f"'({self.toks[node[1]][:30]} ...)'" if len(node) > 1 and type(node[1]) is int else "a list"
        return repr(self.toks[node][:40])

    # ---- commands

    def parse(self) -> list[VnnlibProperty]:
        commands = _sexprs(self.src)
        asserts = []
        for cmd in commands:
            name = self._head(cmd, "a command name")
            if name == "declare-const":
                self._declare(cmd)
            elif name == "assert":
                if len(cmd) != 3:
                    raise self.err(cmd, f"'assert' expects one formula, got {len(cmd) - 2}")
                asserts.append(cmd[2])
            elif name in _IGNORED_COMMANDS:
                continue
            elif name == "declare-fun":
                raise self.err(cmd[1], "unsupported command 'declare-fun' (use '(declare-const X_i Real)')")
            else:
                raise self.err(cmd[1], f"unsupported command {name[:40]!r} (expected 'declare-const' or 'assert')")
        n_in = self._check_declared(self.x_decl, "X", "inputs", self.n_inputs)
        n_out = self._check_declared(self.y_decl, "Y", "outputs", self.n_outputs)
        if not asserts:
            raise self.src.error(self.src.end(), "the file has no assertions")
        return self._properties(asserts, n_in, n_out)

    def _declare(self, cmd: list) -> None:
        if len(cmd) != 4 or type(cmd[2]) is not int or type(cmd[3]) is not int:
            raise self.err(cmd, "expected '(declare-const NAME Real)'")
        name, sort = self.toks[cmd[2]], self.toks[cmd[3]]
        if sort != "Real":
            raise self.err(cmd[3], f"unsupported sort {sort[:40]!r} (expected 'Real')")
        m = _VAR_RE.fullmatch(name)
        if m is None:
            raise self.err(
                cmd[2], f"unsupported variable name {name[:40]!r} (expected X_<i> for inputs or Y_<j> for outputs)"
            )
        if name in self.declared:
            line, col = self.src.where(self.declared[name][1])
            raise self.err(cmd[2], f"{name} is declared twice (first at {line}:{col})")
        idx = int(m.group(2))
        if m.group(1) == "X":
            self.declared[name] = (idx, cmd[2])
            self.x_decl[idx] = cmd[2]
        else:
            self.declared[name] = (-idx - 1, cmd[2])
            self.y_decl[idx] = cmd[2]

    def _check_declared(self, decl: dict[int, int], prefix: str, what: str, expected: int | None) -> int:
        if not decl:
            raise self.src.error(self.src.end(), f"the file declares no {what} ({prefix}_0 ...)")
        n = len(decl)
        if expected is not None and n != expected:
            # too many: the first declaration beyond the model's range; too few: the last declaration
            tix = decl[min(i for i in decl if i >= expected)] if n > expected else decl[max(decl)]
            raise self.src.error(tix, f"the file declares {n} {what}, the model has {expected}")
        top = max(decl)
        if top != n - 1:
            missing = next(i for i in range(n) if i not in decl)  # n distinct indices, max >= n: one below n is free
            raise self.src.error(
                decl[top], f"{prefix}_{missing} is not declared ({what} must be {prefix}_0..{prefix}_{top})"
            )
        return n

    # ---- formulas -> DNF (a list of conjunctions; a conjunction is a list of atoms)

    def _dnf(self, node) -> list[list]:
        if type(node) is not list:
            found = self._describe(node)
            raise self.err(node, f"expected a formula '(<= ...)', '(and ...)' or '(or ...)', found {found}")
        op = self._head(node, "an operator")
        if op in _COMPARISONS:
            return [self._comparison(node, op)]
        if op == "and":
            result: list[list] = [[]]
            for child in node[2:]:
                result = self._product(result, self._dnf(child), child)
            return result
        if op == "or":
            if len(node) == 2:
                raise self.err(node, "empty 'or' (a property that can never be violated) is not supported")
            out: list[list] = []
            for child in node[2:]:
                out.extend(self._dnf(child))
                if len(out) > MAX_DISJUNCTS:
                    raise self.err(child, f"more than {MAX_DISJUNCTS} disjuncts")
            return out
        raise self.err(node[1], f"unsupported operator {op[:40]!r} in a formula (expected and, or, <=, >=, <, >, =)")

    def _product(self, result: list[list], part: list[list], where) -> list[list]:
        """Conjunction of two DNFs. The conjunctions in ``result`` are fresh lists owned by the caller."""
        if len(part) == 1:
            size = (len(result[0]) if len(result) == 1 else sum(map(len, result))) + len(result) * len(part[0])
            if size > MAX_DNF_ATOMS:
                raise self.err(where, "the formula is too large once brought to disjunctive normal form")
            for conj in result:
                conj.extend(part[0])
            return result
        n = len(result) * len(part)
        size = len(part) * sum(map(len, result)) + len(result) * sum(map(len, part))
        if n > MAX_DISJUNCTS or size > MAX_DNF_ATOMS:
            raise self.err(where, "the formula is too large once brought to disjunctive normal form")
        return [a + b for a in result for b in part]

    # ---- comparisons and linear terms

    def _comparison(self, node: list, op: str) -> list:
        if len(node) != 4:
            raise self.err(node, f"{op!r} expects 2 operands, got {len(node) - 2}")
        lhs, rhs = node[2], node[3]
        if type(lhs) is int and type(rhs) is int:  # fast paths: input bound, variable vs number / variable
            decl = self.declared.get(self.toks[lhs])
            if decl is not None and decl[0] >= 0 and decl[1] < lhs and self.toks[rhs] not in self.declared:
                _, v = self._atom(rhs)  # a number (or a located error)
                v += 0.0
                tix = node[0]
                if op == "<=" or op == "<":
                    return [(0, decl[0], True, v, tix)]
                if op == ">=" or op == ">":
                    return [(0, decl[0], False, v, tix)]
                return [(0, decl[0], False, v, tix), (0, decl[0], True, v, tix)]
            (lkey, lval), (rkey, rval) = self._atom(lhs), self._atom(rhs)
            if lkey is not None and rkey is None and lkey >= 0:
                coefs, const = {lkey: 1.0}, -rval
            elif rkey is not None and lkey is None and rkey >= 0:
                coefs, const = {rkey: -1.0}, lval
            else:
                lc, lk = ({lkey: 1.0}, 0.0) if lkey is not None else ({}, lval)
                rc, rk = ({rkey: 1.0}, 0.0) if rkey is not None else ({}, rval)
                coefs, const = self._difference(lc, lk, rc, rk)
        else:
            lc, lk = self._term(lhs)
            rc, rk = self._term(rhs)
            coefs, const = self._difference(lc, lk, rc, rk)
        if not math.isfinite(const) or not all(math.isfinite(v) for v in coefs.values()):
            raise self.err(node, "a constant or coefficient overflows float64")
        if not coefs:
            raise self.err(node, "comparison of two constants (no variable)")
        has_x = has_y = False
        for k in coefs:
            if k >= 0:
                has_x = True
            else:
                has_y = True
        if has_x and has_y:
            raise self.err(node, "a constraint mixing inputs (X) and outputs (Y) is not supported")
        if has_x:
            return self._bound(node, op, coefs, const)
        # coefs·y + const  (op)  0   ->   rows  C·y <= d
        tix = node[0]
        if op == "<=" or op == "<":
            return [(1, coefs, -const, tix)]
        neg = {k: -v for k, v in coefs.items()}
        if op == ">=" or op == ">":
            return [(1, neg, const, tix)]
        return [(1, coefs, -const, tix), (1, neg, const, tix)]

    @staticmethod
    def _difference(lc: dict, lk: float, rc: dict, rk: float) -> tuple[dict, float]:
        coefs = dict(lc)
        for k, v in rc.items():
            coefs[k] = coefs.get(k, 0.0) - v
        return coefs, lk - rk

    def _bound(self, node: list, op: str, coefs: dict, const: float) -> list:
        nonzero = [(k, v) for k, v in coefs.items() if v != 0.0]
        if len(nonzero) != 1:
            what = "several inputs (not a box)" if nonzero else "inputs with zero coefficients"
            raise self.err(node, f"a constraint on {what} is not supported")
        i, a = nonzero[0]
        # a*x + const (op) 0  ->  x (op') -const / a, rounded outward when the division is inexact
        if a == 1.0 or a == -1.0:
            lo_val = hi_val = -const / a + 0.0
        else:
            val = -const / a + 0.0
            if not math.isfinite(val):
                raise self.err(node, "an input bound overflows float64")
            exact = Fraction(-const) / Fraction(a)
            lo_val = val if Fraction(val) <= exact else math.nextafter(val, -math.inf)
            hi_val = val if Fraction(val) >= exact else math.nextafter(val, math.inf)
        if not (math.isfinite(lo_val) and math.isfinite(hi_val)):
            raise self.err(node, "an input bound overflows float64")
        tix = node[0]
        if op == "=":
            return [(0, i, False, lo_val, tix), (0, i, True, hi_val, tix)]
        if (op == "<=" or op == "<") == (a > 0):
            return [(0, i, True, hi_val, tix)]
        return [(0, i, False, lo_val, tix)]

    def _atom(self, tix: int) -> tuple[int | None, float]:
        """``(key, 0.0)`` for a variable (keys ``i >= 0`` for X_i, ``-j-1`` for Y_j), ``(None, value)`` for a number."""
        text = self.toks[tix]
        decl = self.declared.get(text)
        if decl is not None and decl[1] < tix:
            return decl[0], 0.0
        c = text[0]
        if c.isdigit() or c in "+-.":
            if _NUMBER_RE.fullmatch(text) is None:
                raise self.src.error(tix, f"malformed number {text[:40]!r}")
            v = float(text)
            if not math.isfinite(v):
                raise self.src.error(tix, f"number {text[:40]!r} is out of the float64 range")
            return None, v
        if _VAR_RE.fullmatch(text):
            raise self.src.error(
                tix, f"undeclared variable {text} (declare it with '(declare-const {text} Real)' first)"
            )
        raise self.src.error(tix, f"expected a number or a variable X_<i> / Y_<j>, found {text[:40]!r}")

    def _term(self, node) -> tuple[dict, float]:
        """A linear term as ``({key: coef}, constant)`` (recursion depth is bounded by MAX_DEPTH)."""
        if type(node) is int:
            key, val = self._atom(node)
            return ({}, val) if key is None else ({key: 1.0}, 0.0)
        op = self._head(node, "an operator '+', '-' or '*'")
        args = node[2:]
        if not args:
            raise self.err(node, f"{op[:40]!r} needs at least one operand")
        if op == "+" or op == "-":
            coefs, const = self._term(args[0])
            coefs = dict(coefs)
            if op == "-" and len(args) == 1:
                return {k: -v for k, v in coefs.items()}, -const
            sign = 1.0 if op == "+" else -1.0
            for a in args[1:]:
                c2, k2 = self._term(a)
                for k, v in c2.items():
                    coefs[k] = coefs.get(k, 0.0) + sign * v
                const += sign * k2
            return coefs, const
        if op == "*":
            if len(args) < 2:
                raise self.err(node, "'*' expects at least 2 operands")
            coefs: dict | None = None
            factor = 1.0
            const = 0.0
            for a in args:
                c2, k2 = self._term(a)
                if c2:
                    if coefs is not None:
                        raise self.err(a, "a product of variables is not linear (unsupported)")
                    coefs, const = c2, k2
                else:
                    factor *= k2
            if coefs is None:
                return {}, factor
            return {k: v * factor for k, v in coefs.items()}, const * factor
        if op in _COMPARISONS or op == "and" or op == "or":
            raise self.err(node[1], f"expected a term, found the formula operator {op!r}")
        raise self.err(node[1], f"unsupported operator {op[:40]!r} in a term (expected +, -, *)")

    # ---- assemble properties

    def _properties(self, asserts: list, n_in: int, n_out: int) -> list[VnnlibProperty]:
        # Assertions with a single disjunct are common to all disjuncts; only the others are multiplied out.
        common: list = []
        disjunctive: list[list] = [[]]
        for node in asserts:
            part = self._dnf(node)
            if len(part) == 1:
                common.extend(part[0])
            else:
                disjunctive = self._product(disjunctive, part, node)
        n_own = sum(1 for conj in disjunctive if any(atom[0] == 0 for atom in conj))
        n_common_rows = sum(1 for atom in common if atom[0] == 1)
        if len(disjunctive) * n_common_rows > MAX_DNF_ATOMS or n_own * n_in > MAX_DNF_ATOMS:
            raise self.src.error(
                _tix(asserts[-1]), "the property is too large (too many disjuncts, rows or input boxes)"
            )
        base_lo = [-math.inf] * n_in
        base_hi = [math.inf] * n_in
        base_lo_at = [-1] * n_in
        base_hi_at = [-1] * n_in
        common_rows = []
        for atom in common:
            if atom[0] == 0:
                self._apply_bound(atom, base_lo, base_hi, base_lo_at, base_hi_at)
            else:
                common_rows.append(atom)

        # Group the disjuncts by their input box (None: the common box), keeping the order of appearance.
        boxes: dict[object, tuple] = {}
        for conj in disjunctive:
            rows = list(common_rows)
            bounds = []
            for atom in conj:
                (bounds if atom[0] == 0 else rows).append(atom)
            if not bounds:
                key = None
                if key not in boxes:
                    boxes[key] = (base_lo, base_hi, base_lo_at, base_hi_at, [])
            else:
                lo, hi, lo_at, hi_at = list(base_lo), list(base_hi), list(base_lo_at), list(base_hi_at)
                for atom in bounds:
                    self._apply_bound(atom, lo, hi, lo_at, hi_at)
                key = None if lo == base_lo and hi == base_hi else (tuple(lo), tuple(hi))
                if key not in boxes:
                    boxes[key] = (lo, hi, lo_at, hi_at, [])
            boxes[key][4].append(rows)
        out = []
        for lo, hi, lo_at, hi_at, groups in boxes.values():
            self._check_box(lo, hi, lo_at, hi_at)
            out.append(self._property(lo, hi, groups, n_in, n_out))
        return out

    @staticmethod
    def _apply_bound(atom, lo, hi, lo_at, hi_at) -> None:
        _, i, is_upper, val, tix = atom
        if is_upper:
            if hi_at[i] < 0 or val < hi[i]:
                hi[i] = min(val, hi[i])
                hi_at[i] = tix
        elif lo_at[i] < 0 or val > lo[i]:
            lo[i] = max(val, lo[i])
            lo_at[i] = tix

    def _check_box(self, lo, hi, lo_at, hi_at) -> None:
        for i in range(len(lo)):
            if lo_at[i] < 0 or hi_at[i] < 0:
                side = "lower" if lo_at[i] < 0 else "upper"
                raise self.src.error(self.x_decl[i], f"input X_{i} has no {side} bound (every input needs both)")
            if lo[i] > hi[i]:
                a, b = sorted((lo_at[i], hi_at[i]))
                line, col = self.src.where(a)
                raise self.src.error(
                    b, f"empty input box: X_{i} >= {lo[i]!r} and X_{i} <= {hi[i]!r} (other bound at {line}:{col})"
                )

    def _property(self, lo, hi, groups: list[list], n_in: int, n_out: int) -> VnnlibProperty:
        S = sum(max(1, len(g)) for g in groups)
        if S * n_out > MAX_MATRIX:
            raise self.src.error(self.src.end(), f"the property is too large ({S} rows x {n_out} outputs)")
        C = np.zeros((S, n_out), dtype=np.float64)
        d = np.zeros(S, dtype=np.float64)
        group = np.zeros(S, dtype=np.int64)
        s = 0
        for k, rows in enumerate(groups):
            if not rows:  # no output constraint: every point of the box is unsafe; the row 0·y <= 0 always holds
                group[s] = k
                s += 1
                continue
            for _, coefs, dv, _tix in rows:
                for key, v in coefs.items():
                    C[s, -key - 1] = v + 0.0
                d[s] = dv + 0.0
                group[s] = k
                s += 1
        return VnnlibProperty(
            x_lo=torch.tensor(lo, dtype=torch.float64),
            x_hi=torch.tensor(hi, dtype=torch.float64),
            C=torch.from_numpy(C),
            d=torch.from_numpy(d),
            group=torch.from_numpy(group),
            n_inputs=n_in,
            n_outputs=n_out,
        )


def parse_vnnlib(text: str, filename: str = "<string>", n_inputs: int | None = None,
                 n_outputs: int | None = None) -> list[VnnlibProperty]:
    """Parse VNN-LIB text (see the module docstring for the dialect) into one property per distinct input box.

    The file's property holds exactly when every returned property holds (a counterexample to any of them is a
    counterexample to the file). Most files give a single property.

    ``n_inputs`` / ``n_outputs``, when given, must equal the numbers of declared ``X_i`` / ``Y_j``.
    Raises :class:`VnnlibError` (a :class:`RobverifyError`) located at ``filename:line:column``.
    """
    if n_inputs is not None and int(n_inputs) < 1 or n_outputs is not None and int(n_outputs) < 1:
        raise RobverifyError(f"n_inputs and n_outputs must be positive, got {n_inputs} and {n_outputs}")
    # Parsing allocates many small, short-lived objects; the cyclic collector only adds pauses here.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        parser = _Parser(_Source(str(text), str(filename)), None if n_inputs is None else int(n_inputs),
                         None if n_outputs is None else int(n_outputs))
        return parser.parse()
    finally:
        if was_enabled:
            gc.enable()


def read_vnnlib(path: str | os.PathLike, n_inputs: int | None = None,
                n_outputs: int | None = None) -> list[VnnlibProperty]:
    """Read a ``.vnnlib`` (or ``.vnnlib.gz``) file; see :func:`parse_vnnlib`."""
    path = Path(path)
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise RobverifyError(f"cannot read VNN-LIB file {path}: {exc}") from None
    text = raw.decode("utf-8", errors="replace")
    return parse_vnnlib(text, filename=path.name, n_inputs=n_inputs, n_outputs=n_outputs)
