"""Seeded standard (clean) training with Adam and cross-entropy, and accuracy: the small in-memory helpers.

Source training and transfer go through :func:`trainers.loop.fit` (every method, checkpoints, resumption);
:func:`train_standard` stays for quick fixtures and callers that need no checkpoint.

Deterministic on CPU: the same seed, data and model initialisation give bit-identical weights
(``torch.manual_seed`` for the step-level RNG, a private ``torch.Generator`` for the shuffling order).
"""

from __future__ import annotations

import math
import time
from typing import Any, Iterator

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


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if len(idx) == 1 and n > 1:  # a batch of one breaks BatchNorm statistics; the sample is seen next epoch
            return
        yield idx


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
    """Train ``model`` in place on clean data (Adam, cross-entropy); returns ``{"train_time_s", "final_loss"}``.

    ``final_loss`` is the mean training loss over the last epoch. The model's train/eval mode is restored.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise RobverifyError(f"epochs: expected a positive integer, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RobverifyError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise RobverifyError(f"lr: expected a positive number, got {lr!r}")
    x_all, y_all = _as_data(x_train, y_train)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RobverifyError("train_standard: the model has no trainable parameters")

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    device = _device(model)
    optimizer = torch.optim.Adam(params, lr=lr)
    n = x_all.shape[0]
    steps_per_epoch = math.ceil(n / batch_size) - (1 if n > 1 and n % batch_size == 1 else 0)
    was_training = model.training
    model.train()

    bar = None
    if progress:
        from rich.progress import Progress  # only when asked: keeps imports light

        bar = Progress(transient=True)
        task = bar.add_task("training", total=epochs * steps_per_epoch)
        bar.start()

    start = time.perf_counter()
    final_loss = math.nan
    try:
        for epoch in range(1, epochs + 1):
            loss_sum, seen = torch.zeros((), device=device), 0
            for step, idx in enumerate(_batches(n, batch_size, generator), start=1):
                xb, yb = x_all[idx].to(device), y_all[idx].to(device)
                loss = F.cross_entropy(model(xb), yb)
                if not torch.isfinite(loss):
                    raise RobverifyError(
                        f"training diverged: loss is {loss.item()} at epoch {epoch}, step {step} "
                        f"(try a smaller learning rate than {lr:g})"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(idx)
                seen += len(idx)
                if bar is not None:
                    bar.update(task, advance=1, description=f"epoch {epoch}/{epochs} loss {loss.item():.4f}")
            final_loss = float(loss_sum / max(seen, 1))
    finally:
        if bar is not None:
            bar.stop()
        model.train(was_training)
    return {"train_time_s": time.perf_counter() - start, "final_loss": final_loss}


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
