"""Property-based tests (hypothesis): random torch networks, exported with ``torch.onnx.export`` (fixed batch of 1
or dynamic batch), read by robverify's importer and bounded with every method at batch sizes 1 to 17.

Each drawn network is an MLP (optionally with BatchNorm1d) or an image network: an optional ``Normalize``, then
convolutions (strided, padded, dilated, grouped; with BatchNorm2d, ReLU / sigmoid / tanh or no activation), average
and max pooling (padded, overlapping, dilated), and residual blocks (identity or projection shortcut), then a small
head. Every bound must lie below the value of its row at
dense samples of each box (evaluated in float64 by the torch module, an oracle independent of the IR) and at the
PGD points of every row (evaluated by onnxruntime), methods must be ordered (IBP <= CROWN-IBP <= CROWN <=
alpha-CROWN), and the natural batch of a fixed-batch export gives exactly the bounds of the graph's own layout.

The default suite runs a small derandomized budget; ``@pytest.mark.slow`` runs a larger one.
"""

from __future__ import annotations

import copy
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from torch import nn

from helpers import per_row, single_thread  # noqa: F401 (fixture)
from robverify.engine.attacks import pgd_attack
from robverify.engine.bounds import compute_bounds
from robverify.ir.blocks import Normalize, Residual
from robverify.ir.model import load_model
from robverify.spec import Method, Spec, robustness_spec

ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
EPS = (0.0, 0.002, 0.01, 0.05, 0.2)


# ------------------------------------------------------------------------------------------------ networks


def _conv_out(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


@st.composite
def image_layers(draw, shape: tuple[int, int, int], width: int = 3
                 ) -> tuple[list[tuple], tuple[int, int, int]]:
    """Layer descriptions for an image network on ``shape`` (up to ``2 * width`` channels) and the shape they
    produce."""
    c, h, w = shape
    layers: list[tuple] = []
    if draw(st.booleans()):
        layers.append(("normalize",))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["conv", "conv", "avgpool", "maxpool", "residual", "residual-proj"]))
        if kind == "conv":
            k = draw(st.integers(1, 3))
            stride = draw(st.integers(1, 2))
            dilation = draw(st.sampled_from([1, 1, 2])) if k > 1 else 1
            pad = draw(st.integers(0, dilation * (k // 2)))
            groups = 2 if c % 2 == 0 and draw(st.booleans()) else 1
            out = groups * draw(st.integers(1, width))
            if _conv_out(h, k, stride, pad, dilation) < 1 or _conv_out(w, k, stride, pad, dilation) < 1:
                continue
            bn = draw(st.booleans())
            act = draw(st.sampled_from(["relu", "relu", "relu", "sigmoid", "tanh", None]))
            layers.append(("conv", c, out, k, stride, pad, bn, act, dilation, groups))
            c, h, w = out, _conv_out(h, k, stride, pad, dilation), _conv_out(w, k, stride, pad, dilation)
        elif kind in ("avgpool", "maxpool"):
            k = draw(st.integers(2, 3))
            stride = draw(st.integers(1, 2))
            pad = draw(st.integers(0, k // 2))
            # avg: count_include_pad; max: dilation
            extra = draw(st.booleans()) if kind == "avgpool" else draw(st.sampled_from([1, 1, 2]))
            dilation = 1 if kind == "avgpool" else extra
            if _conv_out(h, k, stride, pad, dilation) < 1 or _conv_out(w, k, stride, pad, dilation) < 1:
                continue
            layers.append((kind, k, stride, pad, extra))
            h, w = _conv_out(h, k, stride, pad, dilation), _conv_out(w, k, stride, pad, dilation)
        else:
            stride = 1 if kind == "residual" else draw(st.integers(1, 2))
            out = c if kind == "residual" else draw(st.integers(1, width + 1))
            bn = draw(st.booleans())
            layers.append(("residual", c, out, stride, bn))
            c, h, w = out, _conv_out(h, 3, stride, 1), _conv_out(w, 3, stride, 1)
    return layers, (c, h, w)


@st.composite
def networks(draw, max_side: int = 10, width: int = 3) -> dict:
    """A network description: ``input_shape``, ``layers``, ``hidden``, ``n_classes``, ``seed``."""
    if draw(st.sampled_from(["mlp", "image", "image"])) == "mlp":
        shape: tuple[int, ...] = (draw(st.integers(2, 10)),)
        activations = st.sampled_from(["relu", "relu", "sigmoid", "tanh"])
        layers = [("linear", draw(st.integers(2, 4 * width)), draw(activations), draw(st.booleans()))
                  for _ in range(draw(st.integers(1, 3)))]
    else:
        side = draw(st.integers(3, max_side))
        shape = (draw(st.integers(1, 3)), side, draw(st.sampled_from([side, side + 1])))
        layers, _ = draw(image_layers(shape, width))
    return {"input_shape": shape, "layers": layers,
            "hidden": draw(st.sampled_from([None, 4, 3 * width])), "n_classes": draw(st.integers(2, 5)),
            "seed": draw(st.integers(0, 2**16))}


def build(desc: dict) -> nn.Module:
    """The torch module of a description, with random BatchNorm statistics, in eval mode."""
    torch.manual_seed(desc["seed"])
    gen = torch.Generator().manual_seed(desc["seed"] + 1)
    modules: list[nn.Module] = []
    shape = desc["input_shape"]
    if len(shape) == 1:
        fan_in = shape[0]
        for _, width, act, bn in desc["layers"]:
            modules.append(nn.Linear(fan_in, width))
            if bn:
                modules.append(nn.BatchNorm1d(width))
            modules.append(ACTIVATIONS[act]())
            fan_in = width
    else:
        for layer in desc["layers"]:
            if layer[0] == "normalize":
                c = shape[0]
                modules.append(Normalize((torch.rand(c, generator=gen) * 0.5 + 0.2).tolist(),
                                         (torch.rand(c, generator=gen) * 0.4 + 0.2).tolist()))
            elif layer[0] == "conv":
                _, c_in, out, k, stride, pad, bn, act, dilation, groups = layer
                modules.append(nn.Conv2d(c_in, out, k, stride=stride, padding=pad, dilation=dilation, groups=groups))
                if bn:
                    modules.append(nn.BatchNorm2d(out))
                if act is not None:
                    modules.append(ACTIVATIONS[act]())
            elif layer[0] == "avgpool":
                modules.append(nn.AvgPool2d(layer[1], stride=layer[2], padding=layer[3], count_include_pad=layer[4]))
            elif layer[0] == "maxpool":
                modules.append(nn.MaxPool2d(layer[1], stride=layer[2], padding=layer[3], dilation=layer[4]))
            else:
                _, c_in, out, stride, bn = layer
                body = [nn.Conv2d(c_in, out, 3, stride=stride, padding=1), nn.ReLU(),
                        nn.Conv2d(out, out, 3, padding=1)]
                if bn:
                    body.append(nn.BatchNorm2d(out))
                shortcut = None if (stride == 1 and out == c_in) else nn.Conv2d(c_in, out, 1, stride=stride)
                modules += [Residual(nn.Sequential(*body), shortcut), nn.ReLU()]
        modules.append(nn.Flatten())
        with torch.no_grad():
            fan_in = nn.Sequential(*modules).eval()(torch.zeros(1, *shape)).shape[1]
    if desc["hidden"]:
        modules += [nn.Linear(fan_in, desc["hidden"]), nn.ReLU()]
        fan_in = desc["hidden"]
    modules.append(nn.Linear(fan_in, desc["n_classes"]))
    net = nn.Sequential(*modules)
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) * 2.0 + 0.2)
                m.weight.copy_(torch.randn(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.3)
    return net.eval()


def export(net: nn.Module, path: Path, shape: tuple[int, ...], dynamic: bool) -> Path:
    """``torch.onnx.export`` with its default fixed batch of 1, or with a dynamic batch dimension."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, *shape),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["y"],
                          dynamic_axes={"input": {0: "N"}, "y": {0: "N"}} if dynamic else None)
    return path


# ------------------------------------------------------------------------------------------------ the property


def two_sided(spec: Spec) -> Spec:
    """The rows of ``spec`` followed by their negations (lower bounds of those are minus upper bounds)."""
    S = spec.C.shape[1]
    return Spec(spec.x_lo, spec.x_hi, torch.cat([spec.C, -spec.C], 1), torch.cat([spec.d, -spec.d], 1),
                torch.arange(2 * S))


def check_network(desc: dict, dynamic: bool, batch: int, data_seed: int) -> None:
    """Export the network of ``desc`` (fixed batch of 1 unless ``dynamic``), load it, and check the bounds of
    ``batch`` random boxes (seeded by ``data_seed``) with every method against sampling and PGD."""
    net = build(desc)
    for layer in desc["layers"]:
        event(f"layer {layer[0]}")
    event(f"batch {'1-4' if batch <= 4 else '5-17'}")
    shape = desc["input_shape"]
    with tempfile.TemporaryDirectory() as folder:
        model = load_model(export(net, Path(folder) / "net.onnx", shape, dynamic))  # parity-checked
        graph = model.graph
        assert graph.dynamic_batch == dynamic
        assert graph.input_shape == (shape if dynamic else (1, *shape))
        gen = torch.Generator().manual_seed(data_seed)
        x = torch.rand((batch, *shape), generator=gen)  # the natural batch, for either export
        eps = torch.tensor(EPS)[torch.randint(len(EPS), (batch,), generator=gen)]
        label = model.predict(x)
        spec = two_sided(robustness_spec(x, label, eps, desc["n_classes"]))

        # oracle 1: dense samples of every box (uniform points and random vertices), torch module in float64
        lo, hi = spec.x_lo.double().unsqueeze(1), spec.x_hi.double().unsqueeze(1)
        u = torch.rand((batch, 96, *shape), generator=gen, dtype=torch.float64)
        corners = (torch.rand((batch, 32, *shape), generator=gen) < 0.5).double()
        points = torch.cat([(lo + hi) / 2, lo + u * (hi - lo), lo + corners * (hi - lo)], dim=1)
        with torch.no_grad():
            y = copy.deepcopy(net).double()(points.reshape(-1, *shape)).reshape(batch, points.shape[1], -1)
        reached = (torch.einsum("bso,bmo->bms", spec.C.double(), y) - spec.d.double().unsqueeze(1)).amin(dim=1)
        # oracle 2: PGD on every row, its points evaluated by onnxruntime
        S = spec.C.shape[1]
        attack = pgd_attack(graph, per_row(spec), steps=15, restarts=1, seed=data_seed)
        assert attack.x_adv.shape == (batch * S, *shape)
        pgd_y = torch.from_numpy(model.runtime.logits(attack.x_adv.reshape(batch * S, *shape)))
        pgd_rows = (torch.einsum("bo,bo->b", spec.C.reshape(batch * S, -1).double(), pgd_y)
                    - spec.d.reshape(-1).double()).reshape(batch, S)
        reached = torch.minimum(reached, pgd_rows)

        previous = None
        for method in Method:
            rows = compute_bounds(graph, spec, method).rows_lb
            assert rows.shape == (batch, S)
            assert bool(torch.isfinite(rows).all()), f"{method.value}: non-finite bounds"
            bad = rows.double() > reached
            assert not bool(bad.any()), (f"{method.value} unsound: bound {rows[bad].tolist()} above reached "
                                         f"{reached[bad].tolist()} ({desc})")
            if previous is not None:
                assert bool((rows >= previous).all()), f"{method.value} looser than the cheaper method"
            previous = rows
        if not dynamic:  # the graph's own layout [B, 1, *shape] gives exactly the same bounds
            own = Spec(spec.x_lo.unsqueeze(1), spec.x_hi.unsqueeze(1), spec.C, spec.d, spec.group)
            assert torch.equal(compute_bounds(graph, own, Method.CROWN).rows_lb,
                               compute_bounds(graph, spec, Method.CROWN).rows_lb)


_FAST = settings(max_examples=8, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_SLOW = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


#: hand-picked networks every default run checks besides the drawn ones: normalisation then a dilated, grouped
#: BatchNorm conv, max- and average-pooling (padding excluded from the average); a projection residual block after
#: a sigmoid conv; a BatchNorm1d tanh MLP
EXAMPLES = [
    {"input_shape": (2, 7, 8), "layers": [("normalize",), ("conv", 2, 4, 3, 1, 2, True, "relu", 2, 2),
                                          ("maxpool", 2, 2, 1, 1), ("avgpool", 2, 1, 0, False)], "hidden": 9,
     "n_classes": 4, "seed": 1},
    {"input_shape": (1, 6, 6), "layers": [("conv", 1, 3, 3, 1, 0, False, "sigmoid", 1, 1),
                                          ("residual", 3, 4, 2, True)],
     "hidden": None, "n_classes": 3, "seed": 2},
    {"input_shape": (5,), "layers": [("linear", 7, "tanh", True), ("linear", 6, "relu", True)],
     "hidden": None, "n_classes": 5, "seed": 3},
]

EXPORTS = [pytest.param(False, id="fixed-batch-1"), pytest.param(True, id="dynamic-batch")]


@pytest.mark.parametrize("dynamic", EXPORTS)
@_FAST
@given(desc=networks(), batch=st.integers(1, 17), data_seed=st.integers(0, 1000))
@example(desc=EXAMPLES[0], batch=17, data_seed=0)
@example(desc=EXAMPLES[1], batch=5, data_seed=1)
@example(desc=EXAMPLES[2], batch=1, data_seed=2)
def test_random_networks_bounds_are_sound(dynamic, desc, batch, data_seed):
    check_network(desc, dynamic, batch, data_seed)


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", EXPORTS)
@_SLOW
@given(desc=networks(), batch=st.integers(1, 17), data_seed=st.integers(0, 1000))
def test_random_networks_bounds_are_sound_many(dynamic, desc, batch, data_seed):
    check_network(desc, dynamic, batch, data_seed)


@pytest.mark.slow
@settings(max_examples=80, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(desc=networks(max_side=16, width=12), dynamic=st.booleans(), batch=st.integers(1, 17),
       data_seed=st.integers(0, 1000))
def test_wider_random_networks_bounds_are_sound(desc, dynamic, batch, data_seed):
    """Wider networks (up to 24 channels, 16x17 images): the chunked and receptive-field paths of CROWN."""
    check_network(desc, dynamic, batch, data_seed)
