"""Standard (clean) training in one call, and accuracy: the small in-memory helpers.

:func:`train_standard` is :func:`trainers.loop.fit` (the one training loop: every method, checkpoints,
resumption, seeded and deterministic on CPU) with the cross-entropy objective and no checkpoint, for fixtures
and callers that need nothing more.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robverify.errors import RobverifyError

__all__ = ["accuracy", "train_standard"]


def _as_data(x: Any, y: Any) -> tuple[Tensor, Tensor]:
    x_t = torch.as_tensor(x, dtype=torch.float32)
    y_t = torch.as_tensor(y, dtype=torch.long)
    if x_t.dim() < 2 or y_t.dim() != 1 or x_t.shape[0] != y_t.shape[0]:
        raise RobverifyError(
            f"training data: expected x of shape [N, ...] and labels of shape [N], "
            f"got {list(x_t.shape)} and {list(y_t.shape)}"
        )
    if x_t.shape[0] == 0:
        raise RobverifyError("training data: the data set is empty")
    return x_t, y_t


def _device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _cross_entropy(model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor:
    return F.cross_entropy(model(x), y)


def train_standard(
    model: nn.Module,
    x_train: Tensor,
    y_train: Tensor,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, float]:
    """Train ``model`` in place on clean data (Adam, cross-entropy) with :func:`trainers.loop.fit`, on the
    device of its parameters, without a checkpoint; returns ``{"train_time_s", "final_loss"}`` (``final_loss``:
    the mean training loss over the last epoch). The model's train/eval mode is restored."""
    from trainers.loop import fit

    x_all, y_all = _as_data(x_train, y_train)
    was_training = model.training
    try:
        result = fit(model, x_all, y_all, _cross_entropy, epochs=epochs, lr=lr, batch_size=batch_size, seed=seed,
                     device=_device(model), progress=progress)
    finally:
        model.train(was_training)
    return {"train_time_s": result.train_time_s, "final_loss": result.final_loss}


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``x`` that ``model`` classifies as ``y`` (eval mode, no gradients; mode restored)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RobverifyError(f"batch_size: expected a positive integer, got {batch_size!r}")
    x_all, y_all = _as_data(x, y)
    device = _device(model)
    was_training = model.training
    model.eval()
    try:
        correct = 0
        for start in range(0, x_all.shape[0], batch_size):
            xb = x_all[start : start + batch_size].to(device)
            yb = y_all[start : start + batch_size].to(device)
            correct += int((model(xb).argmax(dim=1) == yb).sum())
    finally:
        model.train(was_training)
    return correct / x_all.shape[0]
