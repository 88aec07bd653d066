"""VNN-LIB 1.0 property files: write local-robustness properties and general specs.

:func:`write_robustness_vnnlib` writes the local-robustness property ``box = clip(x ± eps, domain)``, unsafe if
some ``Y_j >= Y_label`` (one2any, VERONA's shape) or ``Y_target >= Y_label`` (one2one).
:func:`write_spec_vnnlib` writes one sample of a general :class:`~robverify.spec.Spec`.
Numbers are written in positional notation with the shortest digits that read back as the same float64, so the
box read back is never smaller than the intended one (for robustness properties the written box is the union of
the float64 box ``clip(float64(x) ± eps)`` and the float32 box that :func:`robverify.spec.robustness_spec`
computes, so it contains both, also after a float32 cast). Files are written atomically (temp file + rename).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robverify.errors import RobverifyError
from robverify.files import atomic_write_text
from robverify.spec import Spec

__all__ = ["write_robustness_vnnlib", "write_spec_vnnlib"]


def _num(v: float) -> str:
    """Shortest positional decimal that reads back (``float(text)``) as exactly ``v``."""
    v = float(v)
    if not math.isfinite(v):
        raise RobverifyError(f"cannot write a non-finite number ({v}) to VNN-LIB")
    if v == 0.0:
        return "0.0"
    text = np.format_float_positional(v, unique=True, trim="0")
    if float(text) != v:  # never expected; repr always round-trips
        text = repr(v)
    return text


def _lower_text(v: float) -> str:
    """Text ``t`` with ``float(t) <= v``."""
    text = _num(v)
    while float(text) > v:  # only if _num ever stopped round-tripping
        v = math.nextafter(v, -math.inf)
        text = _num(v)
    return text


def _upper_text(v: float) -> str:
    """Text ``t`` with ``float(t) >= v``."""
    text = _num(v)
    while float(text) < v:
        v = math.nextafter(v, math.inf)
        text = _num(v)
    return text


def _comment_lines(comment: str | None) -> list[str]:
    if not comment:
        return []
    return ["; " + line.rstrip() if line.strip() else ";" for line in str(comment).replace("\r", "").split("\n")]


def _declarations(n_in: int, n_out: int) -> list[str]:
    lines = [f"(declare-const X_{i} Real)" for i in range(n_in)]
    lines.append("")
    lines += [f"(declare-const Y_{j} Real)" for j in range(n_out)]
    return lines


def _box_lines(lo: np.ndarray, hi: np.ndarray) -> list[str]:
    lines = ["; Input constraints:"]
    for i, (a, b) in enumerate(zip(lo.tolist(), hi.tolist())):
        lines.append(f"(assert (<= X_{i} {_upper_text(b)}))")
        lines.append(f"(assert (>= X_{i} {_lower_text(a)}))")
        lines.append("")
    return lines


def write_robustness_vnnlib(path: str | os.PathLike, x: Tensor, label: int, eps: float, n_classes: int,
                            domain: tuple[float, float] = (0.0, 1.0), target: int | None = None,
                            comment: str | None = None) -> Path:
    """Write the local-robustness property of one sample ``x`` (``[*in]`` or ``[1, *in]``).

    Box: ``clip(x ± eps, domain)`` per flattened input, written so that it contains both the float64 box computed
    from the float32 values of ``x`` and the float32 box of :func:`robverify.spec.robustness_spec`.
    Untargeted (one2any): unsafe if ``Y_j >= Y_label`` for some ``j != label``; targeted (one2one): unsafe if
    ``Y_target >= Y_label``. Returns the path written.
    """
    x = torch.as_tensor(x).detach().cpu()
    if not x.is_floating_point():
        x = x.to(torch.float32)
    n_classes = int(n_classes)
    label = int(label)
    if n_classes < 2:
        raise RobverifyError(f"n_classes must be at least 2, got {n_classes}")
    if not 0 <= label < n_classes:
        raise RobverifyError(f"label {label} is out of range for {n_classes} classes")
    if target is not None:
        target = int(target)
        if not 0 <= target < n_classes or target == label:
            raise RobverifyError(f"target {target} must be a class in 0..{n_classes - 1} other than the label {label}")
    eps = float(eps)
    if not math.isfinite(eps) or eps < 0:
        raise RobverifyError(f"eps must be a finite non-negative number, got {eps}")
    dom_lo, dom_hi = float(domain[0]), float(domain[1])
    if not (math.isfinite(dom_lo) and math.isfinite(dom_hi)) or dom_lo > dom_hi:
        raise RobverifyError(f"domain must be a finite interval (lo <= hi), got {domain}")
    flat = x.reshape(-1)
    if flat.numel() == 0:
        raise RobverifyError("cannot write a property for an empty input")
    if not bool(torch.isfinite(flat).all()):
        raise RobverifyError("the input contains NaN or infinite values")

    # The float64 box from the float32 values, and the box robustness_spec computes in the input's dtype.
    x64 = flat.to(torch.float64).numpy()
    lo64 = np.clip(x64 - eps, dom_lo, dom_hi)
    hi64 = np.clip(x64 + eps, dom_lo, dom_hi)
    spec_lo = torch.clamp(flat - torch.tensor(eps, dtype=flat.dtype), dom_lo, dom_hi).to(torch.float64).numpy()
    spec_hi = torch.clamp(flat + torch.tensor(eps, dtype=flat.dtype), dom_lo, dom_hi).to(torch.float64).numpy()
    lo = np.minimum(lo64, spec_lo)
    hi = np.maximum(hi64, spec_hi)
    # Read back in float32 (nearest), the box must still contain the float32 intended bounds.
    f32 = np.float32
    lo32_ok = lo.astype(f32) <= np.minimum(lo64.astype(f32), spec_lo.astype(f32))
    hi32_ok = hi.astype(f32) >= np.maximum(hi64.astype(f32), spec_hi.astype(f32))
    lo = np.where(lo32_ok, lo, np.nextafter(lo.astype(np.float32), np.float32(-np.inf)).astype(np.float64))
    hi = np.where(hi32_ok, hi, np.nextafter(hi.astype(np.float32), np.float32(np.inf)).astype(np.float64))

    kind = f"targeted (one2one), target {target}" if target is not None else "untargeted (one2any)"
    lines = [
        "; Local robustness property written by robverify.",
        f"; label: {label}, eps: {eps!r}, domain: [{dom_lo!r}, {dom_hi!r}], {kind}",
        f"; inputs: {flat.numel()} (flattened), outputs: {n_classes}; unsafe if another class scores >= the label",
        *_comment_lines(comment),
        "",
        *_declarations(flat.numel(), n_classes),
        "",
        *_box_lines(lo, hi),
        "; Output constraints:",
    ]
    if target is not None:
        lines.append(f"(assert (>= Y_{target} Y_{label}))")
    else:
        lines.append("(assert (or")
        lines += [f"    (and (>= Y_{j} Y_{label}))" for j in range(n_classes) if j != label]
        lines.append("))")
    return atomic_write_text(path, "\n".join(lines) + "\n")


def _row_text(coefs: np.ndarray, d: float) -> str:
    nz = [j for j, c in enumerate(coefs.tolist()) if c != 0.0]
    if d == 0.0 and len(nz) == 2 and sorted(coefs[nz].tolist()) == [-1.0, 1.0]:
        a, b = (nz[0], nz[1]) if coefs[nz[0]] == 1.0 else (nz[1], nz[0])
        return f"(<= Y_{a} Y_{b})"  # y_a - y_b <= 0
    terms = [f"(* {_num(coefs[j])} Y_{j})" for j in nz] or ["(* 0.0 Y_0)"]
    lhs = terms[0] if len(terms) == 1 else "(+ " + " ".join(terms) + ")"
    return f"(<= {lhs} {_num(d)})"


def write_spec_vnnlib(path: str | os.PathLike, spec: Spec, index: int = 0, comment: str | None = None) -> Path:
    """Write sample ``index`` of ``spec``: its box and ``OR_k AND_{s in k} C[s]·y <= d[s]`` (exact coefficients).

    A single group with a single row is written as a plain ``(assert (<= ...))``; otherwise the canonical
    ``(assert (or (and ...) (and ...)))``. Returns the path written.
    """
    B = spec.batch_size
    if not -B <= int(index) < B:
        raise RobverifyError(f"spec index {index} is out of range for a batch of {B}")
    index = int(index) % B
    lo = spec.x_lo[index].detach().cpu().reshape(-1).to(torch.float64).numpy()
    hi = spec.x_hi[index].detach().cpu().reshape(-1).to(torch.float64).numpy()
    C = spec.C[index].detach().cpu().to(torch.float64).numpy()
    d = spec.d[index].detach().cpu().to(torch.float64).numpy()
    group = spec.group.detach().cpu().tolist()
    if lo.size == 0:
        raise RobverifyError("cannot write a spec with no inputs")
    if C.shape[0] == 0 or C.shape[1] == 0:
        raise RobverifyError("cannot write a spec without output constraints or outputs")
    if not (np.isfinite(lo).all() and np.isfinite(hi).all()):
        raise RobverifyError("cannot write a spec whose box is not finite")
    if not (np.isfinite(C).all() and np.isfinite(d).all()):
        raise RobverifyError("cannot write a spec with non-finite constraint coefficients")
    groups: dict[int, list[int]] = {}
    for s, g in enumerate(group):
        groups.setdefault(int(g), []).append(s)
    ordered = [groups[g] for g in sorted(groups)]
    n_in, n_out = lo.size, C.shape[1]
    lines = [
        "; Property written by robverify (write_spec_vnnlib).",
        f"; inputs: {n_in} (flattened), outputs: {n_out}; unsafe region: OR of {len(ordered)} conjunction(s) of "
        f"{C.shape[0]} linear row(s) C.y <= d",
        *_comment_lines(comment),
        "",
        *_declarations(n_in, n_out),
        "",
        *_box_lines(lo, hi),
        "; Output constraints:",
    ]
    if len(ordered) == 1 and len(ordered[0]) == 1:
        s = ordered[0][0]
        lines.append(f"(assert {_row_text(C[s], float(d[s]))})")
    else:
        lines.append("(assert (or")
        for rows in ordered:
            lines.append("    (and " + " ".join(_row_text(C[s], float(d[s])) for s in rows) + ")")
        lines.append("))")
    return atomic_write_text(path, "\n".join(lines) + "\n")
