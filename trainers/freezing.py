"""Which parameters train: freezing, unfreezing and replacing the head of a :class:`~trainers.zoo.BlockNet`.

Frozen means frozen: ``requires_grad_(False)`` on the parameters (the optimiser is built over trainable ones
only) and, through :func:`trainers.loop.set_train_mode`, BatchNorm layers with frozen parameters stay in eval
mode so their running statistics do not move.
"""

from __future__ import annotations

import torch
from torch import nn

from trainers.zoo import BlockNet

__all__ = ["batchnorm_layers", "freeze", "new_head", "unfreeze"]


def freeze(module: nn.Module) -> None:
    """Stop gradients to every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad_(False)


def unfreeze(module: nn.Module) -> None:
    """Let every parameter of ``module`` train."""
    for p in module.parameters():
        p.requires_grad_(True)


def batchnorm_layers(module: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers inside ``module``, in order."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def new_head(model: BlockNet, n_classes: int, seed: int) -> None:
    """Replace the head by a freshly initialised ``Linear(n_features, n_classes)`` (seeded, trainable) and record
    the new class count in the model's architecture config."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        head = nn.Linear(model.n_features, n_classes)
    param = next(iter(model.parameters()), None)
    if param is not None:
        head = head.to(param.device)
    model.head = head
    if model.config is not None:
        model.config = {**model.config, "n_classes": n_classes}
