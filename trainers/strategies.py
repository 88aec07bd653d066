"""Transfer strategies: which part of a source model trains on the target task, with which objective.

Every strategy starts from a copy of the source model whose parameters are all frozen and whose head is new
(the target task has its own label set), then :meth:`Strategy.prepare` unfreezes its part; ``scratch`` and
``scratch-adv`` start from a freshly initialised copy of the architecture instead. The objective is
``standard``, adversarial (``pgd`` or ``trades``, hyper-parameter ``adv``) or certified (``ibp`` or ``crown-ibp``,
hyper-parameter ``certified``). ``lora`` and ``rift`` also act after training (merge, interpolation).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from robverify.errors import RobverifyError
from trainers.adversarial import pgd_examples
from trainers.freezing import batchnorm_layers, unfreeze
from trainers.lora import add_adapters, merge_adapters
from trainers.objectives import Hyper, TrainMethod
from trainers.rift import ALPHAS, interpolate, module_criticality
from trainers.zoo import BlockNet

__all__ = ["STRATEGIES", "Strategy", "TransferContext", "get_strategy", "strategies_with_blocks"]


@dataclass
class TransferContext:
    """What a strategy may read: the untouched source model (with its own head), a sample of the source
    task's training data, held-out target data ``x_val`` [N, C, H, W] / ``y_val`` [N], the training radius and
    the hyper-parameters. ``notes`` collects facts for the model card (e.g. RiFT's chosen layer)."""

    source: BlockNet
    x_source: Tensor
    y_source: Tensor
    x_val: Tensor
    y_val: Tensor
    eps: float
    hyper: Hyper
    blocks: int | None
    seed: int
    notes: dict[str, Any] = field(default_factory=dict)


Step = Callable[[BlockNet, TransferContext], None]


def _nothing(model: BlockNet, ctx: TransferContext) -> None:
    return None


def _all(model: BlockNet, ctx: TransferContext) -> None:
    unfreeze(model)


def _last_blocks(model: BlockNet, ctx: TransferContext) -> None:
    for block in model.last_blocks(ctx.blocks or 0):
        unfreeze(block)


def _batchnorm(model: BlockNet, ctx: TransferContext) -> None:
    layers = batchnorm_layers(model.blocks)
    if not layers:
        arch = (model.config or {}).get("arch", type(model).__name__)
        raise RobverifyError(f"strategy bn-adapt needs BatchNorm layers; architecture {arch} has none (try cnn-bn)")
    for layer in layers:
        unfreeze(layer)


def _lora(model: BlockNet, ctx: TransferContext) -> None:
    ctx.notes["adapted_layers"] = add_adapters(model, ctx.hyper.rank, ctx.seed)


def _merge(model: BlockNet, ctx: TransferContext) -> None:
    merge_adapters(model)


def _least_critical(model: BlockNet, ctx: TransferContext) -> None:
    source = copy.deepcopy(ctx.source)
    scores = module_criticality(source, ctx.x_source, ctx.y_source, ctx.eps, radius=ctx.hyper.rift_radius)
    layer = min(scores, key=scores.get)
    ctx.notes.update(rift_layer=layer, criticality={k: round(v, 6) for k, v in scores.items()})
    unfreeze(dict(model.named_modules())[layer])


def _val_score(model: BlockNet, ctx: TransferContext) -> float:
    """Clean plus PGD (training-time attack) accuracy on the held-out target data."""
    model.eval()
    with torch.no_grad():
        clean = (model(ctx.x_val).argmax(1) == ctx.y_val).float().mean()
    x_adv = pgd_examples(model, ctx.x_val, ctx.y_val, ctx.eps)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == ctx.y_val).float().mean()
    return float(clean + robust)


def _interpolate(model: BlockNet, ctx: TransferContext) -> None:
    layer = ctx.notes["rift_layer"]
    tuned = copy.deepcopy(model)
    best_alpha, best_score = 1.0, -1.0
    for alpha in ALPHAS:
        trial = copy.deepcopy(tuned)
        interpolate(trial, ctx.source, layer, alpha)
        score = _val_score(trial, ctx)
        if score > best_score:
            best_alpha, best_score = alpha, score
    interpolate(model, ctx.source, layer, best_alpha)
    ctx.notes.update(rift_alpha=best_alpha, rift_val_score=round(best_score, 6))


@dataclass(frozen=True)
class Strategy:
    """A transfer strategy. ``objective``: ``standard``, ``adversarial`` or ``certified``."""

    name: str
    objective: str
    prepare: Step
    finish: Step = _nothing
    needs_blocks: bool = False
    scratch: bool = False
    description: str = ""
    #: trains on part of the target's training set and scores its choices on the held-out rest (RiFT's alpha)
    holdout: bool = False
    #: hyper-parameters of :class:`Hyper` this strategy reads, recorded in the card's ``training``
    hyper_keys: tuple[str, ...] = ()

    def method(self, hyper: Hyper) -> TrainMethod:
        """The training method this strategy uses under ``hyper``."""
        if self.objective == "adversarial":
            return TrainMethod.parse(hyper.adv)
        if self.objective == "certified":
            return TrainMethod.parse(hyper.certified)
        return TrainMethod.STANDARD


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy("linear-probe", "standard", _nothing, description="frozen features, new head"),
        Strategy("linear-probe-adv", "adversarial", _nothing, description="frozen features, adversarial head"),
        Strategy("full-ft", "standard", _all, description="everything trains"),
        Strategy("adv-ft", "adversarial", _all, description="everything trains adversarially"),
        Strategy("partial-ft", "standard", _last_blocks, needs_blocks=True, description="last K blocks + head"),
        Strategy("partial-ft-adv", "adversarial", _last_blocks, needs_blocks=True,
                 description="last K blocks + head, adversarially"),
        Strategy("rift", "standard", _least_critical, _interpolate, holdout=True, hyper_keys=("rift_radius",),
                 description="least robustness-critical layer, interpolated with the source"),
        Strategy("lora", "standard", _lora, _merge, hyper_keys=("rank",),
                 description="low-rank adapters, merged for export"),
        Strategy("bn-adapt", "standard", _batchnorm, description="BatchNorm statistics and affine + head"),
        Strategy("certified-ft", "certified", _all, description="everything trains with IBP / CROWN-IBP"),
        Strategy("scratch", "standard", _all, scratch=True, description="the architecture trained on the target"),
        Strategy("scratch-adv", "adversarial", _all, scratch=True,
                 description="the architecture trained adversarially on the target"),
    ]
}


def get_strategy(name: str) -> Strategy:
    """The strategy called ``name``; RobverifyError naming the choices if unknown."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise RobverifyError(f"unknown strategy: expected one of {', '.join(STRATEGIES)}, got {name!r}") from None


def strategies_with_blocks() -> list[str]:
    """The strategies that take ``--blocks K``."""
    return [name for name, s in STRATEGIES.items() if s.needs_blocks]

