"""Transfer strategies: which part of a source model trains on the target task, and with which objective.

Every strategy starts from a copy of the source model whose parameters are all frozen and whose head is new
(the target task has its own label set), then :meth:`Strategy.prepare` unfreezes its part; ``scratch`` and
``scratch-adv`` start from a freshly initialised copy of the architecture instead.

The training objective is a setting (``objective``, any :class:`~trainers.objectives.TrainMethod`), not part of
the strategy: ``full-ft --objective pgd`` is adversarial full fine-tuning. A strategy names its *default*
objective (``standard``; ``adversarial``: hyper-parameter ``adv``; ``certified``: hyper-parameter ``certified``)
and the objectives it *accepts*; the named variants (``adv-ft``, ``lora-adv``, ``rift-adv``, ``certified-ft``, ...)
fix the kind, so ``adv-ft --objective standard`` is an error, never silently ignored. ``lora``, ``lora-bn`` and
``rift`` also act after training (merge, interpolation); ``twins`` and ``autolora`` bring their own loss
(:mod:`trainers.twins`, :mod:`trainers.autolora`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from robverify.errors import RobverifyError
from trainers.adversarial import pgd_examples
from trainers.autolora import add_natural_branch, autolora_loss, drop_natural_branch
from trainers.freezing import batchnorm_layers, unfreeze
from trainers.lora import add_adapters, merge_adapters
from trainers.loop import Objective
from trainers.objectives import Hyper, TrainMethod, make_objective
from trainers.rift import ALPHAS, interpolate, module_criticality
from trainers.twins import add_twin_batchnorm, keep_adaptive_branch, twins_loss
from trainers.zoo import BlockNet

__all__ = ["STRATEGIES", "Strategy", "TransferContext", "get_strategy", "strategies_with_blocks"]


@dataclass
class TransferContext:
    """What a strategy may read: the untouched source model (with its own head), a sample of the source
    task's training data, the target training data ``x_fit`` [N, C, H, W] / ``y_fit`` [N], held-out target data
    ``x_val`` / ``y_val``, the training radius, the training method, the hyper-parameters and the number of epochs.
    ``notes`` collects facts for the model card (e.g. RiFT's chosen layer)."""

    source: BlockNet
    x_source: Tensor
    y_source: Tensor
    x_val: Tensor
    y_val: Tensor
    eps: float
    hyper: Hyper
    blocks: int | None
    seed: int
    method: TrainMethod = TrainMethod.STANDARD
    x_fit: Tensor | None = None
    y_fit: Tensor | None = None
    epochs: int = 1
    notes: dict[str, Any] = field(default_factory=dict)


Step = Callable[[BlockNet, TransferContext], None]
#: a strategy's own training loss: (context, n_classes) -> objective
LossFactory = Callable[[TransferContext, int], Objective]


def _nothing(model: BlockNet, ctx: TransferContext) -> None:
    return None


def _all(model: BlockNet, ctx: TransferContext) -> None:
    unfreeze(model)


def _last_blocks(model: BlockNet, ctx: TransferContext) -> None:
    for block in model.last_blocks(ctx.blocks or 0):
        unfreeze(block)


def _batchnorm(model: BlockNet, ctx: TransferContext) -> None:
    for layer in batchnorm_layers(model.blocks):
        unfreeze(layer)


def _lora(model: BlockNet, ctx: TransferContext) -> None:
    ctx.notes["adapted_layers"] = add_adapters(model, ctx.hyper.rank, ctx.seed)


def _lora_bn(model: BlockNet, ctx: TransferContext) -> None:
    _lora(model, ctx)
    _batchnorm(model, ctx)


def _merge(model: BlockNet, ctx: TransferContext) -> None:
    merge_adapters(model)


def _twins(model: BlockNet, ctx: TransferContext) -> None:
    ctx.notes["twin_batchnorm_layers"] = add_twin_batchnorm(model)
    unfreeze(model)


def _twins_export(model: BlockNet, ctx: TransferContext) -> None:
    keep_adaptive_branch(model)


def _autolora(model: BlockNet, ctx: TransferContext) -> None:
    ctx.notes["adapted_layers"] = add_natural_branch(model, ctx.hyper.rank, ctx.seed)


def _autolora_export(model: BlockNet, ctx: TransferContext) -> None:
    drop_natural_branch(model)


def _least_critical(model: BlockNet, ctx: TransferContext) -> None:
    source = copy.deepcopy(ctx.source)
    scores = module_criticality(source, ctx.x_source, ctx.y_source, ctx.eps, radius=ctx.hyper.rift_radius)
    layer = min(scores, key=scores.get)
    ctx.notes.update(rift_layer=layer, criticality={k: round(v, 6) for k, v in scores.items()})
    unfreeze(dict(model.named_modules())[layer])


def _val_score(model: BlockNet, ctx: TransferContext) -> float:
    """RiFT's interpolation score on the held-out target data: PGD (training-time attack) accuracy when the
    objective is robust, clean plus PGD accuracy when it is standard."""
    model.eval()
    with torch.no_grad():
        clean = (model(ctx.x_val).argmax(1) == ctx.y_val).float().mean()
    x_adv = pgd_examples(model, ctx.x_val, ctx.y_val, ctx.eps)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == ctx.y_val).float().mean()
    return float(robust) if ctx.method.adversarial else float(clean + robust)


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
    ctx.notes.update(rift_alpha=best_alpha, rift_val_score=round(best_score, 6),
                     rift_score="pgd_acc" if ctx.method.adversarial else "clean_acc + pgd_acc")


# ------------------------------------------------------------------------------------- which objectives apply


@dataclass(frozen=True)
class Accepts:
    """The training methods a strategy accepts: ``test(method)``, described as ``words``."""

    words: str
    test: Callable[[TrainMethod], bool]

    def methods(self) -> list[str]:
        return [m.value for m in TrainMethod if self.test(m)]


ANY = Accepts("any objective", lambda m: True)
EMPIRICAL = Accepts("an adversarial (attack-based) objective", lambda m: m.adversarial and not m.certified)
CERTIFIED = Accepts("a certified objective", lambda m: m.certified)
PGD_ONLY = Accepts("the PGD objective", lambda m: m is TrainMethod.PGD)


@dataclass(frozen=True)
class Strategy:
    """A transfer strategy. ``objective``: its default kind (``standard``, ``adversarial`` -> hyper ``adv``,
    ``certified`` -> hyper ``certified``, or a training method's name); ``accepts``: the methods it trains with."""

    name: str
    objective: str
    prepare: Step
    finish: Step = _nothing
    accepts: Accepts = ANY
    needs_blocks: bool = False
    needs_batchnorm: bool = False
    scratch: bool = False
    description: str = ""
    #: trains on part of the target's training set and scores its choices on the held-out rest (RiFT's alpha)
    holdout: bool = False
    #: hyper-parameters of :class:`Hyper` this strategy reads, recorded in the card's ``training``
    hyper_keys: tuple[str, ...] = ()
    #: its own training loss (None: :func:`trainers.objectives.make_objective` of the method)
    loss: LossFactory | None = None

    def default_method(self, hyper: Hyper) -> TrainMethod:
        """The training method without an explicit objective."""
        if self.objective == "adversarial":
            return TrainMethod.parse(hyper.adv)
        if self.objective == "certified":
            return TrainMethod.parse(hyper.certified)
        return TrainMethod.parse(self.objective)

    def method(self, hyper: Hyper, objective: str | TrainMethod | None = None) -> TrainMethod:
        """The training method under ``hyper`` and an explicit ``objective`` (None: the default); RobverifyError
        naming the strategy if it does not train with that objective."""
        method = self.default_method(hyper) if objective is None else TrainMethod.parse(objective)
        if not self.accepts.test(method):
            raise RobverifyError(f"strategy {self.name} trains with {self.accepts.words} "
                                 f"({', '.join(self.accepts.methods())}); objective {method.value} does not apply")
        return method

    def objective_for(self, ctx: TransferContext, n_classes: int) -> Objective:
        """The loss this strategy trains with (``ctx.method`` at ``ctx.eps``)."""
        if self.loss is not None:
            return self.loss(ctx, n_classes)
        return make_objective(ctx.method, ctx.eps, n_classes, ctx.hyper)


def _twins_loss(ctx: TransferContext, n_classes: int) -> Objective:
    return twins_loss(ctx.method, ctx.eps, ctx.hyper)


def _autolora_loss(ctx: TransferContext, n_classes: int) -> Objective:
    assert ctx.x_fit is not None and ctx.y_fit is not None
    return autolora_loss(ctx.eps, ctx.hyper, ctx.x_fit, ctx.y_fit, ctx.epochs)


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in [
        Strategy("linear-probe", "standard", _nothing, description="frozen features, new head"),
        Strategy("linear-probe-adv", "adversarial", _nothing, accepts=EMPIRICAL,
                 description="frozen features, adversarial head"),
        Strategy("full-ft", "standard", _all, description="everything trains"),
        Strategy("adv-ft", "adversarial", _all, accepts=EMPIRICAL, description="everything trains adversarially"),
        Strategy("partial-ft", "standard", _last_blocks, needs_blocks=True, description="last K blocks + head"),
        Strategy("partial-ft-adv", "adversarial", _last_blocks, accepts=EMPIRICAL, needs_blocks=True,
                 description="last K blocks + head, adversarially"),
        Strategy("rift", "standard", _least_critical, _interpolate, holdout=True, hyper_keys=("rift_radius",),
                 description="least robustness-critical layer, interpolated with the source"),
        Strategy("rift-adv", "adversarial", _least_critical, _interpolate, accepts=EMPIRICAL, holdout=True,
                 hyper_keys=("rift_radius",),
                 description="RiFT tuned adversarially, interpolation chosen on PGD accuracy"),
        Strategy("lora", "standard", _lora, _merge, hyper_keys=("rank",),
                 description="low-rank adapters, merged for export"),
        Strategy("lora-adv", "adversarial", _lora, _merge, accepts=EMPIRICAL, hyper_keys=("rank",),
                 description="low-rank adapters trained adversarially, merged for export"),
        Strategy("lora-bn", "adversarial", _lora_bn, _merge, needs_batchnorm=True, hyper_keys=("rank",),
                 description="low-rank adapters + BatchNorm (FullLoRA-AT style), merged for export"),
        Strategy("bn-adapt", "standard", _batchnorm, needs_batchnorm=True,
                 description="BatchNorm statistics and affine + head"),
        Strategy("bn-adapt-adv", "adversarial", _batchnorm, accepts=EMPIRICAL, needs_batchnorm=True,
                 description="BatchNorm statistics and affine + head, adversarially"),
        Strategy("twins", "adversarial", _twins, _twins_export, accepts=EMPIRICAL, needs_batchnorm=True,
                 loss=_twins_loss, description="TWINS: frozen- and adaptive-statistics BatchNorm branches"),
        Strategy("autolora", "pgd", _autolora, _autolora_export, accepts=PGD_ONLY, hyper_keys=("rank",),
                 loss=_autolora_loss,
                 description="AutoLoRa: natural loss on a LoRA branch, adversarial loss on the full weights"),
        Strategy("certified-ft", "certified", _all, accepts=CERTIFIED,
                 description="everything trains with IBP / CROWN-IBP"),
        Strategy("scratch", "standard", _all, scratch=True, description="the architecture trained on the target"),
        Strategy("scratch-adv", "adversarial", _all, accepts=EMPIRICAL, scratch=True,
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


#: hyper-parameters that belong to some strategies only (``adv`` / ``certified``: the default objective's method)
STRATEGY_HYPER = ("adv", "certified", *sorted({k for s in STRATEGIES.values() for k in s.hyper_keys}))


def applies(plan: Strategy, key: str, objective: str | None = None) -> bool:
    """Whether the strategy-specific hyper-parameter ``key`` means something to ``plan`` (other keys always do)."""
    if key == "adv":
        return objective is None and plan.objective == "adversarial"
    if key == "certified":
        return objective is None and plan.objective == "certified"
    return key not in STRATEGY_HYPER or key in plan.hyper_keys


def check_hyper(plan: Strategy, hyper: dict[str, Any], objective: str | None = None) -> None:
    """RobverifyError for a strategy-specific hyper-parameter given for ``plan``, which would ignore it (the
    command line passes only the options given; a study passes each strategy only the ones that apply to it)."""
    for key in hyper:
        if not applies(plan, key, objective):
            users = [s.name for s in STRATEGIES.values() if applies(s, key)]
            why = f" (with --objective {objective}, the objective names the method)" if objective else ""
            raise RobverifyError(f"hyper-parameter {key} does not apply to strategy {plan.name}{why}; "
                                 f"it applies to {', '.join(users)}")
