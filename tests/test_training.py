"""Source training (trainers.loop, trainers.objectives, trainers.pipeline.train_source): gradients through the
bound engine, the effect of each method, determinism, resumption, and the exported model card."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import trainers.pipeline as pipeline
from properties.onnx_export import onnx_sha256
from robverify.engine.bounds import BoundOptions, compute_bounds
from robverify.errors import RobverifyError
from robverify.formats.model_card import ModelCard
from robverify.ir.from_module import from_module
from robverify.spec import robustness_spec
from trainers.evaluate import certified_accuracy, pgd_accuracy
from robverify.devices import resolve_device
from trainers.loop import fit
from trainers.objectives import Hyper, make_objective, robust_cross_entropy, certified_loss
from trainers.tasks import load_task
from trainers.zoo import build_model, build_model_from_config
from helpers import single_thread  # noqa: F401,E402 (an autouse fixture: small models train fastest on one thread)

EPS = 0.1


@pytest.fixture(scope="module")
def digits():
    return load_task("digits")


def _model(data, arch: str = "cnn-small", seed: int = 0, **options):
    return build_model(arch, data.input_shape, data.n_classes, mean=[0.3], std=[0.38], seed=seed, **options)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- certified loss


def test_robust_cross_entropy_at_eps_zero_is_cross_entropy(digits):
    model = _model(digits, "cnn-bn").eval()
    x, y = digits.x_train[:16], digits.y_train[:16]
    rows = compute_bounds(from_module(model, digits.input_shape), robustness_spec(x, y, 0.0, 10), "ibp",
                          BoundOptions(safety=0.0)).rows_lb
    expected = F.cross_entropy(model(x), y)
    assert torch.allclose(robust_cross_entropy(rows, y, 10), expected, atol=1e-5)


@pytest.mark.parametrize("crown_weight", [0.0, 1.0])
def test_bounds_give_gradients_to_every_module_parameter(digits, crown_weight):
    model = _model(digits, "cnn-bn")
    model.eval()
    x, y = digits.x_train[:32], digits.y_train[:32]
    loss = certified_loss(model, x, y, EPS, 10, crown_weight)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
    # The gradient is the loss's: a small step against it lowers the certified loss.
    with torch.no_grad():
        for p in model.parameters():
            p -= 1e-3 * p.grad / p.grad.norm()
    assert certified_loss(model, x, y, EPS, 10, crown_weight).item() < loss.item()


def test_certified_schedule_warms_up_then_ramps():
    objective = make_objective("crown-ibp", 0.2, 10, Hyper(warmup=0.2, ramp=0.5, kappa_end=0.5))
    assert objective.schedule(0.1) == (0.0, 1.0, 1.0)
    eps, kappa, crown = objective.schedule(0.45)
    assert eps == pytest.approx(0.1) and kappa == pytest.approx(0.75) and crown == pytest.approx(0.5)
    assert objective.schedule(0.9) == pytest.approx((0.2, 0.5, 0.0))
    assert make_objective("ibp", 0.2, 10, Hyper()).schedule(0.0)[2] == 0.0  # IBP never mixes in CROWN-IBP


# ---------------------------------------------------------------- methods on digits


@pytest.fixture(scope="module")
def trained(digits):
    """cnn-small trained on digits by every method with the same seed, data order and budget."""
    models = {}
    for method in ("standard", "pgd", "trades", "ibp", "crown-ibp"):
        model = _model(digits)
        fit(model, digits.x_train, digits.y_train, make_objective(method, EPS, 10, Hyper()), epochs=3, lr=3e-3,
            batch_size=32, seed=0)
        models[method] = model
    return models


@pytest.mark.parametrize("method", ["pgd", "trades"])
def test_adversarial_training_raises_pgd_accuracy(digits, trained, method):
    acc = {m: pgd_accuracy(trained[m], digits.x_test, digits.y_test, EPS, 10) for m in ("standard", method)}
    assert acc[method] > acc["standard"] + 0.05, acc


@pytest.mark.parametrize("method", ["ibp", "crown-ibp"])
def test_certified_training_raises_crown_certified_accuracy(digits, trained, method):
    acc = {m: certified_accuracy(trained[m], digits.x_test, digits.y_test, EPS, 10, method="crown")
           for m in ("pgd", method)}
    assert acc[method] > acc["pgd"] + 0.05, acc


# ---------------------------------------------------------------- the loop


def test_fit_is_deterministic_and_seed_matters(digits):
    runs = []
    for seed in (0, 0, 1):
        model = _model(digits, "mlp", widths=[32])
        fit(model, digits.x_train, digits.y_train, make_objective("pgd", EPS, 10, Hyper(attack_steps=3)), epochs=1,
            batch_size=64, seed=seed)
        runs.append(_state(model))
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_interrupted_fit_resumes_to_the_same_weights(digits, tmp_path):
    objective = make_objective("pgd", EPS, 10, Hyper(attack_steps=3))
    kwargs = dict(epochs=3, batch_size=64, seed=0, key="k")

    full = _model(digits, "mlp", widths=[32])
    fit(full, digits.x_train, digits.y_train, objective, checkpoint=tmp_path / "a.pt", **kwargs)

    def interrupt(epoch: int) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    model = _model(digits, "mlp", widths=[32])
    with pytest.raises(KeyboardInterrupt):
        fit(model, digits.x_train, digits.y_train, objective, checkpoint=tmp_path / "b.pt", after_epoch=interrupt,
            **kwargs)
    assert torch.load(tmp_path / "b.pt", weights_only=False)["epoch"] == 1
    resumed = _model(digits, "mlp", widths=[32])
    result = fit(resumed, digits.x_train, digits.y_train, objective, checkpoint=tmp_path / "b.pt", **kwargs)
    assert result.resumed_epochs == 1
    expected = _state(full)
    assert all(torch.equal(expected[k], v) for k, v in _state(resumed).items())

    other = _model(digits, "mlp", widths=[32])  # another configuration's checkpoint is not reused
    assert fit(other, digits.x_train, digits.y_train, objective, checkpoint=tmp_path / "b.pt",
               **{**kwargs, "key": "other"}).resumed_epochs == 0


def test_nan_loss_is_a_clear_error(digits):
    def nan_objective(model, x, y, progress):
        return model(x).sum() * math.nan

    with pytest.raises(RobverifyError, match="diverged: loss is nan at epoch 1, step 1"):
        fit(_model(digits, "mlp", widths=[8]), digits.x_train, digits.y_train, nan_objective, epochs=1)


def test_device_and_hyper_parameters_are_checked():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(RobverifyError, match="expected auto, cpu, cuda"):
        resolve_device("tpu")
    with pytest.raises(RobverifyError, match="unknown hyper-parameter 'learning_rate'"):
        Hyper.parse({"learning_rate": 0.1})
    with pytest.raises(RobverifyError, match="adv: expected pgd or trades"):
        Hyper.parse({"adv": "fgsm"})


# ---------------------------------------------------------------- train_source


def test_train_source_exports_a_complete_consistent_card(tmp_path):
    path = pipeline.train_source("digits[0-4]", "mlp", "trades", EPS, 1, tmp_path, seed=3, progress=False, lr=3e-3)
    card = ModelCard.from_json(tmp_path / "model.json")
    assert path == tmp_path / "model.onnx" and (tmp_path / "model.pt").is_file()
    assert card.onnx_sha256 == onnx_sha256(path)
    assert card.task == "digits[0-4]" and card.source_task is None and card.strategy is None and card.seed == 3
    assert card.training["method"] == "trades" and card.training["trades_beta"] == 6.0 and card.training["lr"] == 3e-3
    assert card.eps == EPS and card.evaluation["certify_method"] == "crown-ibp"
    for value in (card.clean_acc, card.pgd_acc, card.certified_acc):
        assert 0 <= value <= 1
    assert card.pgd_acc <= card.clean_acc and card.certified_acc <= card.pgd_acc
    assert card.train_time_s > 0 and card.parity_max_abs_diff <= 1e-4
    model = build_model_from_config(card.architecture)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    assert card.trainable == model.trainable_counts()
    import onnxruntime as ort

    data = load_task("digits[0-4]", seed=3)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(["logits"], {"input": data.x_test.numpy()})
    acc = float((onnx_logits.argmax(1) == data.y_test.numpy()).mean())
    assert acc == pytest.approx(card.clean_acc)  # the card describes the exported weights
    with torch.no_grad():
        np.testing.assert_allclose(model.eval()(data.x_test).numpy(), onnx_logits, atol=1e-4)


def test_train_source_resumes_after_interruption(tmp_path, monkeypatch):
    args = ("digits[0-4]", "mlp", "pgd", EPS, 2)
    pipeline.train_source(*args, tmp_path / "full", progress=False, attack_steps=3)

    def interrupt(epoch: int) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "fit", functools.partial(pipeline.fit, after_epoch=interrupt))
        with pytest.raises(KeyboardInterrupt):
            pipeline.train_source(*args, tmp_path / "cut", progress=False, attack_steps=3)
    assert (tmp_path / "cut" / "checkpoint.pt").is_file() and not (tmp_path / "cut" / "model.onnx").exists()
    pipeline.train_source(*args, tmp_path / "cut", progress=False, attack_steps=3)
    full = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "model.pt", weights_only=True)
    assert all(torch.equal(full[k], cut[k]) for k in full)
    assert json.loads((tmp_path / "cut" / "model.json").read_text())["pgd_acc"] == \
        json.loads((tmp_path / "full" / "model.json").read_text())["pgd_acc"]


@pytest.mark.parametrize("method, eps, match", [
    ("fgsm", 0.1, "unknown training method"),
    ("pgd", 1.5, r"eps must be a number in \[0, 1\]"),
    ("pgd", 0.0, "needs a training radius"),
])
def test_train_source_rejects_bad_input(tmp_path, method, eps, match):
    with pytest.raises(RobverifyError, match=match):
        pipeline.train_source("digits", "mlp", method, eps, 1, tmp_path, progress=False)
