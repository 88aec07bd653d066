"""Batched per-sample critical-epsilon search: the bracket ``[eps_lo, eps_hi]`` of every sample.

Two bisections run side by side on each sample and share what they learn:
* the *lower* one keeps ``v`` (largest eps the backend verified) and ``w`` (smallest eps it failed to verify);
* the *upper* one keeps ``a`` (largest eps the attack failed at) and ``f`` (smallest eps with a counterexample
  re-checked in onnxruntime; in continuous mode the counterexample's own L-inf distance).
Each round makes one batched bound call for the samples whose lower interval is open and one batched attack
call for those whose upper interval is open. ``eps_lo`` is always an eps that was verified (NaN if not even
eps = 0 was), ``eps_hi`` one that was falsified (inf if none). With ``grid``, positions are grid indices and
the search is VERONA's binary search over the epsilon list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from robverify.backends.base import Backend
from robverify.errors import RobverifyError, SoundnessError
from robverify.spec import robustness_spec


@dataclass(frozen=True)
class SearchResult:
    """Per sample ``[B]``: ``eps_lo``, ``eps_hi``, ``n_calls`` (bound calls), ``n_attacks``, ``status``
    (``exact``: bracket width within tolerance; ``gap``: bounds and attack left a gap; ``robust``: verified at
    the largest eps searched; ``unverified``: not verified even at eps = 0)."""

    eps_lo: Tensor
    eps_hi: Tensor
    n_calls: Tensor
    n_attacks: Tensor
    status: list[str]


class _Scale:
    """Positions <-> eps values: identity (continuous) or indices into a sorted grid."""

    def __init__(self, tol: float, grid: Sequence[float] | None, eps_max: float) -> None:
        self.grid = None if grid is None else torch.tensor(sorted(set(float(g) for g in grid)), dtype=torch.float64)
        self.tol = tol
        self.top = float(len(self.grid) - 1) if self.grid is not None else eps_max

    def eps(self, pos: Tensor) -> Tensor:
        if self.grid is None:
            return pos
        return self.grid[pos.long().clamp(min=0)]

    def mid(self, lo: Tensor, hi: Tensor) -> Tensor:
        return torch.floor((lo + hi) / 2) if self.grid is not None else (lo + hi) / 2

    def open(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (hi - lo > 1) if self.grid is not None else (hi - lo > self.tol)

    def from_distance(self, pos: Tensor, distance: Tensor) -> Tensor:
        return pos if self.grid is not None else torch.minimum(pos, distance)


def parse_grid(text: str) -> list[float]:
    """``START:STOP:STEP`` (inclusive of START and of STOP when reached) or ``e1,e2,...``."""
    try:
        if ":" in text:
            start, stop, step = (float(t) for t in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            n = int(math.floor((stop - start) / step + 1e-9)) + 1
            values = [round(start + i * step, 12) for i in range(n)]
        else:
            values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise RobverifyError(f"--grid: expected START:STOP:STEP or a comma list of numbers, got {text!r}") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise RobverifyError(f"--grid: expected non-negative finite eps values, got {text!r}")
    return values


def critical_epsilon(backend: Backend, x: Tensor, label: Tensor, n_classes: int, *, tol: float = 1e-4,
                     grid: Sequence[float] | None = None, eps_max: float = 1.0,
                     domain: tuple[float, float] = (0.0, 1.0),
                     on_round: Callable[[int], None] | None = None) -> SearchResult:
    """Bracket the critical eps of each correctly classified sample ``x`` ``[B, *input_shape]``."""
    if not tol > 0:
        raise RobverifyError(f"--tol must be > 0, got {tol}")
    B = x.shape[0]
    scale = _Scale(tol, grid, eps_max)
    f64 = dict(dtype=torch.float64)
    n_calls = torch.zeros(B, dtype=torch.long)
    n_attacks = torch.zeros(B, dtype=torch.long)

    def verify(idx: Tensor, eps: Tensor) -> Tensor:
        n_calls[idx] += 1
        spec = robustness_spec(x[idx], label[idx], eps.to(x.dtype), n_classes, domain)
        return backend.verify(spec).verified

    def falsify(idx: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        n_attacks[idx] += 1
        spec = robustness_spec(x[idx], label[idx], eps.to(x.dtype), n_classes, domain)
        result = backend.falsify(spec, x[idx])
        return result.falsified, result.distance

    everyone = torch.arange(B)
    base_ok = verify(everyone, torch.zeros(B, **f64))
    bottom = -1.0 if scale.grid is not None else 0.0
    v = torch.full((B,), bottom, **f64)          # verified position (bottom = eps 0)
    w = torch.full((B,), scale.top, **f64)       # position not verified (top: not yet tried)
    a = torch.full((B,), bottom, **f64)          # attack failed here
    f = torch.full((B,), math.inf, **f64)        # falsified position
    top_checked = torch.zeros(B, dtype=torch.bool)
    # The attack at the largest eps brackets from above; the bound there may prove the whole range.
    fal, dist = falsify(everyone, scale.eps(torch.full((B,), scale.top, **f64)))
    f = torch.where(fal, scale.from_distance(torch.full((B,), scale.top, **f64), dist), f)
    top_ok = torch.zeros(B, dtype=torch.bool)
    cand = (~fal & base_ok).nonzero().squeeze(1)
    if cand.numel():
        ok = verify(cand, scale.eps(torch.full((cand.numel(),), scale.top, **f64)))
        top_ok[cand] = ok
        v[cand[ok]] = scale.top
    top_checked[:] = True
    a = torch.where(fal, a, torch.full_like(a, scale.top))
    w = torch.where(top_ok, w, torch.minimum(w, f))
    rounds = 0
    while True:
        lower_open = base_ok & ~top_ok & scale.open(v, w)
        upper_open = torch.isfinite(f) & scale.open(a, f)
        if not bool(lower_open.any() or upper_open.any()):
            break
        rounds += 1
        # Bound calls wait until the cheaper attack has closed a sample's upper interval: the lower search
        # then starts below the smallest falsified eps, where bounds are cheaper and more likely to succeed.
        idx = (lower_open & ~upper_open).nonzero().squeeze(1)
        if idx.numel():
            mid = scale.mid(v[idx], w[idx])
            ok = verify(idx, scale.eps(mid))
            v[idx] = torch.where(ok, mid, v[idx])
            w[idx] = torch.where(ok, w[idx], mid)
        a = torch.maximum(a, v)
        upper_open = torch.isfinite(f) & scale.open(a, f)
        idx = upper_open.nonzero().squeeze(1)
        if idx.numel():
            mid = scale.mid(a[idx], f[idx])
            fal, dist = falsify(idx, scale.eps(mid))
            f[idx] = torch.where(fal, scale.from_distance(mid, dist), f[idx])
            a[idx] = torch.where(fal, a[idx], mid)
        w = torch.minimum(w, f)
        if on_round is not None:
            on_round(rounds)
    eps_lo = torch.where(base_ok, scale.eps(v) if scale.grid is None else torch.where(
        v >= 0, scale.eps(v), torch.zeros_like(v)), torch.full_like(v, math.nan))
    eps_hi = torch.where(torch.isfinite(f), scale.eps(torch.nan_to_num(f, posinf=0.0)),
                         torch.full_like(f, math.inf))
    bad = base_ok & (eps_hi <= eps_lo)
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise SoundnessError(f"sample {i}: verified at {float(eps_lo[i])} but falsified at {float(eps_hi[i])}")
    status = []
    for i in range(B):
        if not bool(base_ok[i]):
            status.append("unverified")
        elif bool(top_ok[i]):
            status.append("robust")
        elif math.isfinite(float(f[i])) and not bool(scale.open(v[i:i + 1], f[i:i + 1])):
            status.append("exact")
        else:
            status.append("gap")
    return SearchResult(eps_lo, eps_hi, n_calls, n_attacks, status)
