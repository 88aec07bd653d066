"""TWINS (Liu, Xu, Ji and Chan, "TWINS: A Fine-Tuning Framework for Improved Transferability of Adversarial
Robustness and Generalization", CVPR 2023).

Two networks share every weight except their BatchNorm layers: the *Frozen Net* normalises with the population
mean and variance of the pre-training data (kept fixed), the *Adaptive Net* with batch statistics (its own running
statistics, initialised from the pre-trained ones). Both BatchNorm branches keep their own affine parameters
(initialised from the pre-trained ones, both trainable: the paper's networks share all weights but the BN layers,
and the reference code trains every parameter). Each step attacks the Adaptive Net, splits the adversarial batch
in two halves and feeds the first to the Frozen Net and the second to the Adaptive Net:
``loss = lambda * L(frozen, first half) + L(adaptive, second half)`` (lambda = :data:`TWINS_LAMBDA`). Only the
Adaptive Net is used at inference, so :func:`keep_adaptive_branch` turns the model back into a plain
:class:`~trainers.zoo.BlockNet` with the adaptive BatchNorm layers.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from trainers.adversarial import pgd_examples, trades_examples
from trainers.objectives import Hyper, TrainMethod
from trainers.zoo import BlockNet

__all__ = ["TWINS_LAMBDA", "TwinBatchNorm", "add_twin_batchnorm", "keep_adaptive_branch", "set_branch", "twins_loss"]

#: weight of the Frozen Net's loss (the reference code's ``lambda_twins``)
TWINS_LAMBDA = 1.0
FROZEN, ADAPTIVE = "frozen", "adaptive"


class TwinBatchNorm(nn.Module):
    """A BatchNorm layer with two branches: ``frozen`` (the pre-trained running statistics, never updated; own
    affine) and ``adaptive`` (a plain BatchNorm copy: batch statistics in training). ``branch`` picks one."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm) -> None:
        super().__init__()
        self.frozen = copy.deepcopy(bn)
        self.adaptive = copy.deepcopy(bn)
        self.branch = ADAPTIVE

    def forward(self, x: Tensor) -> Tensor:
        if self.branch == ADAPTIVE:
            return self.adaptive(x)
        f = self.frozen
        return F.batch_norm(x, f.running_mean, f.running_var, f.weight, f.bias, training=False, eps=f.eps)


def _replace_batchnorm(module: nn.Module) -> int:
    count = 0
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            setattr(module, name, TwinBatchNorm(child))
            count += 1
        else:
            count += _replace_batchnorm(child)
    return count


def add_twin_batchnorm(model: BlockNet) -> int:
    """Replace every BatchNorm layer of the blocks by a :class:`TwinBatchNorm` (in place); their number."""
    return _replace_batchnorm(model.blocks)


def set_branch(model: nn.Module, branch: str) -> None:
    """Route every :class:`TwinBatchNorm` of ``model`` through ``branch`` (``frozen`` or ``adaptive``)."""
    for m in model.modules():
        if isinstance(m, TwinBatchNorm):
            m.branch = branch


def keep_adaptive_branch(model: nn.Module) -> None:
    """Replace every :class:`TwinBatchNorm` by its adaptive BatchNorm (in place): the Adaptive Net, a plain model."""
    for name, child in model.named_children():
        if isinstance(child, TwinBatchNorm):
            setattr(model, name, child.adaptive)
        else:
            keep_adaptive_branch(child)


@dataclass(frozen=True)
class _TwinsLoss:
    trades: bool
    eps: float
    steps: int
    alpha: float
    beta: float

    def _branch_loss(self, model: nn.Module, x: Tensor, x_adv: Tensor, y: Tensor) -> Tensor:
        logits_adv = model(x_adv)
        if not self.trades:
            return F.cross_entropy(logits_adv, y)
        logits = model(x)
        robust = F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits, dim=1), reduction="batchmean")
        return F.cross_entropy(logits, y) + self.beta * robust

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        """``x`` [B, C, H, W], ``y`` [B] -> scalar. Batches under 4 go whole through both branches (a BatchNorm
        in training mode needs two samples per half)."""
        set_branch(model, ADAPTIVE)
        if self.trades:
            x_adv = trades_examples(model, x, self.eps, steps=self.steps, alpha=self.alpha)
        else:
            x_adv = pgd_examples(model, x, y, self.eps, steps=self.steps, alpha=self.alpha)
        half = len(y) // 2 if len(y) >= 4 else len(y)
        first, second = slice(0, half), slice(len(y) - half if len(y) < 4 else half, len(y))
        try:
            set_branch(model, FROZEN)
            frozen = self._branch_loss(model, x[first], x_adv[first], y[first])
        finally:
            set_branch(model, ADAPTIVE)
        adaptive = self._branch_loss(model, x[second], x_adv[second], y[second])
        return TWINS_LAMBDA * frozen + adaptive


def twins_loss(method: TrainMethod, eps: float, hyper: Hyper) -> _TwinsLoss:
    """TWINS' loss with the adversarial examples of ``method`` (``pgd``: Madry; ``trades``: TRADES, the paper's
    two variants) at radius ``eps``."""
    return _TwinsLoss(method is TrainMethod.TRADES, eps, hyper.attack_steps, hyper.attack_alpha, hyper.trades_beta)
