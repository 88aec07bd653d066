"""Training objectives: ``standard``, ``pgd`` (Madry), ``trades``, the certified ``ibp`` / ``crown-ibp`` and
(in :mod:`trainers.certified`) ``sabr``, ``mtl-ibp`` and ``ibp-shi``.

An objective maps ``(model, x [B, C, H, W], y [B], progress)`` to a scalar loss (see :class:`trainers.loop.Objective`).
Certified objectives bound the model through :func:`robverify.ir.from_module.from_module` and
:func:`robverify.engine.bounds.compute_bounds` with ``grad=True``, so the bounds' gradients reach the module's parameters.
Their schedule is the usual one (Gowal et al. 2018; Zhang et al. 2020): natural training during ``warmup``
(a fraction of all steps), then eps grows linearly to its target over ``ramp``, while the natural-loss weight
``kappa`` falls from 1 to ``kappa_end`` and, for ``crown-ibp``, the weight of the CROWN-IBP bound against the IBP
bound falls from 1 to 0. BatchNorm layers enter the bounds with their running statistics (``from_module``'s
inference semantics) while the natural loss sees batch statistics.
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robverify.engine.bounds import BoundOptions, compute_bounds
from robverify.enums import parse_enum
from robverify.errors import RobverifyError
from robverify.ir.from_module import from_module
from robverify.spec import Method, robustness_spec
from trainers.adversarial import pgd_examples, trades_examples
from trainers.loop import Objective
from trainers.schedules import Schedule

__all__ = ["CERTIFIED_METHODS", "Hyper", "TrainMethod", "certified_loss", "make_objective", "robust_cross_entropy"]


class TrainMethod(str, enum.Enum):
    """How a model is trained on its task."""

    STANDARD = "standard"
    PGD = "pgd"
    TRADES = "trades"
    IBP = "ibp"
    CROWN_IBP = "crown-ibp"
    SABR = "sabr"  # trainers.certified: IBP on a small box around a PGD point (Mueller et al. 2023)
    MTL_IBP = "mtl-ibp"  # trainers.certified: PGD and IBP losses, convex combination (De Palma et al. 2024)
    IBP_SHI = "ibp-shi"  # trainers.certified: IBP with Shi et al. 2021's initialisation and regularisers

    @classmethod
    def parse(cls, value: "str | TrainMethod") -> "TrainMethod":
        return parse_enum(cls, value, "training method")

    @property
    def adversarial(self) -> bool:
        return self is not TrainMethod.STANDARD

    @property
    def certified(self) -> bool:
        return self in CERTIFIED_METHODS


CERTIFIED_METHODS = (TrainMethod.IBP, TrainMethod.CROWN_IBP, TrainMethod.SABR, TrainMethod.MTL_IBP,
                     TrainMethod.IBP_SHI)


@dataclass(frozen=True)
class Hyper:
    """Hyper-parameters of the trainers (all optional keyword arguments of the pipeline)."""

    lr: float = 1e-3
    batch_size: int = 128
    attack_steps: int = 10  # PGD / TRADES steps during training
    attack_alpha: float = 2.5  # step size = attack_alpha * eps / attack_steps
    trades_beta: float = 6.0
    warmup: float = 0.1  # certified: fraction of steps of natural training
    ramp: float = 0.5  # certified: fraction of steps over which eps grows linearly
    kappa_end: float = 0.5  # certified: final weight of the natural loss
    rank: int = 4  # lora: rank of the adapters
    rift_radius: float = 0.1  # rift: relative weight-perturbation radius of the criticality probe
    adv: str = "pgd"  # adversarial strategies: pgd or trades
    certified: str = "crown-ibp"  # certified-ft: a certified method (ibp, crown-ibp, sabr, mtl-ibp, ibp-shi)
    schedule: str = "constant"  # learning-rate schedule (trainers.schedules)
    sabr_lambda: float = 0.4  # sabr: radius of the propagated box as a fraction of eps, in (0, 1]
    mtl_alpha: float = 0.5  # mtl-ibp: weight of the IBP loss against the PGD loss, in [0, 1]
    ibp_init: bool | None = None  # Shi et al. initialisation when training from scratch; None: for ibp-shi only
    ibp_reg: float = 0.5  # ibp-shi: weight of the tightness + ReLU-balance regularisers at eps = 0

    @classmethod
    def parse(cls, hyper: dict[str, Any]) -> "Hyper":
        """Validate user keyword arguments; unknown names and bad values are one-line errors."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(hyper) - set(known))
        if unknown:
            raise RobverifyError(f"unknown hyper-parameter {unknown[0]!r}: expected one of {', '.join(known)}")
        values = {**asdict(cls()), **hyper}
        for name in ("batch_size", "attack_steps", "rank"):
            v = values[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise RobverifyError(f"{name}: expected a positive integer, got {v!r}")
        for name in ("lr", "attack_alpha", "trades_beta", "warmup", "ramp", "kappa_end", "rift_radius",
                     "sabr_lambda", "mtl_alpha", "ibp_reg"):
            v = values[name]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise RobverifyError(f"{name}: expected a non-negative number, got {v!r}")
            values[name] = float(v)
        if values["lr"] <= 0:
            raise RobverifyError(f"lr: expected a positive number, got {values['lr']!r}")
        if values["warmup"] + values["ramp"] > 1 or values["kappa_end"] > 1:
            raise RobverifyError("warmup + ramp and kappa_end must each be at most 1")
        if values["adv"] not in ("pgd", "trades"):
            raise RobverifyError(f"adv: expected pgd or trades, got {values['adv']!r}")
        certified = [m.value for m in CERTIFIED_METHODS]
        if values["certified"] not in certified:
            raise RobverifyError(f"certified: expected one of {', '.join(certified)}, got {values['certified']!r}")
        values["schedule"] = Schedule.parse(values["schedule"]).value
        if not 0 < values["sabr_lambda"] <= 1:
            raise RobverifyError(f"sabr_lambda: expected a number in (0, 1], got {values['sabr_lambda']!r}")
        if values["mtl_alpha"] > 1:
            raise RobverifyError(f"mtl_alpha: expected a number in [0, 1], got {values['mtl_alpha']!r}")
        if values["ibp_init"] is not None and not isinstance(values["ibp_init"], bool):
            raise RobverifyError(f"ibp_init: expected true, false or none, got {values['ibp_init']!r}")
        return cls(**values)

    def uses_ibp_init(self, method: TrainMethod) -> bool:
        """Whether a model trained from scratch with ``method`` starts from Shi et al.'s IBP initialisation."""
        return self.ibp_init if self.ibp_init is not None else method is TrainMethod.IBP_SHI

    def for_method(self, method: TrainMethod) -> dict[str, Any]:
        """The hyper-parameters ``method`` reads (for the model card)."""
        keys = ["lr", "batch_size", "schedule"]
        if method in (TrainMethod.PGD, TrainMethod.TRADES, TrainMethod.SABR, TrainMethod.MTL_IBP):
            keys += ["attack_steps", "attack_alpha"]
        if method is TrainMethod.TRADES:
            keys.append("trades_beta")
        if method.certified:
            keys += ["warmup", "ramp"] + ([] if method is TrainMethod.MTL_IBP else ["kappa_end"])
        keys += {TrainMethod.SABR: ["sabr_lambda"], TrainMethod.MTL_IBP: ["mtl_alpha"],
                 TrainMethod.IBP_SHI: ["ibp_reg"]}.get(method, [])
        return {k: getattr(self, k) for k in keys}


def robust_cross_entropy(rows_lb: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """Cross-entropy of the worst-case logits: ``rows_lb`` [B, n-1] lower-bounds ``y_c - y_j`` for the other
    classes ``j`` in ascending order (the rows of :func:`robverify.spec.robustness_spec`); ``y`` [B] -> scalar."""
    others = torch.stack([torch.cat([torch.arange(c), torch.arange(c + 1, n_classes)]) for c in range(n_classes)])
    index = others.to(y.device)[y]  # [B, n-1]
    worst = torch.zeros(y.shape[0], n_classes, dtype=rows_lb.dtype, device=rows_lb.device)
    worst = worst.scatter(1, index, -rows_lb)
    return F.cross_entropy(worst, y)


def certified_loss(model: nn.Module, x: Tensor, y: Tensor, eps: float, n_classes: int,
                   crown_weight: float = 0.0) -> Tensor:
    """Robust cross-entropy of the IBP bound mixed with ``crown_weight`` of the CROWN-IBP bound (with autograd
    into ``model``'s parameters). ``x`` [B, C, H, W] in [0, 1], ``y`` [B] -> scalar."""
    graph = from_module(model, tuple(x.shape[1:]))  # rebuilt per step: BatchNorm folding follows the weights
    spec = robustness_spec(x, y, eps, n_classes)
    options = BoundOptions(grad=True, intersect_ibp=False, safety=0.0)
    rows = compute_bounds(graph, spec, Method.IBP, options).rows_lb
    if crown_weight > 0:
        crown = compute_bounds(graph, spec, Method.CROWN_IBP, options).rows_lb
        rows = crown_weight * crown + (1.0 - crown_weight) * rows
    return robust_cross_entropy(rows, y, n_classes)


@dataclass(frozen=True)
class _Standard:
    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        return F.cross_entropy(model(x), y)


@dataclass(frozen=True)
class _Pgd:
    eps: float
    steps: int
    alpha: float

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        x_adv = pgd_examples(model, x, y, self.eps, steps=self.steps, alpha=self.alpha)
        return F.cross_entropy(model(x_adv), y)


@dataclass(frozen=True)
class _Trades:
    eps: float
    steps: int
    alpha: float
    beta: float

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        x_adv = trades_examples(model, x, self.eps, steps=self.steps, alpha=self.alpha)
        logits = model(x)
        robust = F.kl_div(F.log_softmax(model(x_adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust


@dataclass(frozen=True)
class _Certified:
    eps: float
    n_classes: int
    crown: bool
    warmup: float
    ramp: float
    kappa_end: float

    def schedule(self, progress: float) -> tuple[float, float, float]:
        """(eps, natural-loss weight kappa, CROWN-IBP weight) at ``progress`` in [0, 1]."""
        if progress < self.warmup:
            t = 0.0
        elif self.ramp <= 0:
            t = 1.0
        else:
            t = min(1.0, (progress - self.warmup) / self.ramp)
        crown_weight = (1.0 - t) if self.crown else 0.0
        return t * self.eps, 1.0 - t * (1.0 - self.kappa_end), crown_weight

    def robust(self, model: nn.Module, x: Tensor, y: Tensor, eps: float, crown_weight: float) -> Tensor:
        """The robust loss at radius ``eps`` (subclasses in :mod:`trainers.certified` replace it)."""
        return certified_loss(model, x, y, eps, self.n_classes, crown_weight)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        eps, kappa, crown_weight = self.schedule(progress)
        natural = F.cross_entropy(model(x), y)
        if eps <= 0 or kappa >= 1:
            return natural
        robust = self.robust(model, x, y, eps, crown_weight)
        return kappa * natural + (1.0 - kappa) * robust


def make_objective(method: TrainMethod | str, eps: float, n_classes: int, hyper: Hyper) -> Objective:
    """The loss of ``method`` at training radius ``eps`` (pixel space, L-inf) for ``n_classes`` logits."""
    method = TrainMethod.parse(method)
    if method is TrainMethod.STANDARD:
        return _Standard()
    if method is TrainMethod.PGD:
        return _Pgd(eps, hyper.attack_steps, hyper.attack_alpha)
    if method is TrainMethod.TRADES:
        return _Trades(eps, hyper.attack_steps, hyper.attack_alpha, hyper.trades_beta)
    if method in (TrainMethod.SABR, TrainMethod.MTL_IBP, TrainMethod.IBP_SHI):
        from trainers.certified import certified_objective  # it builds on _Certified: imported here, not above

        return certified_objective(method, eps, n_classes, hyper)
    return _Certified(eps, n_classes, method is TrainMethod.CROWN_IBP, hyper.warmup, hyper.ramp, hyper.kappa_end)
