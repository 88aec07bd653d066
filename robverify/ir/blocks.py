"""torch.nn building blocks that the graph IR understands besides torch's own layers.

The model zoo (``trainers``) builds its networks from these plus ``nn.Linear``, ``nn.Conv2d``,
``nn.BatchNorm1d/2d``, ``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh``, ``nn.Flatten``, ``nn.AvgPool2d``,
``nn.MaxPool2d`` and ``nn.Sequential``, so that :func:`robverify.ir.graph.from_module` can read any zoo model.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Per-channel ``(x - mean) / std`` as the first layer: eps stays measured in pixel space.

    Input ``[N, C, ...]``; ``mean`` and ``std`` have ``C`` entries (or one).
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))

    def _shape(self, x: Tensor) -> tuple[int, ...]:
        return (1, -1) + (1,) * (x.dim() - 2)

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean.view(self._shape(x))) / self.std.view(self._shape(x))


class Residual(nn.Module):
    """``body(x) + shortcut(x)`` (identity shortcut when ``shortcut`` is None). Exported as ONNX ``Add``."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x) + (x if self.shortcut is None else self.shortcut(x))
