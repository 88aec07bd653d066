"""The shared training loop: seeded mini-batch training of the trainable parameters, one objective, checkpoints.

Every trainer (source methods and transfer strategies) goes through :func:`fit`. It is deterministic on CPU
(``torch.manual_seed`` for step-level randomness such as PGD starts, a private generator for the shuffling
order), stops with a :class:`~robverify.errors.RobverifyError` when the loss is not finite, shows an optional
rich progress bar, and writes a checkpoint after every epoch: rerunning with the same ``key`` resumes after
the last finished epoch and ends with the same weights as an uninterrupted run. A learning-rate ``schedule``
(:mod:`trainers.schedules`) sets the rate before every optimiser step from the global step count, so a resumed
run follows the same schedule; ``constant`` never touches the rate.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from torch import Tensor, nn

from robverify.errors import RobverifyError
from robverify.files import atomic_write
from robverify.progress import progress_bar
from trainers.schedules import Schedule, lr_factor

__all__ = ["FitResult", "Objective", "fit", "set_train_mode"]

log = logging.getLogger(__name__)


class Objective(Protocol):
    """A training loss: ``(model, x [B, C, H, W], y [B], progress in [0, 1]) -> scalar loss``.

    ``progress`` is the fraction of all optimiser steps done before this one (eps ramps read it).
    """

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: float) -> Tensor: ...


@dataclass(frozen=True)
class FitResult:
    """``train_time_s``: wall-clock seconds of training summed over resumed parts; ``final_loss``: the mean loss
    of the last epoch; ``resumed_epochs``: epochs taken from a checkpoint instead of being trained now."""

    train_time_s: float
    final_loss: float
    resumed_epochs: int


def set_train_mode(model: nn.Module) -> None:
    """Training mode, except BatchNorm layers whose parameters are all frozen: they stay in eval mode so that
    their running statistics do not move (frozen means frozen)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()


def _batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    order = torch.randperm(n, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if len(idx) == 1 and n > 1:  # a batch of one breaks BatchNorm statistics
            return
        yield idx


def _steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size) - (1 if n > 1 and n % batch_size == 1 else 0)


def _save_atomic(state: dict, path: Path) -> None:
    atomic_write(path, lambda handle: torch.save(state, handle))


def _load_checkpoint(path: Path | None, key: str) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a torn or foreign file: train from the start
        log.warning("ignoring unreadable checkpoint %s (%s)", path, exc)
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        log.warning("ignoring checkpoint %s: it belongs to another training configuration", path)
        return None
    return state


def _check_args(epochs: int, lr: float, batch_size: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise RobverifyError(f"epochs: expected a positive integer, got {epochs!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise RobverifyError(f"batch_size: expected a positive integer, got {batch_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise RobverifyError(f"lr: expected a positive number, got {lr!r}")


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def fit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    objective: Objective,
    *,
    epochs: int,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    device: torch.device | str = "cpu",
    checkpoint: Path | None = None,
    key: str = "",
    progress: bool = False,
    description: str = "training",
    after_epoch: Callable[[int], None] | None = None,
    schedule: Schedule | str = Schedule.CONSTANT,
) -> FitResult:
    """Train the parameters of ``model`` that require gradients (Adam) on ``x`` [N, C, H, W], ``y`` [N].

    ``checkpoint``: file written after every epoch (model, optimiser and RNG state); a checkpoint with the same
    ``key`` (a string naming the configuration) resumes training after its epoch. ``after_epoch(epoch)`` is
    called once an epoch is checkpointed. ``schedule``: learning-rate schedule (:mod:`trainers.schedules`) over
    all optimiser steps, ``lr`` its peak. The model is left in eval mode on ``device``.
    """
    _check_args(epochs, lr, batch_size)
    schedule = Schedule.parse(schedule)
    if x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise RobverifyError(f"training data: expected matching non-empty x and y, got {list(x.shape)} and {list(y.shape)}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise RobverifyError("training: the model has no trainable parameters")
    device = torch.device(device)
    model.to(device)
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    n = int(x.shape[0])
    per_epoch = _steps_per_epoch(n, batch_size)
    total = epochs * per_epoch

    start_epoch, elapsed, final_loss = 1, 0.0, math.nan
    state = _load_checkpoint(checkpoint, key)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["rng"])
        start_epoch = min(int(state["epoch"]), epochs) + 1
        elapsed, final_loss = float(state["elapsed"]), float(state["final_loss"])
        log.info("resuming %s after epoch %d from %s", description, start_epoch - 1, checkpoint)
    resumed = start_epoch - 1

    try:
        with progress_bar(bool(progress) and start_epoch <= epochs, transient=True) as bar:
            task = bar.add(description, total=total, completed=resumed * per_epoch)
            for epoch in range(start_epoch, epochs + 1):
                began = time.perf_counter()
                set_train_mode(model)
                loss_sum, seen = torch.zeros((), device=device), 0
                for step, idx in enumerate(_batches(n, batch_size, generator)):
                    xb, yb = x[idx].to(device), y[idx].to(device)
                    done = ((epoch - 1) * per_epoch + step) / total
                    loss = objective(model, xb, yb, done)
                    if not torch.isfinite(loss):
                        raise RobverifyError(f"{description} diverged: loss is {loss.item()} at epoch {epoch}, "
                                             f"step {step + 1} (try a smaller learning rate than {lr:g})")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if schedule is not Schedule.CONSTANT:
                        _set_lr(optimizer, lr * lr_factor(schedule, done))
                    optimizer.step()
                    loss_sum += loss.detach() * len(idx)
                    seen += len(idx)
                    if bar.active:
                        bar.advance(task, 1)
                        bar.describe(task, f"{description} {epoch}/{epochs} loss {loss.item():.4f}")
                final_loss = float(loss_sum / max(seen, 1))
                elapsed += time.perf_counter() - began
                if checkpoint is not None:
                    _save_atomic({"key": key, "epoch": epoch, "model": model.state_dict(),
                                  "optimizer": optimizer.state_dict(), "generator": generator.get_state(),
                                  "rng": torch.get_rng_state(), "elapsed": elapsed, "final_loss": final_loss},
                                 checkpoint)
                if after_epoch is not None:
                    after_epoch(epoch)
    finally:
        model.eval()
    return FitResult(elapsed, final_loss, resumed)
