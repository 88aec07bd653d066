"""A stronger falsifier than :func:`robverify.engine.attacks.pgd_attack`: batched, diversified PGD.

Every spec is attacked by ``restarts`` copies at once (one batch of ``B * restarts``): copy 0 starts at the given
seed point (or the box centre), the others uniformly at random; each copy first takes ``odi_steps`` output-
diversified steps (ODI, Tashiro et al. 2020: ascend ``w . y`` for a random direction ``w`` in ``[-1, 1]^n_out``),
then signed-gradient steps on the property margin with one of several step schedules (constant, cosine decay,
large-then-small), assigned round-robin over the copies. The result is the best point per spec; it is only a
*candidate*: callers re-check it in onnxruntime (:meth:`robverify.ir.model.LoadedModel.confirm`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robverify.engine.attacks import AttackResult
from robverify.ir.graph import Graph
from robverify.spec import Spec

#: step schedules: the step (as a fraction of the box radius) at progress ``t`` in ``[0, 1)``
SCHEDULES = (
    lambda t: 2.5 / 40,
    lambda t: 0.25 * (1 + math.cos(math.pi * t)) / 2 + 0.005,
    lambda t: 0.5 if t < 0.25 else 0.05,
)


def _repeat(t: Tensor, r: int) -> Tensor:
    """``[B, ...]`` -> ``[B * r, ...]`` (each row ``r`` times, consecutively)."""
    return t.unsqueeze(1).expand(t.shape[0], r, *t.shape[1:]).reshape(t.shape[0] * r, *t.shape[1:])


def diverse_pgd(graph: Graph, spec: Spec, *, restarts: int = 8, steps: int = 50, odi_steps: int = 5,
                starts: Tensor | None = None, seed: int = 0) -> AttackResult:
    """Minimise the property margin over each box with ``restarts`` diversified PGD copies per spec.

    Args:
        spec: B specs (any dtype; moved to the graph's device and dtype).
        starts: optional ``[B, *input_shape]`` seed points (clipped to the box) for copy 0 of every spec.
    Returns:
        :class:`AttackResult` with ``x_adv`` ``[B, *input_shape]`` the best point found per spec, ``margin``
        ``[B]`` its margin in the graph IR and ``found`` ``[B]`` = margin ``<= 0`` (candidates to re-check).
    """
    spec = spec.to(graph.device, graph.dtype)
    B, R = spec.batch_size, max(1, restarts)
    lo, hi = _repeat(spec.x_lo, R), _repeat(spec.x_hi, R)
    rep = Spec(lo, hi, _repeat(spec.C, R), _repeat(spec.d, R), spec.group)
    gen = torch.Generator(device=lo.device).manual_seed(seed)
    x = lo + torch.rand(lo.shape, generator=gen, device=lo.device, dtype=lo.dtype) * (hi - lo)
    first = torch.arange(B, device=lo.device) * R
    x[first] = (spec.x_lo + spec.x_hi) / 2 if starts is None else starts.to(x).reshape(spec.x_lo.shape)
    x = torch.minimum(torch.maximum(x, lo), hi)
    radius = (hi - lo) / 2
    view = (-1,) + (1,) * (x.dim() - 1)
    n_out = spec.C.shape[-1]
    w = torch.rand((B * R, n_out), generator=gen, device=lo.device, dtype=lo.dtype) * 2 - 1
    schedule = torch.arange(B * R, device=lo.device) % len(SCHEDULES)
    with torch.no_grad():
        best_m = rep.output_margin(graph.logits(x))
    best_x = x.clone()
    total = odi_steps + steps
    for k in range(total):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = graph.logits(x)
            margin = rep.output_margin(y)
            objective = -(w * y).sum(1) if k < odi_steps else margin
            (grad,) = torch.autograd.grad(objective.sum(), x)
        with torch.no_grad():
            better = margin.detach() < best_m
            best_m = torch.where(better, margin.detach(), best_m)
            best_x = torch.where(better.view(view), x.detach(), best_x)
            if k >= odi_steps and bool((best_m.view(B, R).amin(1) < 0).all()):
                break
            if k < odi_steps:
                size = torch.ones(B * R, dtype=lo.dtype, device=lo.device)
            else:
                t = (k - odi_steps) / max(1, steps)
                size = torch.tensor([f(t) for f in SCHEDULES], dtype=lo.dtype, device=lo.device)[schedule]
            x = x - size.view(view) * radius * grad.sign()
            x = torch.minimum(torch.maximum(x, lo), hi)
    with torch.no_grad():
        margin = rep.output_margin(graph.logits(x))
        better = margin < best_m
        best_m = torch.where(better, margin, best_m)
        best_x = torch.where(better.view(view), x, best_x)
    per = best_m.view(B, R)
    pick = per.argmin(1)
    idx = torch.arange(B, device=lo.device) * R + pick
    return AttackResult(best_x[idx], per.gather(1, pick.unsqueeze(1)).squeeze(1), per.amin(1) <= 0)
