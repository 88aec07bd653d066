"""PGD on a torch module, for adversarial training (Madry et al.) and TRADES (Zhang et al.).

The house falsifier (:func:`robverify.engine.attacks.pgd_attack`) works on the graph IR and is what evaluation uses;
training needs many cheap attacks on the live module, in its own forward pass, hence this small version.
Both keep inputs inside ``[0, 1]`` and within ``eps`` (L-inf) of the clean input.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["pgd_examples", "trades_examples"]


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.clamp(torch.minimum(torch.maximum(x_adv, x - eps), x + eps), 0.0, 1.0)


def _eval_mode(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    """Put every submodule in eval mode (BatchNorm statistics must not move during the attack)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    return modes


def _restore(modes: list[tuple[nn.Module, bool]]) -> None:
    for module, training in modes:
        module.training = training


def pgd_examples(model: nn.Module, x: Tensor, y: Tensor, eps: float, *, steps: int = 10,
                 alpha: float = 2.5) -> Tensor:
    """Madry PGD on the cross-entropy: uniform random start in the eps-ball, ``steps`` signed-gradient steps of
    ``alpha * eps / steps``. ``x`` [B, C, H, W] in [0, 1], ``y`` [B] -> adversarial ``x`` [B, C, H, W], detached.

    The random start uses the global torch RNG (seeded by the training loop). The model's modes are restored.
    """
    if eps <= 0 or steps < 1:
        return x.detach()
    modes = _eval_mode(model)
    step = alpha * eps / steps
    try:
        x_adv = _project(x + torch.empty_like(x).uniform_(-eps, eps), x, eps).detach()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = F.cross_entropy(model(x_adv), y)
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = _project(x_adv.detach() + step * grad.sign(), x, eps).detach()
    finally:
        _restore(modes)
    return x_adv


def trades_examples(model: nn.Module, x: Tensor, eps: float, *, steps: int = 10, alpha: float = 2.5) -> Tensor:
    """TRADES inner maximisation: PGD on ``KL(p(x) || p(x'))`` from a small random start (0.001 standard
    normal, as in the TRADES reference). ``x`` [B, C, H, W] -> ``x'`` [B, C, H, W], detached."""
    if eps <= 0 or steps < 1:
        return x.detach()
    modes = _eval_mode(model)
    step = alpha * eps / steps
    try:
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        x_adv = _project(x + 0.001 * torch.randn_like(x), x, eps).detach()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                loss = F.kl_div(F.log_softmax(model(x_adv), dim=1), p_clean, reduction="sum")
                (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = _project(x_adv.detach() + step * grad.sign(), x, eps).detach()
    finally:
        _restore(modes)
    return x_adv
