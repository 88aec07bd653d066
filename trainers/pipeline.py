"""Train a source model or transfer one, evaluate it, and export it with its model card.

:func:`train_source` and :func:`transfer_model` are what ``robverify train`` / ``robverify transfer`` and the study
runner call. Each writes ``out/model.onnx`` (parity-checked), ``out/model.pt``, ``out/model.json`` (the card) and
``out/checkpoint.pt`` (per epoch: a rerun with the same arguments resumes, or re-exports a finished run).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from properties.onnx_export import export_onnx, onnx_sha256
from robverify.errors import RobverifyError
from robverify.formats.model_card import ModelCard
from robverify.spec import Method
from trainers.evaluate import certified_accuracy, pgd_accuracy
from trainers.freezing import batchnorm_layers, freeze, new_head
from robverify.devices import resolve_device
from trainers.certified import ibp_initialise
from trainers.loop import fit
from trainers.objectives import Hyper, TrainMethod, make_objective
from trainers.strategies import TransferContext, check_hyper, get_strategy, strategies_with_blocks
from trainers.tasks import TaskData, load_task
from trainers.training import accuracy
from trainers.zoo import BlockNet, arch_config, build_model, build_model_from_config

__all__ = ["load_source", "parse_seeds", "seed_folders", "train_source", "transfer_model"]

log = logging.getLogger(__name__)

#: PGD of the evaluation (robverify.engine.attacks.pgd_attack) and the bound method of the certified accuracy
EVAL_PGD_STEPS, EVAL_PGD_RESTARTS, EVAL_METHOD = 40, 2, Method.CROWN_IBP
#: source training samples RiFT's criticality probe reads; share of target training data held out for RiFT's alpha
RIFT_SOURCE_SAMPLES, RIFT_VAL_FRACTION = 512, 0.1


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps <= 1:
        raise RobverifyError(f"eps must be a number in [0, 1], got {eps!r}")
    return float(eps)


def _check_epochs(epochs: Any) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise RobverifyError(f"epochs: expected a positive integer, got {epochs!r}")
    return epochs


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``: distinct non-negative integers, at least one."""
    parts = [p.strip() for p in str(text).split(",")]
    if not all(p.isdigit() for p in parts) or len(set(map(int, parts))) != len(parts):
        raise RobverifyError(f"--seeds: expected distinct non-negative integers separated by commas, got {text!r}")
    return [int(p) for p in parts]


def seed_folders(out: Path, seeds: list[int]) -> list[tuple[int, Path]]:
    """Where each seed's run goes: ``out`` itself for one seed, ``out/seed-<n>`` for several."""
    out = Path(out)
    if len(seeds) == 1:
        return [(seeds[0], out)]
    return [(seed, out / f"seed-{seed}") for seed in seeds]


def _key(**parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=str)


def _evaluate(model: BlockNet, data: TaskData, eps: float, seed: int) -> tuple[dict[str, float], dict[str, Any]]:
    started = time.perf_counter()
    x, y = data.x_test, data.y_test
    scores = {
        "clean_acc": accuracy(model, x, y),
        "pgd_acc": pgd_accuracy(model, x, y, eps, data.n_classes, steps=EVAL_PGD_STEPS,
                                restarts=EVAL_PGD_RESTARTS, seed=seed),
        "certified_acc": certified_accuracy(model, x, y, eps, data.n_classes, method=EVAL_METHOD),
    }
    how = {"split": "test", "n_samples": int(len(y)), "pgd_steps": EVAL_PGD_STEPS,
           "pgd_restarts": EVAL_PGD_RESTARTS, "certify_method": EVAL_METHOD.value,
           "time_s": time.perf_counter() - started}
    return scores, how


def _export(model: BlockNet, data: TaskData, out: Path, card: ModelCard, seed: int) -> Path:
    model = model.cpu().eval()
    report = export_onnx(model, out / "model.onnx", data.input_shape, card=card, seed=seed)
    log.info("exported %s (parity max |diff| %.2e)", report.path, report.max_abs_diff)
    return report.path


def train_source(task: str, arch: str, method: str, eps: float, epochs: int, out: Path, *, seed: int = 0,
                 data_root: Path | None = None, device: str = "cpu", progress: bool = True,
                 **hyper: Any) -> Path:
    """Train ``arch`` on ``task`` with ``method`` (standard, pgd, trades, ibp, crown-ibp) at radius ``eps``.

    ``hyper``: see :class:`trainers.objectives.Hyper` (lr, batch_size, attack_steps, trades_beta, warmup, ...).
    Returns ``out/model.onnx``.
    """
    train_method = TrainMethod.parse(method)
    eps = _check_eps(eps)
    epochs = _check_epochs(epochs)
    if train_method.adversarial and eps == 0:
        raise RobverifyError(f"method {train_method.value} needs a training radius: --eps must be > 0")
    params = Hyper.parse(hyper)
    dev = resolve_device(device)
    out = Path(out)
    data = load_task(task, data_root=data_root, seed=seed)
    mean = data.x_train.mean(dim=(0, 2, 3)).tolist()
    std = data.x_train.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()
    model = build_model(arch, data.input_shape, data.n_classes, mean=mean, std=std, seed=seed)
    training = {"method": train_method.value, "eps": eps, "epochs": epochs, **params.for_method(train_method)}
    if params.uses_ibp_init(train_method):
        training["ibp_init"] = ibp_initialise(model, seed) > 0
    key = _key(kind="train", task=str(data.task), arch=arch_config(model), seed=seed, **training)
    result = fit(model, data.x_train, data.y_train, make_objective(train_method, eps, data.n_classes, params),
                 epochs=epochs, lr=params.lr, batch_size=params.batch_size, seed=seed, device=dev,
                 checkpoint=out / "checkpoint.pt", key=key, progress=progress, schedule=params.schedule,
                 description=f"{train_method.value} {data.task}")
    trainable = model.trainable_counts()
    scores, how = _evaluate(model, data, eps, seed)
    card = ModelCard(architecture=arch_config(model), task=str(data.task), source_task=None, strategy=None,
                     training=training, seed=seed, eps=eps, evaluation=how, train_time_s=result.train_time_s,
                     trainable=trainable, **scores)
    return _export(model, data, out, card, seed)


def load_source(source_dir: Path) -> tuple[BlockNet, ModelCard, str]:
    """The model in ``source_dir`` (``model.pt`` rebuilt from ``model.json``'s architecture), its card and the
    sha256 of its ``model.onnx``."""
    source_dir = Path(source_dir)
    if not source_dir.is_dir():
        raise RobverifyError(f"source {source_dir} is not a directory (expected the --out folder of robverify train)")
    missing = [name for name in ("model.onnx", "model.pt", "model.json") if not (source_dir / name).is_file()]
    if missing:
        raise RobverifyError(f"source {source_dir} holds no model: {', '.join(missing)} missing "
                             f"(expected the --out folder of robverify train)")
    card = ModelCard.from_json(source_dir / "model.json")
    model = build_model_from_config(card.architecture)
    try:
        state = torch.load(source_dir / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as exc:
        raise RobverifyError(f"source {source_dir}/model.pt does not match its model card: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    model.eval()
    return model, card, onnx_sha256(source_dir / "model.onnx")


def _similarity(source: BlockNet, transferred: BlockNet, source_data: TaskData, target_data: TaskData,
                seed: int) -> dict[str, float]:
    try:
        from robverify.analysis.similarity import transfer_similarity
    except ModuleNotFoundError as exc:
        if exc.name != "robverify.analysis.similarity":
            raise
        log.warning("robverify.analysis.similarity is not available: the model card's similarity stays empty")
        return {}
    scores = transfer_similarity(source.cpu().eval(), transferred.cpu().eval(), source_data, target_data, seed=seed)
    finite = {str(k): float(v) for k, v in scores.items() if math.isfinite(float(v))}
    if len(finite) < len(scores):
        log.warning("similarity scores %s are not finite and are left out of the model card",
                    ", ".join(sorted(set(map(str, scores)) - set(finite))))
    return finite


def _holdout(data: TaskData, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Seeded split of the target training data: (x_fit, y_fit, x_val, y_val), ``RIFT_VAL_FRACTION`` held out."""
    n = len(data.y_train)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, int(round(RIFT_VAL_FRACTION * n)))
    fit_idx, val_idx = order[n_val:], order[:n_val]
    return data.x_train[fit_idx], data.y_train[fit_idx], data.x_train[val_idx], data.y_train[val_idx]


def _check_batchnorm(plan_name: str, model: BlockNet) -> None:
    if not batchnorm_layers(model.blocks):
        arch = (model.config or {}).get("arch", type(model).__name__)
        raise RobverifyError(f"strategy {plan_name} needs BatchNorm layers; architecture {arch} has none (try cnn-bn)")


def transfer_model(source_dir: Path, task: str, strategy: str, out: Path, *, blocks: int | None = None,
                   epochs: int = 2, seed: int = 0, data_root: Path | None = None, device: str = "cpu",
                   eps: float | None = None, objective: str | None = None, progress: bool = True,
                   **hyper: Any) -> Path:
    """Transfer the model in ``source_dir`` to ``task`` with ``strategy`` and export it to ``out/model.onnx``.

    ``blocks``: K of ``partial-ft`` / ``partial-ft-adv`` (the last K blocks train). ``eps``: training and
    evaluation radius; default the source card's training eps. ``objective``: the training method (a
    :class:`~trainers.objectives.TrainMethod` value; None: the strategy's default), an error where the strategy does
    not train with it. ``hyper``: see :class:`trainers.objectives.Hyper` (``adv`` picks pgd or trades and
    ``certified`` ibp or crown-ibp for strategies whose default objective is of that kind, ``rank`` the LoRA rank,
    ...); a strategy-specific one the strategy would ignore is an error.
    """
    plan = get_strategy(strategy)
    epochs = _check_epochs(epochs)
    check_hyper(plan, hyper, objective)
    params = Hyper.parse(hyper)
    if params.ibp_init and not plan.scratch:
        raise RobverifyError(f"ibp_init initialises a model trained from scratch; strategy {plan.name} starts from "
                             f"the source's weights (use scratch or scratch-adv)")
    method = plan.method(params, objective)
    source, source_card, parent_hash = load_source(source_dir)
    n_blocks = len(source.block_names())
    if plan.needs_blocks:
        if blocks is None:
            raise RobverifyError(f"strategy {plan.name} needs --blocks K (1 to {n_blocks}, the last K blocks train)")
        if isinstance(blocks, bool) or not isinstance(blocks, int) or not 1 <= blocks <= n_blocks:
            raise RobverifyError(f"--blocks {blocks}: expected 1 to {n_blocks} (the source model has {n_blocks} blocks)")
    elif blocks is not None:
        raise RobverifyError(f"--blocks only applies to {' and '.join(strategies_with_blocks())}, not to {plan.name}")
    if plan.needs_batchnorm:
        _check_batchnorm(plan.name, source)
    eps = _check_eps(source_card.training.get("eps", 0.0) if eps is None else eps)
    if method.adversarial and eps == 0:
        raise RobverifyError(f"strategy {plan.name} trains with {method.value} and needs a radius: pass --eps "
                             f"(the source model was trained with eps 0)")
    dev = resolve_device(device)
    out = Path(out)
    target = load_task(task, data_root=data_root, seed=seed)
    if list(target.input_shape) != list(source_card.architecture["input_shape"]):
        raise RobverifyError(f"task {target.task} has inputs {list(target.input_shape)} but the source model expects "
                             f"{source_card.architecture['input_shape']} (add a transform such as +resize28)")
    source_data = load_task(source_card.task, data_root=data_root, seed=seed)

    x_fit, y_fit, x_val, y_val = (target.x_train, target.y_train, target.x_train[:0], target.y_train[:0])
    if plan.holdout:
        x_fit, y_fit, x_val, y_val = _holdout(target, seed)
    n_probe = min(RIFT_SOURCE_SAMPLES, len(source_data.y_train))
    ctx = TransferContext(source=source, x_source=source_data.x_train[:n_probe], y_source=source_data.y_train[:n_probe],
                          x_val=x_val.to(dev), y_val=y_val.to(dev), eps=eps, hyper=params, blocks=blocks, seed=seed,
                          method=method, x_fit=x_fit, y_fit=y_fit, epochs=epochs)

    ibp_init = False
    if plan.scratch:
        model = build_model_from_config({**source_card.architecture, "n_classes": target.n_classes}, seed=seed)
        if params.uses_ibp_init(method):
            ibp_init = ibp_initialise(model, seed) > 0
    else:
        model = copy.deepcopy(source)
        freeze(model)
        new_head(model, target.n_classes, seed)
    started = time.perf_counter()
    plan.prepare(model, ctx)
    extra_time = time.perf_counter() - started
    trainable = model.trainable_counts()
    training = {"method": method.value, "eps": eps, "epochs": epochs, **params.for_method(method)}
    if ibp_init:
        training["ibp_init"] = True
    if plan.needs_blocks:
        training["blocks"] = blocks
    for name in plan.hyper_keys:
        training[name] = getattr(params, name)
    key = _key(kind="transfer", parent=parent_hash, task=str(target.task), strategy=plan.name, seed=seed, **training)
    result = fit(model, x_fit, y_fit, plan.objective_for(ctx, target.n_classes), epochs=epochs,
                 lr=params.lr, batch_size=params.batch_size, seed=seed, device=dev, checkpoint=out / "checkpoint.pt",
                 key=key, progress=progress, schedule=params.schedule,
                 description=f"{plan.name} {source_card.task} -> {target.task}")
    started = time.perf_counter()
    plan.finish(model, ctx)
    train_time = result.train_time_s + extra_time + (time.perf_counter() - started)
    training.update(ctx.notes)

    scores, how = _evaluate(model, target, eps, seed)
    similarity = _similarity(source, model, source_data, target, seed)
    card = ModelCard(architecture=arch_config(model), task=str(target.task), source_task=source_card.task,
                     strategy=plan.name, training=training, seed=seed, eps=eps, evaluation=how,
                     train_time_s=train_time, parent_hash=parent_hash, similarity=similarity, trainable=trainable,
                     **scores)
    return _export(model, target, out, card, seed)
