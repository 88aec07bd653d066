"""Batched per-sample critical-epsilon search: the bracket ``[eps_lo, eps_hi]`` of every sample.

Two searches run side by side on each sample and share what they learn:
* the *lower* one keeps ``v`` (largest eps the backend verified) and ``w`` (smallest eps it failed to verify);
  its steps interpolate the bound's property margin between ``v`` and ``w`` (regula falsi with the Illinois
  rule, bisection whenever two steps did not halve the interval), so few bound calls reach ``tol``;
* the *upper* one keeps ``a`` (largest eps the attack failed at) and ``f`` (smallest eps with a counterexample
  re-checked in onnxruntime; in continuous mode the counterexample's own L-inf distance) and bisects.
Each round makes one batched bound call and one batched attack call, each over the samples that need one.
A sample is done when ``f - v <= tol`` (``exact``) or when both searches are within ``tol`` and some eps is
known where the bound failed and the attack failed too (``gap``): when the two searches close without either,
the attack is run where the bound failed (or the bound where the attack failed). ``eps_lo`` is always an eps
that was verified (NaN if not even eps = 0 was), ``eps_hi`` one that was falsified (inf if none). With
``grid``, positions are grid indices and the search is VERONA's search over the epsilon list.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from robverify.backends.base import Backend
from robverify.errors import SoundnessError
from robverify.runs.schema import SweepStatus
from robverify.runs.sweep import SweepSettings
from robverify.spec import Verdict, robustness_spec


#: how an end of a bracket was decided (the ``lo_by`` / ``hi_by`` columns): by the bound, the attack, branch and
#: bound (a deciding backend's search, its own attacks included), or not at all (``eps_lo`` NaN / ``eps_hi`` inf)
DECIDED_BY = ("bound", "attack", "bab", "none")
#: a deciding backend is not started on a sample with less budget left than this (seconds)
MIN_PROBE_S = 1.0
#: where branch and bound probes ``(v, u)`` after its first probe (at the midpoint): a quarter of the way up. A
#: proof costs more the closer eps is to the radius, so short steps up from the last proof spend a fixed budget
#: better than halving (on the demo's source model the probe at 3/4 of a bracket was almost never proved in time)
LATER_PROBE = 0.25
#: bisection rounds of the costlier attack on the upper ends of open brackets (:func:`close_brackets`), and the
#: share of a sample's budget they may use
HUNT_ROUNDS = 4
HUNT_SHARE = 0.25


@dataclass(frozen=True)
class SearchResult:
    """Per sample ``[B]``: ``eps_lo``, ``eps_hi``, ``n_calls`` (bound calls), ``n_attacks``, ``status``
    (``exact``: bracket width within tolerance; ``gap``: bounds and attack left a gap; ``robust``: verified at
    the largest eps searched; ``unverified``: not verified even at eps = 0); ``lo_by``, ``hi_by``: how each end
    was decided (:data:`DECIDED_BY`); ``domains``, ``bab_s``: effort of a deciding backend; ``lo_pos``, ``hi_pos``:
    the ends as search positions (eps, or grid indices with ``-1`` for eps 0; ``inf`` where none)."""

    eps_lo: Tensor
    eps_hi: Tensor
    n_calls: Tensor
    n_attacks: Tensor
    status: list[SweepStatus]
    lo_by: list[str]
    hi_by: list[str]
    domains: Tensor
    bab_s: Tensor
    lo_pos: Tensor
    hi_pos: Tensor


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

    def at(self, lo: Tensor, hi: Tensor, q: Tensor) -> Tensor:
        """The position a fraction ``q`` of the way from ``lo`` to ``hi`` (on a grid: at least one step)."""
        if self.grid is None:
            return lo + q * (hi - lo)
        return lo + torch.clamp(torch.floor(q * (hi - lo)), min=1)

    def open(self, lo: Tensor, hi: Tensor) -> Tensor:
        return (hi - lo > 1) if self.grid is not None else (hi - lo > self.tol)

    def from_distance(self, pos: Tensor, distance: Tensor) -> Tensor:
        return pos if self.grid is not None else torch.minimum(pos, distance)


def _lower_step(scale: _Scale, v: Tensor, mv: Tensor, v2: Tensor, mv2: Tensor, w: Tensor, mw: Tensor,
                slow: Tensor) -> Tensor:
    """Next position of the lower search inside ``(v, w)``: the zero of the margin's chord between ``v`` and
    ``w`` (or of the line through the last two verified points when ``w``'s margin is unknown), else the
    midpoint; kept at least ``tol / 2`` (one grid step) away from both ends."""
    mid = scale.mid(v, w)
    interp_ok = torch.isfinite(mw) & torch.isfinite(mv) & (mv > 0) & (mw <= 0) & (mv > mw)
    interp = v + (w - v) * mv / torch.where(interp_ok, mv - mw, torch.ones_like(mv))
    extrap_ok = ~interp_ok & torch.isfinite(mv2) & torch.isfinite(v2) & (mv2 > mv) & (v > v2)
    extrap = v + mv * (v - v2) / torch.where(extrap_ok, mv2 - mv, torch.ones_like(mv))
    est = torch.where(interp_ok, interp, torch.where(extrap_ok, extrap, mid))
    est = torch.where(slow | ~torch.isfinite(est), mid, est)
    if scale.grid is not None:
        return torch.minimum(torch.maximum(torch.round(est), v + 1), w - 1)
    half = scale.tol / 2
    return torch.minimum(torch.maximum(est, v + half), w - half)


def critical_epsilon(backend: Backend, x: Tensor, label: Tensor, n_classes: int, *, tol: float = 1e-4,
                     grid: Sequence[float] | None = None, eps_max: float = 1.0,
                     domain: tuple[float, float] = (0.0, 1.0),
                     on_round: Callable[[int], None] | None = None) -> SearchResult:
    """Bracket the critical eps of each correctly classified sample ``x`` ``[B, *input_shape]``.

    ``tol``, ``grid`` and ``eps_max`` are a :class:`~robverify.runs.sweep.SweepSettings`' (checked by it)."""
    settings = SweepSettings(tol=tol, grid=None if grid is None else tuple(grid), eps_max=eps_max)
    B = x.shape[0]
    scale = _Scale(settings.tol, settings.grid, settings.eps_max)
    f64 = dict(dtype=torch.float64)
    n_calls = torch.zeros(B, dtype=torch.long)
    n_attacks = torch.zeros(B, dtype=torch.long)
    nan = torch.full((B,), math.nan, **f64)

    def verify(idx: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        n_calls[idx] += 1
        spec = robustness_spec(x[idx], label[idx], scale.eps(pos).to(x.dtype), n_classes, domain)
        result = backend.verify(spec)
        return result.verified, result.margin_lb.to(torch.float64)

    def falsify(idx: Tensor, pos: Tensor) -> tuple[Tensor, Tensor]:
        n_attacks[idx] += 1
        spec = robustness_spec(x[idx], label[idx], scale.eps(pos).to(x.dtype), n_classes, domain)
        result = backend.falsify(spec, x[idx])
        return result.falsified, result.distance

    everyone = torch.arange(B)
    bottom = -1.0 if scale.grid is not None else 0.0
    base_ok, mv = verify(everyone, torch.full((B,), bottom, **f64))
    v = torch.full((B,), bottom, **f64)          # verified position (bottom = eps 0), margin mv
    v2, mv2 = nan.clone(), nan.clone()           # the verified position before v
    w, mw = torch.full((B,), scale.top, **f64), nan.clone()  # position not verified, its margin (nan: unknown)
    a = torch.full((B,), bottom, **f64)          # attack failed here
    f = torch.full((B,), math.inf, **f64)        # falsified position
    gap = torch.zeros(B, dtype=torch.bool)       # some eps where both the bound and the attack failed
    # The attack at the largest eps brackets from above; the bound there may prove the whole range.
    top = torch.full((B,), scale.top, **f64)
    fal, dist = falsify(everyone, top)
    f = torch.where(fal, scale.from_distance(top, dist), f)
    a = torch.where(fal, a, top)
    top_ok = torch.zeros(B, dtype=torch.bool)
    cand = (~fal & base_ok).nonzero().squeeze(1)
    if cand.numel():
        ok, m = verify(cand, top[cand])
        top_ok[cand] = ok
        v2[cand[ok]], mv2[cand[ok]] = v[cand[ok]], mv[cand[ok]]
        v[cand[ok]], mv[cand[ok]] = scale.top, m[ok]
        mw[cand[~ok]] = m[~ok]
        gap[cand[~ok]] = True
    mw = torch.where(f < w, nan, mw)
    w = torch.minimum(w, f)
    mvi, mwi = mv.clone(), mw.clone()            # margins for interpolation (Illinois-scaled)
    last = torch.zeros(B, dtype=torch.int8)      # side the lower search moved last: 1 = v, -1 = w
    width1 = torch.full((B,), math.inf, **f64)   # lower interval width before the last step, and before that
    width2 = torch.full((B,), math.inf, **f64)
    rounds = 0
    while True:
        active = base_ok & ~top_ok & scale.open(v, f)
        lower_open = active & scale.open(v, w)
        upper_open = active & torch.isfinite(f) & scale.open(a, f)
        cross = active & ~lower_open & ~upper_open & ~gap
        attack_at_w, bound_at_a = cross & (a < w), cross & (a >= w)
        # Bound calls wait until the cheaper attack has closed a sample's upper interval: the lower search
        # then starts below the smallest falsified eps, where bounds are cheaper and more likely to succeed.
        step = lower_open & ~upper_open
        if not bool((lower_open | upper_open | cross).any()):
            break
        rounds += 1
        idx = (step | bound_at_a).nonzero().squeeze(1)
        if idx.numel():
            sv, sw = v[idx], w[idx]
            slow = (sw - sv) > 0.5 * width2[idx]
            pos = torch.where(step[idx], _lower_step(scale, sv, mvi[idx], v2[idx], mv2[idx], sw, mwi[idx], slow),
                              a[idx])
            ok, m = verify(idx, pos)
            is_step = step[idx]
            width2[idx] = torch.where(is_step, width1[idx], width2[idx])
            width1[idx] = torch.where(is_step, sw - sv, width1[idx])
            up = ok & (pos > sv)
            down = ~ok & (pos < sw)
            v2[idx] = torch.where(up, sv, v2[idx])
            mv2[idx] = torch.where(up, mv[idx], mv2[idx])
            v[idx] = torch.where(up, pos, sv)
            mv[idx] = torch.where(up, m, mv[idx])
            w[idx] = torch.where(down, pos, sw)
            mw[idx] = torch.where(down, m, mw[idx])
            # Illinois: the end kept twice in a row counts half in the next interpolation.
            prev = last[idx]
            mvi[idx] = torch.where(up, m, torch.where(down & (prev == -1), mvi[idx] / 2, mvi[idx]))
            mwi[idx] = torch.where(down, m, torch.where(up & (prev == 1), mwi[idx] / 2, mwi[idx]))
            last[idx] = torch.where(up, torch.ones_like(prev), torch.where(down, -torch.ones_like(prev), prev))
            gap[idx] = gap[idx] | (bound_at_a[idx] & ~ok)
        a = torch.maximum(a, v)
        upper_open = active & torch.isfinite(f) & scale.open(a, f)
        idx = (upper_open | attack_at_w).nonzero().squeeze(1)
        if idx.numel():
            pos = torch.where(upper_open[idx], scale.mid(a[idx], f[idx]), w[idx])
            fal, dist = falsify(idx, pos)
            f[idx] = torch.where(fal, scale.from_distance(pos, dist), f[idx])
            a[idx] = torch.where(fal, a[idx], torch.maximum(a[idx], pos))
            gap[idx] = gap[idx] | (attack_at_w[idx] & ~fal)
        mw = torch.where(f < w, nan, mw)
        mwi = torch.where(f < w, nan, mwi)
        w = torch.minimum(w, f)
        if on_round is not None:
            on_round(rounds)
    return _result(scale, base_ok, top_ok, v, f, n_calls, n_attacks,
                   ["bound" if bool(ok) else "none" for ok in base_ok],
                   ["attack" if math.isfinite(float(fi)) else "none" for fi in f],
                   torch.zeros(B, dtype=torch.long), torch.zeros(B, dtype=torch.float64))


def _result(scale: _Scale, base_ok: Tensor, top_ok: Tensor, v: Tensor, f: Tensor, n_calls: Tensor,
            n_attacks: Tensor, lo_by: list[str], hi_by: list[str], domains: Tensor, bab_s: Tensor) -> SearchResult:
    """The result of a search that ended at verified positions ``v`` and falsified positions ``f`` ``[B]``; a
    SoundnessError if any sample is falsified at or below an eps it was verified at."""
    B = v.shape[0]
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
            status.append(SweepStatus.UNVERIFIED)
        elif bool(top_ok[i]):
            status.append(SweepStatus.ROBUST)
        elif math.isfinite(float(f[i])) and not bool(scale.open(v[i:i + 1], f[i:i + 1])):
            status.append(SweepStatus.EXACT)
        else:
            status.append(SweepStatus.GAP)
    return SearchResult(eps_lo, eps_hi, n_calls, n_attacks, status, lo_by, hi_by, domains, bab_s, v, f)


def _hunt_upper(backend: Backend, x: Tensor, label: Tensor, n_classes: int, scale: _Scale,
                domain: tuple[float, float], active: Tensor, v: Tensor, f: Tensor, left: Tensor, hi_by: list[str],
                budget: float) -> Tensor:
    """The upper ends first: :meth:`Backend.hunt` bisects ``(a, f)`` for every open sample at once (``a``: the
    largest probe it found nothing at, from ``v``), at most :data:`HUNT_ROUNDS` rounds and
    :data:`HUNT_SHARE` of each sample's budget. A confirmed counterexample moves ``f`` to its own distance
    (``hi_by = attack``). Returns the new ``f``; ``left`` ``[B]`` is charged the wall time, shared by the samples
    of each round."""
    f = f.clone()
    a = v.clone()
    spent = torch.zeros_like(left)
    for _ in range(HUNT_ROUNDS):
        idx = (active & scale.open(a, f) & (spent < HUNT_SHARE * budget)).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        pos = scale.mid(a[idx], f[idx])
        spec = robustness_spec(x[idx], label[idx], scale.eps(pos).to(x.dtype), n_classes, domain)
        began = time.perf_counter()
        got = backend.hunt(spec, x[idx])
        share = (time.perf_counter() - began) / idx.numel()
        spent[idx] += share
        left[idx] -= share
        for j, i in enumerate(idx.tolist()):
            if bool(got.falsified[j]):
                f[i] = scale.from_distance(pos[j:j + 1], got.distance[j:j + 1])[0]
                hi_by[i] = "attack"
            else:
                a[i] = pos[j]
    return f


def close_brackets(backend: Backend, x: Tensor, label: Tensor, n_classes: int, found: SearchResult, *,
                   budget: float, tol: float = 1e-4, grid: Sequence[float] | None = None, eps_max: float = 1.0,
                   domain: tuple[float, float] = (0.0, 1.0)) -> SearchResult:
    """Narrow the brackets that ``found`` (:func:`critical_epsilon` with the bound alone) left as ``gap`` with a
    deciding backend (:meth:`Backend.decide`, e.g. branch and bound), ``budget`` seconds per sample.

    First the upper ends: the backend's costlier attack (:meth:`Backend.hunt`) bisects between ``v`` and ``f``
    (:func:`_hunt_upper`). Then each round asks the backend about every open sample at once, at the midpoint of
    ``(v, u)`` first and :data:`LATER_PROBE` of the way up afterwards (``v`` the largest eps verified, ``u`` the
    smallest eps falsified or left undecided), with half the sample's remaining budget (all of it below
    ``2 * MIN_PROBE_S``). Verified moves ``v`` (``lo_by = bab``); a counterexample (confirmed by
    onnxruntime) moves ``eps_hi`` to its own L-inf distance (grid: the probe) (``hi_by = bab``); an undecided
    probe moves ``u``. A sample stops when its bracket is within ``tol`` (or adjacent grid points), ``u`` meets
    ``v``, or its budget is spent. The settings must be those ``found`` was searched with."""
    settings = SweepSettings(tol=tol, grid=None if grid is None else tuple(grid), eps_max=eps_max)
    scale = _Scale(settings.tol, settings.grid, settings.eps_max)
    B = x.shape[0]
    v, f = found.lo_pos.clone(), found.hi_pos.clone()
    lo_by, hi_by = list(found.lo_by), list(found.hi_by)
    domains, bab_s = found.domains.clone(), found.bab_s.clone()
    base_ok = torch.tensor([s is not SweepStatus.UNVERIFIED for s in found.status], dtype=torch.bool)
    top_ok = torch.tensor([s is SweepStatus.ROBUST for s in found.status], dtype=torch.bool)
    active = torch.tensor([s is SweepStatus.GAP for s in found.status], dtype=torch.bool)
    left = torch.full((B,), float(budget), dtype=torch.float64)
    f = _hunt_upper(backend, x, label, n_classes, scale, domain, active, v, f, left, hi_by, budget)
    u = torch.minimum(f, torch.full_like(f, scale.top))
    probed = torch.zeros(B, dtype=torch.bool)
    while True:
        active &= scale.open(v, u) & scale.open(v, f) & (left >= MIN_PROBE_S)
        idx = active.nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        pos = scale.at(v[idx], u[idx], torch.where(probed[idx], LATER_PROBE, 0.5).to(v.dtype))
        probed[idx] = True
        share = torch.where(left[idx] >= 2 * MIN_PROBE_S, left[idx] / 2, left[idx])
        spec = robustness_spec(x[idx], label[idx], scale.eps(pos).to(x.dtype), n_classes, domain)
        decision = backend.decide(spec, share)
        domains[idx] += decision.domains
        bab_s[idx] += decision.seconds
        left[idx] -= torch.maximum(decision.seconds, share.new_full(share.shape, 1e-3))
        dist = (decision.x_adv.double() - x[idx].detach().cpu().double()).flatten(1).abs().amax(dim=1)
        for j, i in enumerate(idx.tolist()):
            verdict = decision.verdict[j]
            if verdict is Verdict.VERIFIED:
                v[i] = pos[j]
                lo_by[i] = "bab"
            elif verdict is Verdict.FALSIFIED:
                f[i] = scale.from_distance(pos[j:j + 1], dist[j:j + 1])[0]
                u[i] = torch.minimum(u[i], f[i])
                hi_by[i] = "bab"
            else:
                u[i] = pos[j]
    return _result(scale, base_ok, top_ok, v, f, found.n_calls, found.n_attacks, lo_by, hi_by, domains, bab_s)
