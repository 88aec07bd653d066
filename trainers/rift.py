"""RiFT (Zhu et al. 2023): fine-tune the module least critical for robustness, then interpolate with the source.

Module robust criticality: the largest increase of the adversarial loss when one layer's weight moves within a
ball of radius ``radius * ||W||`` (found by a few normalised gradient-ascent steps on fixed PGD examples).
The least critical ``Linear`` / ``Conv2d`` layer of the blocks is fine-tuned; afterwards its weights are
``(1 - alpha) * source + alpha * fine-tuned`` with ``alpha`` chosen on held-out target data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainers.adversarial import pgd_examples
from trainers.zoo import BlockNet

__all__ = ["ALPHAS", "block_layers", "interpolate", "module_criticality"]

#: interpolation weights tried (0: the source layer, 1: the fine-tuned layer)
ALPHAS = tuple(i / 10 for i in range(11))


def block_layers(model: BlockNet) -> dict[str, nn.Module]:
    """The ``Linear`` / ``Conv2d`` layers of the blocks by qualified name (``blocks.block1.0``)."""
    return {f"blocks.{name}": m for name, m in model.blocks.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d))}


def module_criticality(model: BlockNet, x: Tensor, y: Tensor, eps: float, *, radius: float = 0.1,
                       steps: int = 5) -> dict[str, float]:
    """Criticality per block layer on ``x`` [N, C, H, W], ``y`` [N] with the model's own head (eval mode).
    The model's weights are unchanged on return."""
    model.eval()
    x_adv = pgd_examples(model, x, y, eps) if eps > 0 else x
    with torch.no_grad():
        base = float(F.cross_entropy(model(x_adv), y))
    scores: dict[str, float] = {}
    for name, layer in block_layers(model).items():
        weight = layer.weight
        original = weight.detach().clone()
        bound = radius * float(original.norm())
        worst = base
        try:
            for _ in range(steps):
                w = weight.detach().requires_grad_(True)
                with torch.enable_grad():
                    loss = F.cross_entropy(torch.func.functional_call(model, {f"{name}.weight": w}, (x_adv,)), y)
                    (grad,) = torch.autograd.grad(loss, w)
                worst = max(worst, loss.item())
                with torch.no_grad():
                    moved = weight + bound / steps * grad / grad.norm().clamp_min(1e-12)
                    delta = moved - original
                    delta *= min(1.0, bound / float(delta.norm().clamp_min(1e-12)))
                    weight.copy_(original + delta)
            with torch.no_grad():
                worst = max(worst, float(F.cross_entropy(model(x_adv), y)))
        finally:
            with torch.no_grad():
                weight.copy_(original)
        scores[name] = worst - base
    return scores


@torch.no_grad()
def interpolate(model: BlockNet, source: BlockNet, layer: str, alpha: float) -> None:
    """Set ``layer``'s weight and bias to ``(1 - alpha) * source + alpha * current`` of ``model``, in place.
    Call on a copy: the fine-tuned values are overwritten."""
    target = dict(model.named_modules())[layer]
    origin = dict(source.named_modules())[layer]
    for name in ("weight", "bias"):
        t, s = getattr(target, name), getattr(origin, name)
        if t is not None:
            t.copy_((1 - alpha) * s.to(t.device) + alpha * t)
