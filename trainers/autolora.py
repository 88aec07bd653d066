"""AutoLoRa (Xu, Zhang and Kankanhalli, "AutoLoRa: A Parameter-Free Automated Robust Fine-Tuning Framework",
ICLR 2024).

Robust fine-tuning disentangled into two branches that share the head: the *feature-extractor (FE) branch* (the
full pre-trained weights, all trainable) takes the adversarial objective, the *LoRA branch* (``W + up @ down`` on
every ``Linear`` / ``Conv2d`` of the blocks, FE weights seen as constants) the natural one::

    loss = l1 * CE(f_lora(x), y) + (1 - l1) * CE(f_fe(x_adv), y) + l2 * KL(f_fe(x_adv) || f_lora(x))

with ``x_adv`` from PGD on the FE branch's cross-entropy (the reference code's attack) and the paper's automatic
scalars ``l1 = 1 - acc``, ``l2 = 6 * acc``, where ``acc`` is the LoRA branch's natural accuracy on the training
data, re-measured four times per epoch. The natural loss reaches the LoRA factors and the head only; the
adversarial loss the FE weights (with biases and BatchNorm affine) and the head; the KL term both. At inference
the paper uses the FE branch, so :func:`drop_natural_branch` removes the LoRA branch for export.

Simplified: the paper's automatic learning-rate schedule (SGD from 0.1, halved at fixed epochs when the validation
PGD accuracy stalls, rolling back to the best weights) is not implemented -- the shared training loop owns an Adam
optimiser at the user's ``lr``; ``acc`` is measured on at most :data:`PROBE_SAMPLES` training samples.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils import parametrize

from trainers.adversarial import pgd_examples
from trainers.freezing import unfreeze
from trainers.lora import add_adapters
from trainers.objectives import Hyper
from trainers.zoo import BlockNet

__all__ = ["KL_SCALE", "PROBE_SAMPLES", "AutoLoRaLoss", "add_natural_branch", "autolora_loss",
           "drop_natural_branch", "fe_forward", "natural_forward"]

#: the paper's scale of the KL weight (``l2 = KL_SCALE * acc``)
KL_SCALE = 6.0
#: training samples on which the LoRA branch's natural accuracy is measured
PROBE_SAMPLES = 512
#: re-measurements of the scalars per epoch (the reference code: four)
REFRESH_PER_EPOCH = 4


def _is_lora(name: str) -> bool:
    return ".parametrizations.weight.0." in name


def add_natural_branch(model: BlockNet, rank: int, seed: int) -> int:
    """Give every block layer a rank-``rank`` LoRA branch and make every parameter trainable (FE, head, LoRA);
    the number of adapted layers."""
    count = add_adapters(model, rank, seed)
    unfreeze(model)
    return count


def natural_forward(model: nn.Module, x: Tensor) -> Tensor:
    """The LoRA branch ``[N, C, H, W] -> [N, classes]``: FE parameters enter as constants, LoRA and head train."""
    constants = {n: p.detach() for n, p in model.named_parameters() if not _is_lora(n) and not n.startswith("head.")}
    return functional_call(model, constants, (x,), strict=False)


def fe_forward(model: nn.Module, x: Tensor) -> Tensor:
    """The FE branch ``[N, C, H, W] -> [N, classes]``: the weights without the LoRA delta (``up`` set to zero)."""
    zeros = {n: torch.zeros_like(p) for n, p in model.named_parameters() if _is_lora(n) and n.endswith(".up")}
    return functional_call(model, zeros, (x,), strict=False)


class _Branch(nn.Module):
    """One branch of ``model`` as a module (for the attack)."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Tensor], Tensor]) -> None:
        super().__init__()
        self.model, self.branch = model, forward

    def forward(self, x: Tensor) -> Tensor:
        return self.branch(self.model, x)


class AutoLoRaLoss:
    """AutoLoRa's loss (see the module docstring) with its automatic scalars ``l1`` and ``l2``."""

    def __init__(self, eps: float, hyper: Hyper, x_probe: Tensor, y_probe: Tensor, refresh: float) -> None:
        self.eps, self.steps, self.alpha = eps, hyper.attack_steps, hyper.attack_alpha
        self.x_probe, self.y_probe = x_probe, y_probe
        self.refresh = refresh  # fraction of all steps between re-measurements
        self.period = -1
        self.l1, self.l2 = 1.0, 0.0

    @torch.no_grad()
    def _measure(self, model: nn.Module) -> None:
        training = [(m, m.training) for m in model.modules()]
        model.eval()
        device = next(model.parameters()).device
        try:
            logits = natural_forward(model, self.x_probe.to(device))
            acc = float((logits.argmax(1) == self.y_probe.to(device)).float().mean())
        finally:
            for m, mode in training:
                m.training = mode
        self.l1, self.l2 = 1.0 - acc, KL_SCALE * acc

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
        period = int(progress / self.refresh + 1e-9)
        if period != self.period:
            self._measure(model)
            self.period = period
        x_adv = pgd_examples(_Branch(model, fe_forward), x, y, self.eps, steps=self.steps, alpha=self.alpha)
        natural = natural_forward(model, x)
        robust = fe_forward(model, x_adv)
        kl = F.kl_div(F.log_softmax(robust, dim=1), F.softmax(natural, dim=1), reduction="batchmean")
        return self.l1 * F.cross_entropy(natural, y) + (1 - self.l1) * F.cross_entropy(robust, y) + self.l2 * kl


def autolora_loss(eps: float, hyper: Hyper, x_fit: Tensor, y_fit: Tensor, epochs: int) -> AutoLoRaLoss:
    """AutoLoRa's loss at radius ``eps`` for training on ``x_fit`` [N, C, H, W] / ``y_fit`` [N] for ``epochs``."""
    n = min(PROBE_SAMPLES, len(y_fit))
    refresh = 1.0 / (REFRESH_PER_EPOCH * max(1, epochs))
    return AutoLoRaLoss(eps, hyper, x_fit[:n], y_fit[:n], refresh if math.isfinite(refresh) else 1.0)


def drop_natural_branch(model: BlockNet) -> None:
    """Remove the LoRA branch (in place), keeping the FE weights: the paper's inference model."""
    for layer in model.blocks.modules():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=False)
