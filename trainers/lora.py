"""Low-rank adapters (LoRA, Hu et al. 2021) on the ``Linear`` and ``Conv2d`` layers of a model's blocks.

An adapter reparametrises a layer's weight as ``W + up @ down`` (``down`` [r, fan_in], ``up`` [out, r], zero at
start so training begins at the source network) with ``torch.nn.utils.parametrize``: the layer stays an
``nn.Linear`` / ``nn.Conv2d`` (the graph IR still reads it) while only ``up`` and ``down`` train.
:func:`merge_adapters` folds the adapters into plain weights for export.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from trainers.zoo import BlockNet

__all__ = ["LowRankDelta", "add_adapters", "merge_adapters"]


class LowRankDelta(nn.Module):
    """``W -> W + (up @ down).view_as(W)`` for a weight of shape ``[out, *rest]``."""

    def __init__(self, shape: torch.Size, rank: int, generator: torch.Generator) -> None:
        super().__init__()
        out, fan_in = int(shape[0]), math.prod(shape[1:])
        rank = min(rank, out, fan_in)
        self.down = nn.Parameter(torch.randn(rank, fan_in, generator=generator) / math.sqrt(fan_in))
        self.up = nn.Parameter(torch.zeros(out, rank))

    def forward(self, weight: Tensor) -> Tensor:
        return weight + (self.up @ self.down).view_as(weight)


def _layers(model: BlockNet) -> list[nn.Module]:
    return [m for m in model.blocks.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def add_adapters(model: BlockNet, rank: int, seed: int) -> int:
    """Freeze every block layer's weight and bias and give each ``Linear`` / ``Conv2d`` a rank-``rank`` adapter
    (seeded). Returns the number of adapted layers."""
    generator = torch.Generator().manual_seed(seed)
    layers = _layers(model)
    for layer in layers:
        for p in layer.parameters():
            p.requires_grad_(False)
        delta = LowRankDelta(layer.weight.shape, rank, generator).to(layer.weight.device)
        parametrize.register_parametrization(layer, "weight", delta)
    return len(layers)


def merge_adapters(model: BlockNet) -> None:
    """Fold every adapter into its layer's weight (in place): the model becomes a plain network again."""
    for layer in model.blocks.modules():
        if parametrize.is_parametrized(layer, "weight"):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
