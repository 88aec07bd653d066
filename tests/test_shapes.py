"""Shapes at every entry point (:mod:`robverify.ir.layout`): a batch that does not fit the model's input is a
one-line RobverifyError naming both shapes; a fixed leading 1 in an ONNX input (torch.onnx.export without dynamic
axes, VNN-COMP files) is read as the batch dimension, so the natural batch works from Python exactly as the
command line's layout does."""

from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import single_thread  # noqa: F401 (fixture)
from robverify.backends import AttackConfig, get_backend
from robverify.engine.attacks import pgd_attack
from robverify.engine.bounds import compute_bounds, interval_bounds
from robverify.errors import RobverifyError
from robverify.ir.layout import accepted_shapes, natural_shape
from robverify.ir.model import inputs_for, load_model
from robverify.spec import Method, Spec, robustness_spec

N_CLASSES = 10


def _issue_cnn() -> nn.Module:
    """The network of the issue: two stride-2 convolutions on MNIST-sized inputs."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 16, 4, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(1568, 100), nn.ReLU(), nn.Linear(100, N_CLASSES)).eval()


def _export(net: nn.Module, path: Path, shape: tuple[int, ...], dynamic: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, *shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["y"],
                          dynamic_axes={"input": {0: "N"}, "y": {0: "N"}} if dynamic else None)
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    """``(module, fixed-batch LoadedModel, dynamic-batch LoadedModel)`` of the issue's CNN."""
    net = _issue_cnn()
    root = tmp_path_factory.mktemp("shapes")
    fixed = load_model(_export(net, root / "fixed.onnx", (1, 28, 28), dynamic=False))
    dynamic = load_model(_export(net, root / "dynamic.onnx", (1, 28, 28), dynamic=True))
    return net, fixed, dynamic


def _batch(n: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand((n, 1, 28, 28), generator=torch.Generator().manual_seed(seed))


def test_the_leading_one_rule(cnn):
    _, fixed, dynamic = cnn
    assert fixed.graph.input_shape == (1, 1, 28, 28) and not fixed.graph.dynamic_batch
    assert accepted_shapes(fixed.graph) == ((1, 1, 28, 28), (1, 28, 28))
    assert dynamic.graph.input_shape == (1, 28, 28) and dynamic.graph.dynamic_batch
    assert accepted_shapes(dynamic.graph) == ((1, 28, 28),)  # there the 1 is a channel
    assert natural_shape((1, 784, 1), False) == (784, 1)
    assert natural_shape((1,), False) is None  # a rank-1 input: the 1 is the sample
    assert natural_shape((2, 3), False) is None
    assert natural_shape((1, 28, 28), True) is None


@pytest.mark.parametrize("method", list(Method))
def test_natural_batch_bounds_equal_the_graph_layout_and_hold(cnn, method):
    net, fixed, dynamic = cnn
    x = _batch(4)
    with torch.no_grad():
        label = net(x).argmax(1)
    eps = torch.tensor([0.0, 0.003, 0.02, 0.1])
    natural = robustness_spec(x, label, eps, N_CLASSES)
    canonical = robustness_spec(x.unsqueeze(1), label, eps, N_CLASSES)
    a = compute_bounds(fixed.graph, natural, method).rows_lb
    b = compute_bounds(fixed.graph, canonical, method).rows_lb
    c = compute_bounds(dynamic.graph, natural, method).rows_lb
    assert a.shape == (4, N_CLASSES - 1) and bool(torch.isfinite(a).all())
    torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same inputs, the same computation
    tol = 1e-4 if method is Method.ALPHA_CROWN else 1e-5  # (an optimisation: float order moves it a little)
    torch.testing.assert_close(a, c, rtol=tol, atol=tol)  # the same network exported with a dynamic batch
    # sound: below the rows' values at sampled points of each box (evaluated by the torch module in float64)
    gen = torch.Generator().manual_seed(1)
    u = torch.rand((4, 64, 1, 28, 28), generator=gen, dtype=torch.float64)
    points = natural.x_lo.double().unsqueeze(1) + u * (natural.x_hi - natural.x_lo).double().unsqueeze(1)
    with torch.no_grad():
        y = copy.deepcopy(net).double()(points.reshape(-1, 1, 28, 28)).reshape(4, 64, -1)
    reached = torch.einsum("bso,bmo->bms", natural.C.double(), y).amin(dim=1)
    assert bool((a.double() <= reached).all())


def test_interval_bounds_take_both_layouts(cnn):
    _, fixed, _ = cnn
    x = _batch(3)
    lo, hi = interval_bounds(fixed.graph, x - 0.01, x + 0.01)
    lo2, hi2 = interval_bounds(fixed.graph, (x - 0.01).unsqueeze(1), (x + 0.01).unsqueeze(1))
    assert torch.equal(lo, lo2) and torch.equal(hi, hi2) and lo.shape == (3, 1, N_CLASSES)


def test_predict_forward_attack_and_backend_take_the_natural_batch(cnn):
    net, fixed, _ = cnn
    x = _batch(4)
    with torch.no_grad():
        expected = net(x)
        torch.testing.assert_close(fixed.graph(x), expected, rtol=0, atol=1e-5)
    assert torch.equal(fixed.predict(x), expected.argmax(1))
    assert torch.equal(fixed.predict(x.unsqueeze(1)), expected.argmax(1))
    label = (expected.argmax(1) + 1) % N_CLASSES  # wrong labels: the clean points are counterexamples
    spec = robustness_spec(x, label, 0.01, N_CLASSES)
    attack = pgd_attack(fixed.graph, spec, steps=5, restarts=1)
    assert attack.x_adv.shape == x.shape and bool(attack.found.all())
    assert bool(fixed.confirm(spec, attack.x_adv, attack.found).all())
    backend = get_backend("native")(fixed, "crown", attack=AttackConfig(steps=5, restarts=1))
    verified = backend.verify(spec)
    falsified = backend.falsify(spec, x)
    assert not bool(verified.verified.any()) and bool(falsified.falsified.all())
    assert falsified.x_adv.shape == x.shape  # counterexamples in the layout they were asked in
    assert bool((falsified.distance <= 0.01 + 1e-6).all())


def _refused(call, *needles: str) -> str:
    with pytest.raises(RobverifyError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message
    return message


@pytest.mark.parametrize("bad", [(4, 1, 14, 14), (4, 784), (4, 28, 28), (4, 2, 1, 28, 28), (4, 1, 1, 1, 28, 28)])
def test_batches_that_do_not_fit_are_refused_everywhere(cnn, bad):
    net, fixed, _ = cnn
    x = torch.rand(bad)
    label = torch.zeros(bad[0], dtype=torch.long)
    spec = robustness_spec(x, label, 0.01, N_CLASSES)
    shapes = (str(list(bad)), "[1, 1, 28, 28]", "pass [N, 1, 28, 28] or [N, 1, 1, 28, 28]")
    for method in Method:
        _refused(lambda: compute_bounds(fixed.graph, spec, method), *shapes)
    _refused(lambda: interval_bounds(fixed.graph, x, x), *shapes)
    _refused(lambda: pgd_attack(fixed.graph, spec), *shapes)
    _refused(lambda: fixed.predict(x), *shapes)
    _refused(lambda: fixed.graph(x), *shapes)
    _refused(lambda: fixed.confirm(spec, x, torch.ones(bad[0], dtype=torch.bool)), *shapes)
    backend = get_backend("native")(fixed, "crown")
    _refused(lambda: backend.verify(spec), *shapes)
    _refused(lambda: backend.falsify(spec, x), *shapes)


def test_dynamic_batch_model_refuses_a_missing_channel(cnn):
    _, _, dynamic = cnn
    x = torch.rand(4, 28, 28)
    spec = robustness_spec(x, torch.zeros(4, dtype=torch.long), 0.01, N_CLASSES)
    _refused(lambda: compute_bounds(dynamic.graph, spec, "crown"), "[4, 28, 28]", "the model input [N, 1, 28, 28]")
    _refused(lambda: dynamic.predict(x), "[4, 28, 28]", "[N, 1, 28, 28]")
    _refused(lambda: dynamic.predict(torch.rand(4, 1, 1, 28, 28)), "[4, 1, 1, 28, 28]", "[N, 1, 28, 28]")


def test_spec_rows_must_fit_the_outputs_and_x_ref_the_batch(cnn):
    _, fixed, _ = cnn
    x = _batch(2)
    spec = robustness_spec(x, torch.zeros(2, dtype=torch.long), 0.01, 5)  # 5 classes, the model has 10
    _refused(lambda: compute_bounds(fixed.graph, spec), "5 outputs", "the model has 10")
    _refused(lambda: pgd_attack(fixed.graph, spec), "5 outputs")
    good = robustness_spec(x, torch.zeros(2, dtype=torch.long), 0.01, N_CLASSES)
    _refused(lambda: get_backend("native")(fixed, "ibp").falsify(good, _batch(3)), "3 samples", "2 specs")


def test_onnxruntime_judge_never_regroups_values(cnn):
    _, fixed, _ = cnn
    _refused(lambda: fixed.runtime.logits(torch.rand(4, 1, 14, 14)), "[4, 1, 14, 14]", "196 values")
    assert fixed.runtime.logits(torch.rand(4, 784)).shape == (4, N_CLASSES)  # same values per sample: read as is


def test_cli_reshape_path_is_unchanged(cnn):
    """The command line keeps feeding the graph's own layout and records the reshape in run.json."""
    _, fixed, dynamic = cnn
    x = _batch(3)
    fitted, record = inputs_for(fixed, x)
    assert fitted.shape == (3, 1, 1, 28, 28) and record == {"from": [1, 28, 28], "to": [1, 1, 28, 28]}
    assert inputs_for(dynamic, x) == (x, None)
    with pytest.raises(RobverifyError, match="do not fit"):
        inputs_for(fixed, torch.rand(3, 1, 14, 14))


# ------------------------------------------------------------------------------------------------ VNN-COMP


def test_vnncomp_fixed_one_is_the_batch(vnncomp_dir):
    model = load_model(vnncomp_dir / "mnistfc" / "mnist-net_256x2.onnx")
    assert model.graph.input_shape == (1, 784, 1) and accepted_shapes(model.graph)[1] == (784, 1)
    x = torch.rand(5, 784, 1, generator=torch.Generator().manual_seed(0))
    label = model.predict(x)
    assert torch.equal(label, model.predict(x.unsqueeze(1)))
    spec = robustness_spec(x, label, 0.01, 10)
    a = compute_bounds(model.graph, spec, "crown").rows_lb
    b = compute_bounds(model.graph, robustness_spec(x.unsqueeze(1), label, 0.01, 10), "crown").rows_lb
    assert torch.equal(a, b)
    _refused(lambda: model.predict(torch.rand(5, 784)), "[5, 784]", "pass [N, 784, 1] or [N, 1, 784, 1]")


def test_vnncomp_rank_one_input_is_one_sample(vnncomp_dir):
    """``test_nano.onnx`` declares its input ``[1]``: that 1 is the only feature, a batch is ``[N, 1]``."""
    model = load_model(vnncomp_dir / "test" / "test_nano.onnx")
    assert model.graph.input_shape == (1,) and accepted_shapes(model.graph) == ((1,),)
    x = torch.rand(6, 1)
    assert model.predict(x).shape == (6,)
    _refused(lambda: model.predict(torch.rand(6)), "[6]", "the model input [1]", "pass [N, 1]")
    spec = Spec(x - 0.1, x + 0.1, torch.ones(6, 1, 1), torch.zeros(6, 1), torch.zeros(1, dtype=torch.long))
    rows = compute_bounds(model.graph, spec, "crown").rows_lb
    assert rows.shape == (6, 1) and bool(torch.isfinite(rows).all())
    assert math.isfinite(float(np.asarray(model.runtime.logits(x)).sum()))


@pytest.mark.parametrize("layout", ["natural", "graph"])
def test_empty_batches_give_empty_answers(cnn, layout):
    """A batch of no samples (e.g. none correctly classified) is answered, not crashed on."""
    _, fixed, _ = cnn
    x = torch.rand(0, 1, 28, 28) if layout == "natural" else torch.rand(0, 1, 1, 28, 28)
    spec = robustness_spec(x, torch.zeros(0, dtype=torch.long), 0.01, N_CLASSES)
    for method in Method:
        result = compute_bounds(fixed.graph, spec, method)
        assert result.rows_lb.shape == (0, N_CLASSES - 1) and result.margin_lb.shape == (0,)
    lo, _ = interval_bounds(fixed.graph, x, x)
    assert lo.shape == (0, 1, N_CLASSES)
    assert pgd_attack(fixed.graph, spec).x_adv.shape == x.shape
    assert fixed.predict(x).shape == (0,) and fixed.graph(x).shape == (0, N_CLASSES)
    backend = get_backend("native")(fixed, "crown")
    assert backend.verify(spec).verified.shape == (0,)
    falsified = backend.falsify(spec, x)
    assert falsified.x_adv.shape == x.shape and falsified.distance.shape == (0,)


# ------------------------------------------------------------------------------------------------ every backend

_NEEDS = {"lirpa": "auto_LiRPA", "verona": "ada_verona", "marabou": "maraboupy"}


def _backend_options(name: str, folder: Path):
    from robverify.backends import BackendOptions

    if name == "verona":
        return BackendOptions(verifier="native-crown")
    if name == "external":
        script = folder / "run_instance.sh"
        script.write_text("#!/bin/sh\necho unknown > \"$5\"\n")
        script.chmod(0o755)
        return BackendOptions(verifier_cmd=str(script), timeout=10.0)
    return BackendOptions(timeout=10.0)


@pytest.fixture(scope="module")
def small_fixed(tmp_path_factory):
    """A small CNN exported with torch's default fixed batch of 1 (input ``[1, 1, 6, 6]``), 3 classes."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 8), nn.ReLU(),
                        nn.Linear(8, 3)).eval()
    root = tmp_path_factory.mktemp("small")
    return net, load_model(_export(net, root / "small.onnx", (1, 6, 6), dynamic=False)), root


@pytest.mark.parametrize("name", ["native", "lirpa", "verona", "marabou", "external"])
def test_every_backend_takes_the_natural_batch_and_refuses_misfits(small_fixed, name):
    import importlib.util

    from robverify.backends import backend_names

    assert name in backend_names()
    if name in _NEEDS and importlib.util.find_spec(_NEEDS[name]) is None:
        pytest.skip(f"{_NEEDS[name]} is not installed")
    net, model, root = small_fixed
    backend = get_backend(name)(model, "crown", attack=AttackConfig(steps=10, restarts=1),
                                options=_backend_options(name, root))
    x = torch.rand((4, 1, 6, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        label = net(x).argmax(1)
    spec = robustness_spec(x, label, torch.tensor([0.0, 0.01, 0.05, 0.3]), 3)
    natural = backend.verify(spec)
    own = get_backend("native")(model, "crown").verify(
        Spec(spec.x_lo.unsqueeze(1), spec.x_hi.unsqueeze(1), spec.C, spec.d, spec.group))
    assert natural.verified.shape == (4,) and bool(natural.verified[0])  # eps 0: the clean point
    if name in ("native", "verona"):
        assert torch.equal(natural.margin_lb, own.margin_lb)
    falsified = backend.falsify(spec, x)
    assert falsified.x_adv.shape == x.shape
    assert not bool((falsified.falsified & natural.verified).any())
    bad = robustness_spec(torch.rand(4, 36), label, 0.01, 3)
    _refused(lambda: backend.verify(bad), "[4, 36]", "[1, 1, 6, 6]")
    _refused(lambda: backend.falsify(bad, torch.rand(4, 36)), "[4, 36]", "[1, 1, 6, 6]")
