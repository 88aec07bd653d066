"""Falsifiers on the graph IR: PGD with random restarts on the spec's property margin."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robverify.ir.graph import Graph
from robverify.ir.layout import fit_spec, in_layout_of
from robverify.spec import Spec


@dataclass(frozen=True)
class AttackResult:
    """``x_adv`` ``[B, *input_shape]`` inside the box; ``margin`` ``[B]`` its property margin in the IR;
    ``found`` ``[B]``: margin < 0 (a candidate counterexample, still to be re-checked in onnxruntime)."""

    x_adv: Tensor
    margin: Tensor
    found: Tensor


def pgd_attack(graph: Graph, spec: Spec, *, steps: int = 40, restarts: int = 3, alpha: float = 2.5,
               seed: int = 0) -> AttackResult:
    """Minimise the property margin over each sample's box by signed-gradient steps.

    The first restart starts at the box centre, the others uniformly at random (seeded). Step size per input
    element: ``alpha * radius / steps``. Samples stop moving once their margin is negative; a restart ends
    when all of its samples have. Boxes ``[B, *graph.input_shape]`` or the natural batch of
    :mod:`robverify.ir.layout` (``x_adv`` comes back in the layout given); any other shape: RobverifyError.
    """
    given = spec.x_lo
    spec = fit_spec(graph, spec).to(graph.device, graph.dtype)
    lo, hi = spec.x_lo, spec.x_hi
    step = alpha * (hi - lo) / 2 / max(steps, 1)
    gen = torch.Generator(device=lo.device).manual_seed(seed)
    with torch.no_grad():
        best_x = (lo + hi) / 2
        best_m = spec.output_margin(graph.logits(best_x))
    for restart in range(restarts):
        active = best_m >= 0
        if not bool(active.any()):
            break
        idx = active.nonzero().squeeze(1)
        sub = spec.select(idx)
        s_lo, s_hi, s_step = lo[idx], hi[idx], step[idx]
        if restart == 0:
            x = (s_lo + s_hi) / 2
        else:
            u = torch.rand(s_lo.shape, generator=gen, device=lo.device, dtype=lo.dtype)
            x = s_lo + u * (s_hi - s_lo)
        for _ in range(steps):
            x = x.detach().requires_grad_(True)
            with torch.enable_grad():
                margin = sub.output_margin(graph.logits(x))
                (grad,) = torch.autograd.grad(margin.sum(), x)
            with torch.no_grad():
                better = margin.detach() < best_m[idx]
                best_m[idx] = torch.where(better, margin.detach(), best_m[idx])
                best_x[idx] = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x.detach(), best_x[idx])
                still = margin.detach() >= 0
                if not bool(still.any()):
                    break
                moving = still.view(-1, *([1] * (x.dim() - 1)))
                x = torch.where(moving, x - s_step * grad.sign(), x)
                x = torch.minimum(torch.maximum(x, s_lo), s_hi)
        with torch.no_grad():
            margin = sub.output_margin(graph.logits(x))
            better = margin < best_m[idx]
            best_m[idx] = torch.where(better, margin, best_m[idx])
            best_x[idx] = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x, best_x[idx])
    return AttackResult(in_layout_of(best_x, given), best_m, best_m < 0)
