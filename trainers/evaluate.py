"""Accuracy of a trained model on a test split: clean, under PGD, and certified by robverify's bound engine.

PGD and certification run on the graph IR of the live model (:func:`robverify.ir.from_module.from_module`), with
the house falsifier :func:`robverify.engine.attacks.pgd_attack` and :func:`robverify.engine.bounds.compute_bounds`, batched.
A sample counts as robust under PGD when it is classified correctly and the attack finds no counterexample;
as certified when the bound proves every other class's logit stays below the label's over the eps-box.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from robverify.engine.attacks import pgd_attack
from robverify.engine.bounds import compute_bounds
from robverify.errors import RobverifyError
from robverify.ir.from_module import from_module
from robverify.spec import Method, robustness_spec
from trainers.training import accuracy

__all__ = ["certified_accuracy", "evaluate", "pgd_accuracy"]


def _chunks(x: Tensor, y: Tensor, batch_size: int):
    for start in range(0, x.shape[0], batch_size):
        yield x[start:start + batch_size], y[start:start + batch_size]


def _device(model: nn.Module) -> torch.device:
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def _check_eps(eps: float) -> None:
    if not 0 <= eps <= 1:
        raise RobverifyError(f"eps must be in [0, 1], got {eps}")


@torch.no_grad()
def pgd_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, n_classes: int, *, steps: int = 40,
                 restarts: int = 2, seed: int = 0, batch_size: int = 500) -> float:
    """Fraction of ``x`` [N, C, H, W] classified as ``y`` [N] everywhere PGD looks in the L-inf ``eps``-ball."""
    _check_eps(eps)
    model.eval()
    graph = from_module(model, tuple(x.shape[1:]))
    device = _device(model)
    robust = 0
    for xb, yb in _chunks(x, y, batch_size):
        xb, yb = xb.to(device), yb.to(device)
        correct = graph.logits(xb).argmax(1) == yb
        if eps > 0:
            spec = robustness_spec(xb, yb, eps, n_classes)
            found = pgd_attack(graph, spec, steps=steps, restarts=restarts, seed=seed).found
            correct &= ~found
        robust += int(correct.sum())
    return robust / x.shape[0]


@torch.no_grad()
def certified_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float, n_classes: int, *,
                       method: Method | str = Method.CROWN_IBP, batch_size: int = 256) -> float:
    """Fraction of ``x`` [N, C, H, W] whose label ``y`` [N] is proved for the whole ``eps``-ball by ``method``."""
    _check_eps(eps)
    model.eval()
    graph = from_module(model, tuple(x.shape[1:]))
    device = _device(model)
    proved = 0
    for xb, yb in _chunks(x, y, batch_size):
        xb, yb = xb.to(device), yb.to(device)
        spec = robustness_spec(xb, yb, eps, n_classes)
        proved += int((compute_bounds(graph, spec, method).margin_lb > 0).sum())
    return proved / x.shape[0]


def evaluate(model: nn.Module, x: Tensor, y: Tensor, eps: float, n_classes: int, *, seed: int = 0,
             certify_method: Method | str = Method.CROWN_IBP) -> dict[str, float]:
    """``{"clean_acc", "pgd_acc", "certified_acc"}`` on a test split at radius ``eps``."""
    return {
        "clean_acc": accuracy(model, x, y),
        "pgd_acc": pgd_accuracy(model, x, y, eps, n_classes, seed=seed),
        "certified_acc": certified_accuracy(model, x, y, eps, n_classes, method=certify_method),
    }
