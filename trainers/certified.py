"""Certified training beyond CROWN-IBP: ``sabr``, ``mtl-ibp`` and ``ibp-shi``, on the eps schedule of ``ibp``.

All three keep :class:`trainers.objectives._Certified`'s schedule (natural training during ``warmup``, then eps
grows linearly to its target over ``ramp``) and get every bound from the house engine with autograd
(:func:`robverify.engine.bounds.compute_bounds` with ``BoundOptions(grad=True)``, or the IR ops' own ``interval``
rules for the per-layer boxes the regularisers read).

* ``sabr`` -- Mueller, Eckert, Fischer & Vechev, "Certified Training: Small Boxes are All You Need", ICLR 2023.
  PGD finds ``x'`` in the eps-box; the box of radius ``tau = sabr_lambda * eps`` centred at ``x'`` projected so
  that the box lies inside the eps-box and ``[0, 1]`` is bounded by IBP; robust cross-entropy of that bound.
  Mixed with the natural loss by ``kappa`` like ``ibp`` (the paper trains on the robust loss alone after the
  ramp: ``kappa_end = 0``). Not implemented: the paper's ReLU "shrinking" option.
* ``mtl-ibp`` -- De Palma, Bunel, Dvijotham, Kumar, Stanforth & Lomuscio, "Expressive Losses for Verified
  Robustness via Convex Combinations", ICLR 2024: ``(1 - alpha) CE(f(x_pgd), y) + alpha RCE(IBP bound)`` at the
  current eps, ``alpha = mtl_alpha``; natural cross-entropy during warmup; no ``kappa`` mixing (as in the paper).
* ``ibp-shi`` -- Shi, Wang, Zhang, Yi & Hsieh, "Fast Certified Robust Training with Short Warmup", NeurIPS 2021:
  the ``ibp`` loss plus, while eps ramps up (``0 < eps_t < eps``), ``lambda (L_tightness + L_relu)`` with
  ``lambda = ibp_reg * (1 - eps_t / eps)``; models trained from scratch start from :func:`ibp_initialise`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robverify.engine.bounds import BoundOptions, compute_bounds
from robverify.ir.from_module import from_module
from robverify.ir.graph import Graph
from robverify.ops import Relu
from robverify.spec import Method, robustness_spec
from trainers.adversarial import pgd_examples
from trainers.objectives import Hyper, TrainMethod, _Certified, robust_cross_entropy

__all__ = ["SHI_TOLERANCE", "box_cross_entropy", "certified_objective", "ibp_initialise", "interval_boxes",
           "mtl_ibp_loss", "preactivation_boxes", "relu_balance_loss", "sabr_box", "shi_regulariser",
           "tightness_loss"]

Box = tuple[Tensor, Tensor]

#: tau of Shi et al.'s regularisers (their default 0.5): a layer is penalised when its interval grows past
#: 1 / tau times the input's, or when its active / inactive ReLU statistics differ by more than that ratio
SHI_TOLERANCE = 0.5

_GRAD = BoundOptions(grad=True, intersect_ibp=False, safety=0.0)


# ------------------------------------------------------------------------------------------------ bounds


def box_cross_entropy(model: nn.Module, lo: Tensor, hi: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """Robust cross-entropy of the IBP bound over the boxes ``[lo, hi]`` ``[B, C, H, W]`` (autograd into
    ``model``), ``y`` [B] -> scalar."""
    graph = from_module(model, tuple(lo.shape[1:]))
    spec = replace(robustness_spec(lo, y, 0.0, n_classes), x_lo=lo, x_hi=hi)
    return robust_cross_entropy(compute_bounds(graph, spec, Method.IBP, _GRAD).rows_lb, y, n_classes)


def interval_boxes(graph: Graph, lo: Tensor, hi: Tensor) -> dict[str, Box]:
    """IBP box ``[B, *shape]`` of every node (and the input) of ``graph`` over ``[lo, hi]``, with autograd: the
    ops' own ``interval`` rules in topological order (what the engine's IBP pass does)."""
    boxes = {graph.input_name: (lo, hi)}
    for node in graph.nodes:
        boxes[node.name] = node.op.interval(*(boxes[i] for i in node.inputs))
    return boxes


def preactivation_boxes(graph: Graph, boxes: dict[str, Box]) -> list[Box]:
    """The boxes entering the ReLU nodes, in topological order."""
    return [boxes[node.inputs[0]] for node in graph.nodes if isinstance(node.op, Relu)]


def _reference_width(graph: Graph, boxes: dict[str, Box]) -> Tensor:
    """Mean half-width of the box entering the first mixing (Linear / Conv) node: the normalised input's."""
    first = next((node for node in graph.nodes if node.op.mixing), None)
    lo, hi = boxes[first.inputs[0] if first is not None else graph.input_name]
    return ((hi - lo) / 2).mean()


# ------------------------------------------------------------------------------------------------ SABR


def sabr_box(model: nn.Module, x: Tensor, y: Tensor, eps: float, lam: float, *, steps: int = 10,
             alpha: float = 2.5) -> Box:
    """SABR's propagation region (Mueller et al. 2023, Sec. 3): ``x'`` = PGD in the eps-box ``[lb, ub]`` =
    ``clip(x -+ eps, 0, 1)``; radius ``tau = min(lam * eps, (ub - lb) / 2)`` per pixel; centre
    ``clip(x', lb + tau, ub - tau)``. ``x`` [B, C, H, W] -> ``(lo, hi)`` [B, C, H, W] with
    ``lb <= lo <= hi <= ub``, detached."""
    lb, ub = torch.clamp(x - eps, 0.0, 1.0), torch.clamp(x + eps, 0.0, 1.0)
    tau = torch.minimum(torch.full_like(x, lam * eps), (ub - lb) / 2)
    x_adv = pgd_examples(model, x, y, eps, steps=steps, alpha=alpha)
    centre = torch.minimum(torch.maximum(x_adv, lb + tau), ub - tau)
    lo = torch.minimum(torch.maximum(centre - tau, lb), ub)  # rounding never leaves the eps-box
    hi = torch.maximum(torch.minimum(centre + tau, ub), lo)
    return lo.detach(), hi.detach()


@dataclass(frozen=True)
class _Sabr(_Certified):
    sabr_lambda: float
    steps: int
    alpha: float

    def robust(self, model: nn.Module, x: Tensor, y: Tensor, eps: float, crown_weight: float) -> Tensor:
        lo, hi = sabr_box(model, x, y, eps, self.sabr_lambda, steps=self.steps, alpha=self.alpha)
        return box_cross_entropy(model, lo, hi, y, self.n_classes)


# ------------------------------------------------------------------------------------------------ MTL-IBP


def mtl_ibp_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float, n_classes: int, mtl_alpha: float, *,
                 steps: int = 10, alpha: float = 2.5) -> Tensor:
    """MTL-IBP (De Palma et al. 2024, Eq. 4): ``(1 - mtl_alpha) CE(f(x_pgd), y) + mtl_alpha RCE(IBP)`` over the
    eps-box; a term whose weight is 0 is not computed. ``x`` [B, C, H, W], ``y`` [B] -> scalar."""
    loss = x.new_zeros(())
    if mtl_alpha < 1:
        x_adv = pgd_examples(model, x, y, eps, steps=steps, alpha=alpha)
        loss = loss + (1.0 - mtl_alpha) * F.cross_entropy(model(x_adv), y)
    if mtl_alpha > 0:
        lo, hi = torch.clamp(x - eps, 0.0, 1.0), torch.clamp(x + eps, 0.0, 1.0)
        loss = loss + mtl_alpha * box_cross_entropy(model, lo, hi, y, n_classes)
    return loss


@dataclass(frozen=True)
class _MtlIbp(_Certified):
    mtl_alpha: float
    steps: int
    alpha: float

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        eps = self.schedule(progress)[0]
        if eps <= 0:
            return F.cross_entropy(model(x), y)
        return mtl_ibp_loss(model, x, y, eps, self.n_classes, self.mtl_alpha, steps=self.steps, alpha=self.alpha)


# ------------------------------------------------------------------------------------------------ Shi et al.


def _penalty(ratio: Tensor, tol: float) -> Tensor:
    """``ReLU(tol - ratio) / tol``: 0 when ``ratio >= tol``, 1 when ``ratio = 0``."""
    return F.relu(tol - ratio) / tol


def _balance(a: Tensor, b: Tensor) -> Tensor:
    """``min(a / b, b / a)`` for ``a, b >= 0`` (0 when either is 0)."""
    return torch.minimum(a, b) / torch.maximum(a, b).clamp(min=1e-12)


def tightness_loss(pre: list[Box], reference: Tensor, tol: float = SHI_TOLERANCE) -> Tensor:
    """Shi et al. 2021's ``L_tightness``, per layer then averaged: ``mean_i ReLU(tol - r0 / r_i) / tol``, with
    ``r_i`` the mean half-width of pre-activation box ``i`` and ``r0`` the input's (``reference``). 0 while no
    layer's interval is wider than ``r0 / tol``."""
    terms = [_penalty(reference / ((hi - lo) / 2).mean().clamp(min=1e-12), tol) for lo, hi in pre]
    return torch.stack(terms).mean() if terms else reference.new_zeros(())


def relu_balance_loss(pre: list[Box], tol: float = SHI_TOLERANCE) -> Tensor:
    """Shi et al. 2021's ``L_relu``, per layer then averaged: with ``c`` the box centres ``[B, *shape]`` and
    ``A`` / ``I`` the surely active (``lo > 0``) / inactive (``hi < 0``) neurons, the penalty of
    ``min ratio`` of ``mean(c * A)`` to ``-mean(c * I)`` plus that of ``sum((c - mean c)^2 * A)`` to the same
    sum over ``I``. 0 when both sides balance within ``tol``; up to 2 when one side is empty."""
    terms = []
    for lo, hi in pre:
        c = (lo + hi) / 2
        active, inactive = (lo > 0).to(c.dtype), (hi < 0).to(c.dtype)
        spread = (c - c.mean()) ** 2
        means = _balance((c * active).mean(), -(c * inactive).mean())
        variances = _balance((spread * active).sum(), (spread * inactive).sum())
        terms.append(_penalty(means, tol) + _penalty(variances, tol))
    return torch.stack(terms).mean() if terms else torch.zeros(())


def shi_regulariser(model: nn.Module, x: Tensor, eps: float, tol: float = SHI_TOLERANCE) -> Tensor:
    """``L_tightness + L_relu`` (Shi et al. 2021, Sec. 3.3) of the IBP boxes over ``clip(x -+ eps, 0, 1)``
    ``[B, C, H, W]``, with autograd into ``model``; 0 for a model without ReLUs."""
    graph = from_module(model, tuple(x.shape[1:]))
    lo, hi = torch.clamp(x - eps, 0.0, 1.0), torch.clamp(x + eps, 0.0, 1.0)
    boxes = interval_boxes(graph, lo, hi)
    pre = preactivation_boxes(graph, boxes)
    if not pre:
        return x.new_zeros(())
    return tightness_loss(pre, _reference_width(graph, boxes), tol) + relu_balance_loss(pre, tol)


@dataclass(frozen=True)
class _IbpShi(_Certified):
    reg: float

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        loss = super().__call__(model, x, y, progress)
        eps = self.schedule(progress)[0]
        weight = self.reg * (1.0 - eps / self.eps) if self.eps > 0 else 0.0
        if eps <= 0 or weight <= 0:
            return loss
        return loss + weight * shi_regulariser(model, x, eps)


@torch.no_grad()
def ibp_initialise(model: nn.Module, seed: int = 0) -> int:
    """Shi et al. 2021's IBP initialisation (Sec. 3.2), in place: every ``nn.Linear`` / ``nn.Conv2d`` weight
    drawn from ``N(0, sigma^2)`` with ``sigma = sqrt(2 pi) / fan_in`` (fan_in = in_features, or
    in_channels / groups * kernel area), biases 0. Then ``E|w| fan_in = 2``: an affine layer doubles the mean
    interval width, which the ReLU after it roughly halves, so IBP widths stay level with depth. Returns the
    number of layers initialised. Seeded by ``seed`` (a private generator; the global RNG is untouched)."""
    generator = torch.Generator().manual_seed(seed)
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for layer in layers:
        fan_in = math.prod(layer.weight.shape[1:])
        sigma = math.sqrt(2 * math.pi) / fan_in
        draw = torch.randn(layer.weight.shape, generator=generator, dtype=layer.weight.dtype)
        layer.weight.copy_(draw.to(layer.weight.device) * sigma)
        if layer.bias is not None:
            layer.bias.zero_()
    return len(layers)


# ------------------------------------------------------------------------------------------------ factory


def certified_objective(method: TrainMethod, eps: float, n_classes: int, hyper: Hyper) -> _Certified:
    """The objective of ``sabr``, ``mtl-ibp`` or ``ibp-shi`` (see the module docstring)."""
    base = (eps, n_classes, False, hyper.warmup, hyper.ramp, hyper.kappa_end)
    if method is TrainMethod.SABR:
        return _Sabr(*base, hyper.sabr_lambda, hyper.attack_steps, hyper.attack_alpha)
    if method is TrainMethod.MTL_IBP:
        return _MtlIbp(*base, hyper.mtl_alpha, hyper.attack_steps, hyper.attack_alpha)
    if method is TrainMethod.IBP_SHI:
        return _IbpShi(*base, hyper.ibp_reg)
    raise ValueError(f"not a trainers.certified method: {method}")
