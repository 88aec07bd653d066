"""Branch and bound on the input box, for networks with few inputs.

A domain is (problem, sub-box). Sub-boxes are bounded in batches by :func:`robverify.engine.bounds.compute_bounds`
(CROWN by default) and bisected along the input dimension with the largest estimated effect on the bound:
``(|d lb / d lo_i| + |d lb / d hi_i|) * width_i``, the bound's sensitivity to the box edges (through every
intermediate box) times the width that a bisection halves. A sub-box is discarded only when its sound bound of
the problem's conjunction is ``> 0``; the union of the open sub-boxes always covers what is left undecided.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robverify.engine.bounds import BoundOptions, compute_bounds
from robverify.ir.graph import Graph
from robverify.spec import Method, Spec


@dataclass
class Boxes:
    """M sub-boxes: ``problem`` ``[M]``, ``lo``/``hi`` ``[M, *input_shape]``, ``lb`` ``[M]`` (sound bound of the
    problem's conjunction on the box), ``score`` ``[M, n_inputs]`` (branching scores)."""

    problem: Tensor
    lo: Tensor
    hi: Tensor
    lb: Tensor
    score: Tensor

    def __len__(self) -> int:
        return int(self.problem.shape[0])

    def select(self, index: Tensor) -> "Boxes":
        return Boxes(self.problem[index], self.lo[index], self.hi[index], self.lb[index], self.score[index])

    @staticmethod
    def cat(parts: list["Boxes"]) -> "Boxes":
        return Boxes(*(torch.cat([getattr(p, f) for p in parts]) for f in ("problem", "lo", "hi", "lb", "score")))


def bound_boxes(graph: Graph, problems: Spec, problem: Tensor, lo: Tensor, hi: Tensor,
                method: Method = Method.CROWN) -> Boxes:
    """Bound the sub-boxes ``lo``/``hi`` ``[M, *input_shape]`` of the single-conjunction ``problems`` (P specs
    with one group each, see :func:`robverify.engine.bab.split_disjuncts`); ``problem`` ``[M]`` long."""
    sub = problems.select(problem)
    lo = lo.detach().clone().requires_grad_(True)
    hi = hi.detach().clone().requires_grad_(True)
    spec = Spec(lo, hi, sub.C, sub.d, sub.group)
    result = compute_bounds(graph, spec, method, BoundOptions(grad=True))
    lb = result.rows_lb.max(1).values
    g_lo, g_hi = torch.autograd.grad(lb.clamp(max=1e30).sum(), [lo, hi], allow_unused=True)
    g_lo = torch.zeros_like(lo) if g_lo is None else g_lo
    g_hi = torch.zeros_like(hi) if g_hi is None else g_hi
    width = (hi - lo).detach()
    score = ((g_lo.abs() + g_hi.abs()) * width).flatten(1)
    score = torch.where(width.flatten(1) > 0, score + 1e-9 * width.flatten(1), torch.full_like(score, -1.0))
    lb = lb.detach()
    lb = torch.where(torch.isnan(lb), torch.full_like(lb, -torch.inf), lb)
    return Boxes(problem, lo.detach(), hi.detach(), lb, score.detach())


def bisect(boxes: Boxes) -> tuple[Tensor, Tensor, Tensor]:
    """The two halves of every box along its best-scoring dimension: ``(problem [2M], lo, hi [2M, *shape])``."""
    M = len(boxes)
    shape = boxes.lo.shape[1:]
    lo, hi = boxes.lo.flatten(1), boxes.hi.flatten(1)
    dim = boxes.score.argmax(1)
    rows = torch.arange(M, device=lo.device)
    mid = (lo[rows, dim] + hi[rows, dim]) / 2
    left_hi, right_lo = hi.clone(), lo.clone()
    left_hi[rows, dim] = mid
    right_lo[rows, dim] = mid
    problem = torch.cat([boxes.problem, boxes.problem])
    return problem, torch.cat([lo, right_lo]).reshape(2 * M, *shape), torch.cat([left_hi, hi]).reshape(2 * M, *shape)


def input_split_round(graph: Graph, problems: Spec, open_: Boxes, batch: int,
                      method: Method = Method.CROWN) -> tuple[Boxes, Tensor]:
    """Pop the ``batch // 2`` lowest-bound boxes, bisect, bound the halves, keep those with ``lb <= 0``.
    Returns the new open set and the problem ``[n]`` of each box bounded."""
    order = open_.lb.argsort()
    n_par = min(len(open_), max(1, batch // 2))
    pick, rest = order[:n_par], order[n_par:]
    problem, lo, hi = bisect(open_.select(pick))
    children = bound_boxes(graph, problems, problem, lo, hi, method)
    keep = (children.lb <= 0).nonzero().squeeze(1)
    return Boxes.cat([open_.select(rest), children.select(keep)]), children.problem
