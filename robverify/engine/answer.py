"""Answer one ONNX + VNN-LIB instance like a VNN-COMP tool (``robverify verify``).

Within the time limit: PGD first (cheap, finds most counterexamples), then bounds of increasing cost
(IBP, CROWN-IBP, CROWN, alpha-CROWN, up to the method asked for), then PGD on every disjunct on its own with
several step sizes (at most :data:`ATTACK_SHARE` of the limit), then branch and bound for the time left
(:func:`robverify.engine.complete.complete_verify`: beta-CROWN ReLU splits, or input splits on networks with at
most :data:`SPLIT_MAX_INPUTS` inputs, with diversified attacks seeded from the hardest domains). ``unsat`` rests
only on sound bounds; ``sat`` only on a counterexample that onnxruntime confirms against the file's float64 box
and rows. Running out of time gives ``timeout``; ``unknown`` only when the search space is exhausted without a
decision (domains no split can refine, or the memory budget of open domains spent).
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
from robverify.engine.bounds import BoundOptions, compute_bounds
from robverify.engine.complete import CompleteOptions, complete_verify
from robverify.ir.model import LoadedModel
from robverify.spec import Method, Spec, Verdict
from robverify.formats.vnncomp_result import Result

#: input splitting (instead of ReLU splitting) in branch and bound on networks with at most this many inputs
SPLIT_MAX_INPUTS = 16
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
            margin = float(compute_bounds(model.graph, item.spec, m, BoundOptions(deadline=clock.deadline)
                                          ).margin_lb[0])
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
    # 4. branch and bound (ReLU splits, or input splits for few inputs) with attacks, for the time left
    options = CompleteOptions(input_split_max=SPLIT_MAX_INPUTS, seed=seed)
    for item in items:
        if item.proved:
            continue
        if clock.left() <= 0:
            return done(Result.TIMEOUT, "bab", "time limit reached before branch and bound")
        outcome = complete_verify(model, item.spec, attack=item.inner if item.inner is not None else item.spec,
                                  exact=item.exact, timeout=clock.left(), deadline=clock.deadline, options=options)
        verdict, stage = outcome.verdict[0], f"bab-{outcome.mode}"
        effort = f"{int(outcome.domains[0])} domains"
        if verdict is Verdict.FALSIFIED:
            return done(Result.SAT, stage, f"counterexample found in branch and bound ({effort}), confirmed by "
                        "onnxruntime", outcome.x_adv[0])
        if verdict is Verdict.TIMEOUT:
            return done(Result.TIMEOUT, stage, f"time limit reached in branch and bound ({effort})")
        item.proved = verdict is Verdict.VERIFIED
        item.seen.append(f"{stage}: {outcome.reason[0]} ({effort})")
    if all(i.proved for i in items):
        return done(Result.UNSAT, "bab", "every branch-and-bound domain bounded > 0")
    open_bounds = "; ".join(s for i in items if not i.proved for s in i.seen[-1:])
    return done(Result.UNKNOWN, "", f"no bound proved the property ({open_bounds}) and PGD found no counterexample")
