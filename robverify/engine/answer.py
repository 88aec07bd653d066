"""Answer one ONNX + VNN-LIB instance like a VNN-COMP tool (``robverify verify``).

Within the time limit: PGD first (cheap, finds most counterexamples), then bounds of increasing cost
(IBP, CROWN-IBP, CROWN, alpha-CROWN, up to the method asked for), then PGD on every disjunct on its own with
several step sizes (at most :data:`ATTACK_SHARE` of the limit), then, for networks with at most
:data:`SPLIT_MAX_INPUTS` inputs, input splitting with CROWN on the sub-boxes. ``unsat`` rests only on sound
bounds; ``sat`` only on a counterexample that onnxruntime confirms against the file's float64 box and rows.
Running out of time gives ``timeout``; running out of methods gives ``unknown``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from robverify.formats.vnnlib_read import VnnlibProperty, read_vnnlib
from robverify.engine.attacks import pgd_attack
from robverify.engine.bounds import compute_bounds
from robverify.ir.model import LoadedModel
from robverify.spec import Method, Spec
from robverify.formats.vnncomp_result import Result

#: input splitting is tried on networks with at most this many inputs
SPLIT_MAX_INPUTS = 16
#: boxes bounded per CROWN call while splitting, and the most boxes kept open
SPLIT_BATCH = 1024
SPLIT_MAX_OPEN = 200_000
#: (steps, restarts) of the attacks per disjunct after the bounds failed; PGD's step is 2.5 * radius / steps
ATTACK_SCHEDULE = ((10, 5), (20, 5), (40, 5), (10, 10), (20, 10), (80, 5))
#: share of the time limit the attacks after the bounds may use
ATTACK_SHARE = 0.15


@dataclass(frozen=True)
class Answer:
    """The answer to one instance: ``result``; for ``sat`` the counterexample ``x`` ``[*input_shape]``
    (float32) and onnxruntime's outputs ``y`` ``[n_outputs]``; ``stage`` (what decided), ``reason``, ``seconds``."""

    result: Result
    x: Tensor | None = None
    y: Tensor | None = None
    stage: str = ""
    reason: str = ""
    seconds: float = 0.0


@dataclass
class _Open:
    """One property of the file still to be decided: ``spec`` (float32, box rounded outward, for bounds),
    ``exact`` (float64, the file's box and rows, for the judge) and ``inner`` (float32 box inside the file's box,
    where counterexamples are searched)."""

    spec: Spec
    exact: Spec
    inner: Spec | None
    proved: bool = False
    seen: list[str] = field(default_factory=list)


def _inner_box(prop: VnnlibProperty, shape: tuple[int, ...]) -> Spec | None:
    """Float32 box of the points inside the file's float64 box (None when it holds no float32 point)."""
    lo32, hi32 = prop.x_lo.to(torch.float32), prop.x_hi.to(torch.float32)
    lo32 = torch.where(lo32.double() < prop.x_lo, torch.nextafter(lo32, torch.full_like(lo32, math.inf)), lo32)
    hi32 = torch.where(hi32.double() > prop.x_hi, torch.nextafter(hi32, torch.full_like(hi32, -math.inf)), hi32)
    if bool((lo32 > hi32).any()):
        return None
    return Spec(lo32.reshape(1, *shape), hi32.reshape(1, *shape), prop.C.to(torch.float32).unsqueeze(0),
                prop.d.to(torch.float32).unsqueeze(0), prop.group.clone())


class _Clock:
    def __init__(self, start: float, timeout: float) -> None:
        self.start, self.deadline = start, start + timeout

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start


def _attack(model: LoadedModel, item: _Open, steps: int, restarts: int, seed: int,
            per_group: bool = False) -> Tensor | None:
    """A counterexample ``[1, *input_shape]`` that onnxruntime confirms against the exact property, or None.

    ``per_group``: attack every disjunct on its own (a batch of one spec per disjunct), which follows each
    disjunct's gradient instead of only the currently smallest one."""
    if item.inner is None:
        return None
    spec = per_group_spec(item.inner) if per_group else item.inner
    result = pgd_attack(model.graph, spec, steps=steps, restarts=restarts, seed=seed)
    # confirm every final point, even one whose margin the IR puts at 0 (rounding)
    return _first_confirmed(model, item, result.x_adv.detach().cpu())


def _first_confirmed(model: LoadedModel, item: _Open, xs: Tensor) -> Tensor | None:
    """The first of the candidates ``xs`` ``[n, *input_shape]`` that onnxruntime confirms against the exact
    property (float64 box and rows), as ``[1, *input_shape]``; None if none is."""
    n = xs.shape[0]
    exact = Spec(item.exact.x_lo.expand(n, *item.exact.x_lo.shape[1:]),
                 item.exact.x_hi.expand(n, *item.exact.x_hi.shape[1:]), item.exact.C.expand(n, -1, -1),
                 item.exact.d.expand(n, -1), item.exact.group)
    ok = model.confirm(exact, xs, torch.ones(n, dtype=torch.bool))
    return xs[ok.nonzero()[0]] if bool(ok.any()) else None


def per_group_spec(spec: Spec) -> Spec:
    """A batch of one spec per disjunct of ``spec`` (batch of one): in copy ``k`` the rows of the other
    disjuncts become ``0·y <= -1e30``, which never holds, so copy ``k``'s unsafe region (and margin) is
    disjunct ``k``'s alone."""
    K = spec.n_groups
    group = spec.group.to(spec.C.device)
    keep = group.unsqueeze(0) == torch.arange(K, device=group.device).unsqueeze(1)  # [K, S]
    C = torch.where(keep.unsqueeze(-1), spec.C.expand(K, -1, -1), torch.zeros_like(spec.C))
    d = torch.where(keep, spec.d.expand(K, -1), torch.full_like(spec.d.expand(K, -1), -1e30))
    return Spec(spec.x_lo.expand(K, *spec.x_lo.shape[1:]), spec.x_hi.expand(K, *spec.x_hi.shape[1:]), C, d,
                spec.group)


def _ladder(method: Method) -> list[Method]:
    order = [Method.IBP, Method.CROWN_IBP, Method.CROWN, Method.ALPHA_CROWN]
    return order[: order.index(method) + 1]


def _split(model: LoadedModel, item: _Open, clock: _Clock, seed: int) -> tuple[str, Tensor | None]:
    """Input splitting: bisect the widest input of every box CROWN cannot prove, attacking the open boxes
    as it goes. ``("unsat", None)``, ``("sat", x)``, ``("timeout", None)`` or ``("unknown", None)``."""
    spec = item.spec
    lo, hi = spec.x_lo.flatten(1), spec.x_hi.flatten(1)
    shape = spec.x_lo.shape[1:]
    C, d = spec.C, spec.d
    rounds = 0
    while lo.shape[0]:
        if clock.left() <= 0:
            return "timeout", None
        if lo.shape[0] > SPLIT_MAX_OPEN:
            return "unknown", None
        batch_lo, batch_hi = lo[:SPLIT_BATCH], hi[:SPLIT_BATCH]
        n = batch_lo.shape[0]
        sub = Spec(batch_lo.reshape(n, *shape), batch_hi.reshape(n, *shape), C.expand(n, -1, -1),
                   d.expand(n, -1), spec.group)
        margin = compute_bounds(model.graph, sub, Method.CROWN).margin_lb.detach().cpu()
        keep = margin <= 0
        rounds += 1
        if rounds % 8 == 0 and bool(keep.any()) and item.inner is not None:
            found = _attack_boxes(model, item, sub.select(keep.nonzero().squeeze(1)), seed + rounds)
            if found is not None:
                return "sat", found
        open_lo, open_hi = batch_lo[keep], batch_hi[keep]
        width = open_hi - open_lo
        dim = width.argmax(dim=1)
        rows = torch.arange(open_lo.shape[0])
        mid = (open_lo[rows, dim] + open_hi[rows, dim]) / 2
        left_hi, right_lo = open_hi.clone(), open_lo.clone()
        left_hi[rows, dim] = mid
        right_lo[rows, dim] = mid
        lo = torch.cat([lo[SPLIT_BATCH:], open_lo, right_lo])
        hi = torch.cat([hi[SPLIT_BATCH:], left_hi, open_hi])
    return "unsat", None


def _attack_boxes(model: LoadedModel, item: _Open, boxes: Spec, seed: int) -> Tensor | None:
    """PGD in open sub-boxes, clipped to the inner box; a confirmed counterexample or None."""
    inner = item.inner
    lo = torch.maximum(boxes.x_lo, inner.x_lo)
    hi = torch.minimum(boxes.x_hi, inner.x_hi)
    hi = torch.maximum(hi, lo)
    sub = Spec(lo, hi, boxes.C, boxes.d, boxes.group)
    result = pgd_attack(model.graph, sub, steps=20, restarts=1, seed=seed)
    if not bool(result.found.any()):
        return None
    idx = result.found.nonzero().squeeze(1)
    return _first_confirmed(model, item, result.x_adv[idx].detach().cpu())


def answer_instance(model: LoadedModel, vnnlib: str | Path, *, timeout: float = 60.0,
                    method: Method | str = Method.ALPHA_CROWN, seed: int = 0, start: float | None = None) -> Answer:
    """Decide the property of ``vnnlib`` on ``model`` within ``timeout`` seconds counted from ``start``
    (``time.perf_counter()``; default now). Bad files raise :class:`~robverify.errors.RobverifyError`."""
    method = Method.parse(method)
    clock = _Clock(time.perf_counter() if start is None else start, float(timeout))
    shape = tuple(model.graph.input_shape)
    props = read_vnnlib(vnnlib, n_inputs=math.prod(shape), n_outputs=model.graph.n_outputs)

    def done(result: Result, stage: str, reason: str = "", x: Tensor | None = None) -> Answer:
        y = None
        if x is not None:
            x = x.reshape(shape).to(torch.float32)
            y = torch.from_numpy(model.runtime.logits(x.unsqueeze(0))[0])
        return Answer(result, x, y, stage, reason, clock.elapsed())

    items = [_Open(p.to_spec(shape, torch.float32), p.to_spec(shape, torch.float64), _inner_box(p, shape))
             for p in props]
    # 1. attack: the box centre, then PGD; its time per step and restart prices the later attacks
    unit = 0.0
    for item in items:
        began = time.perf_counter()
        x = _attack(model, item, steps=40, restarts=3, seed=seed)
        unit = max(unit, (time.perf_counter() - began) / 120)
        if x is not None:
            return done(Result.SAT, "attack", "PGD counterexample confirmed by onnxruntime", x)
        if clock.left() <= 0:
            return done(Result.TIMEOUT, "attack", "time limit reached while attacking")
    # 2. bounds of increasing cost
    for m in _ladder(method):
        for item in items:
            if item.proved:
                continue
            if clock.left() <= 0:
                return done(Result.TIMEOUT, m.value, f"time limit reached before {m.value}")
            margin = float(compute_bounds(model.graph, item.spec, m).margin_lb[0])
            item.proved = margin > 0
            item.seen.append(f"{m.value} {margin:.3g}")
        if all(i.proved for i in items):
            return done(Result.UNSAT, m.value, f"{m.value} bound > 0")
    # 3. attacks per disjunct with fresh seeds and step sizes, while their estimated cost fits the budget
    budget_end = time.perf_counter() + min(clock.left(), ATTACK_SHARE * float(timeout))
    for item in items:
        if item.proved:
            continue
        for k, (steps, restarts) in enumerate(ATTACK_SCHEDULE):
            cost = unit * steps * restarts * max(1, item.spec.n_groups)
            if time.perf_counter() + cost > budget_end:
                break
            x = _attack(model, item, steps=steps, restarts=restarts, seed=seed + 1 + k, per_group=True)
            if x is not None:
                return done(Result.SAT, "attack", "PGD counterexample confirmed by onnxruntime", x)
        if clock.left() <= 0:
            return done(Result.TIMEOUT, "attack", "time limit reached while attacking")
    n_inputs = math.prod(shape)
    for item in items:
        if item.proved:
            continue
        if n_inputs <= SPLIT_MAX_INPUTS:
            outcome, x = _split(model, item, clock, seed)
            if outcome == "sat":
                return done(Result.SAT, "split", "counterexample in a sub-box, confirmed by onnxruntime", x)
            if outcome == "timeout":
                return done(Result.TIMEOUT, "split", "time limit reached while splitting the input box")
            item.proved = outcome == "unsat"
    if all(i.proved for i in items):
        return done(Result.UNSAT, "split", "CROWN bound > 0 on every sub-box")
    open_bounds = "; ".join(s for i in items if not i.proved for s in i.seen[-1:])
    return done(Result.UNKNOWN, "", f"no bound proved the property ({open_bounds}) and PGD found no counterexample")
