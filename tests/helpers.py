"""Small shared builders for the engine's tests: tiny random networks as torch modules, their ONNX files, row
specs and a sampling oracle for the true range of a spec's rows over its input boxes.

Everything is seeded and CPU-only. The networks are deliberately tiny (a few dozen inputs, a few dozen neurons)
so that dense sampling of a box is a meaningful oracle and a test with many seeds stays fast.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from properties.onnx_export import export_onnx
from robverify.engine.attacks import pgd_attack
from robverify.ir.graph import Graph
from robverify.ir.blocks import Residual
from robverify.spec import Spec

N_CLASSES = 3

#: name -> per-sample input shape of the tiny networks built by :func:`tiny_net`
NET_SHAPES: dict[str, tuple[int, ...]] = {
    "mlp-relu": (6,),
    "mlp-sigmoid": (6,),
    "mlp-tanh": (6,),
    "mlp-bn": (6,),
    "mlp-image": (1, 3, 3),
    "cnn-relu": (1, 6, 6),
    "cnn-bn": (2, 5, 5),
    "cnn-avgpool": (1, 6, 6),
    "cnn-avgpool-pad": (1, 6, 6),
    "cnn-maxpool": (1, 6, 6),
    "cnn-maxpool-overlap": (1, 6, 6),
    "cnn-maxpool-pad": (1, 6, 6),
    "cnn-maxpool-raw": (1, 6, 6),
    "cnn-sigmoid": (1, 6, 6),
    "cnn-tanh": (1, 6, 6),
    "resnet": (1, 5, 5),
    "resnet-proj": (1, 6, 6),
    "cnn-dilated-grouped": (2, 6, 6),
    "cnn-avgpool-exclude-pad": (1, 6, 6),
    "mlp-sigmoid-wide": (6,),
    "mlp-tanh-wide": (6,),
}
NET_KINDS = tuple(NET_SHAPES)


def _randomise_batchnorm(bn: nn.modules.batchnorm._BatchNorm, gen: torch.Generator) -> None:
    """Non-trivial running statistics and affine parameters (the module is used in eval mode)."""
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
        bn.running_var.copy_(torch.rand(n, generator=gen) * 2.0 + 0.2)
        bn.weight.copy_(torch.randn(n, generator=gen))
        bn.bias.copy_(torch.randn(n, generator=gen) * 0.3)


def tiny_net(kind: str, seed: int) -> nn.Module:
    """A random network of ``kind`` (see :data:`NET_KINDS`) with :data:`N_CLASSES` outputs, in eval mode.

    Input shape: ``NET_SHAPES[kind]``. Pooling variants cover non-overlapping, overlapping (stride < kernel),
    padded and dilated windows and a max-pool applied directly to a convolution (values of both signs); the
    ``-wide`` MLPs drive sigmoid and tanh deep into saturation.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 1000)
    n = N_CLASSES
    if kind == "mlp-relu":
        net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, n))
    elif kind == "mlp-sigmoid":
        net = nn.Sequential(nn.Linear(6, 8), nn.Sigmoid(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, n))
    elif kind == "mlp-tanh":
        net = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, n))
    elif kind == "mlp-bn":
        net = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 8), nn.BatchNorm1d(8),
                            nn.ReLU(), nn.Linear(8, n))
    elif kind == "mlp-image":
        net = nn.Sequential(nn.Flatten(), nn.Linear(9, 10), nn.ReLU(), nn.Linear(10, n))
    elif kind == "cnn-relu":
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Conv2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(16, n))
    elif kind == "cnn-bn":
        net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                            nn.Conv2d(3, 3, 3, stride=2), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                            nn.Linear(12, n))
    elif kind == "cnn-avgpool":
        net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                            nn.Linear(27, n))
    elif kind == "cnn-avgpool-pad":
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AvgPool2d(3, stride=2, padding=1), nn.ReLU(),
                            nn.Flatten(), nn.Linear(12, n))
    elif kind == "cnn-maxpool":
        net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                            nn.Linear(27, n))
    elif kind == "cnn-maxpool-overlap":
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(3, stride=1), nn.Flatten(),
                            nn.Linear(12, n))
    elif kind == "cnn-maxpool-pad":
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(),
                            nn.Linear(12, n))
    elif kind == "cnn-maxpool-raw":
        # max-pool straight after a convolution (negative values, -inf padding), then a ReLU layer
        net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.MaxPool2d(3, stride=2, padding=1), nn.Flatten(),
                            nn.Linear(27, 8), nn.ReLU(), nn.Linear(8, n))
    elif kind == "cnn-sigmoid":
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Sigmoid(), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                            nn.Sigmoid(), nn.Flatten(), nn.Linear(16, n))
    elif kind == "cnn-tanh":
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Conv2d(3, 4, 3, stride=2, padding=1),
                            nn.Tanh(), nn.Flatten(), nn.Linear(16, n))
    elif kind == "resnet":
        body = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1))
        net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), Residual(body), nn.ReLU(), nn.Flatten(),
                            nn.Linear(75, n))
    elif kind == "resnet-proj":
        body = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(3, 3, 3, padding=1),
                             nn.BatchNorm2d(3))
        net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),
                            Residual(body, nn.Conv2d(2, 3, 1, stride=2)), nn.ReLU(), nn.AvgPool2d(3),
                            nn.Flatten(), nn.Linear(3, n))
    elif kind == "cnn-dilated-grouped":
        net = nn.Sequential(nn.Conv2d(2, 4, 3, dilation=2, groups=2, padding=2), nn.ReLU(),
                            nn.MaxPool2d(3, stride=1, padding=1, dilation=2), nn.Flatten(), nn.Linear(64, n))
    elif kind == "cnn-avgpool-exclude-pad":
        net = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.AvgPool2d(3, stride=2, padding=1,
                                                                       count_include_pad=False),
                            nn.Flatten(), nn.Linear(12, n))
    elif kind in ("mlp-sigmoid-wide", "mlp-tanh-wide"):
        # saturating pre-activations (|z| up to ~30): the S-shaped relaxations far from 0
        act = nn.Sigmoid if kind == "mlp-sigmoid-wide" else nn.Tanh
        net = nn.Sequential(nn.Linear(6, 8), act(), nn.Linear(8, 8), act(), nn.Linear(8, n))
        with torch.no_grad():
            net[0].weight.mul_(30.0)
            net[0].bias.mul_(30.0)
            net[2].weight.mul_(10.0)
    else:
        raise ValueError(f"unknown tiny net kind {kind!r}")
    for m in net.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            _randomise_batchnorm(m, gen)
    return net.eval()


def linear_classifier(seed: int, n_in: int = 5, n_classes: int = 4) -> nn.Module:
    """``nn.Linear`` alone (input shape ``(n_in,)``), random weights and bias of unit scale."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_classes)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(n_classes, n_in, generator=gen))
        layer.bias.copy_(torch.randn(n_classes, generator=gen) * 0.5)
    return nn.Sequential(layer).eval()


def relu_mlp(seed: int, widths: tuple[int, ...] = (4, 8, 8, 3)) -> nn.Module:
    """A plain ReLU MLP ``widths[0] -> ... -> widths[-1]`` (input shape ``(widths[0],)``) whose first-layer
    hyperplanes cross the unit cube, so that its decisions vary over inputs in ``[0, 1]``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    first = layers[0]
    with torch.no_grad():
        first.weight.mul_(4.0)
        first.bias.copy_(-first.weight @ torch.rand(widths[0]))
    return nn.Sequential(*layers).eval()


def image_cnn(seed: int) -> nn.Module:
    """A seeded two-conv network on ``[N, 3, 6, 6]`` images with 3 classes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), nn.Linear(16, 3)).eval()


class ChannelsLast(nn.Module):
    """``net`` taking ``[N, H, W, C]`` instead of ``[N, C, H, W]`` (a transpose in front)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.permute(0, 3, 1, 2))


def to_onnx(module: nn.Module, path: Path, input_shape: tuple[int, ...]) -> Path:
    """Export ``module`` to ``path`` (robverify's exporter: opset 17, dynamic batch, onnxruntime parity)."""
    export_onnx(module, path, input_shape, n_parity=8, tol=1e-4)
    return Path(path)


def random_boxes(input_shape: tuple[int, ...], eps: tuple[float, ...], per_eps: int, seed: int
                 ) -> tuple[Tensor, Tensor]:
    """Random centres in ``[0, 1]`` and the matching per-sample radii: ``x [B, *shape]``, ``eps [B]``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((len(eps) * per_eps, *input_shape), generator=gen)
    radii = torch.tensor([e for e in eps for _ in range(per_eps)], dtype=torch.float32)
    return x, radii


def negated(spec: Spec) -> Spec:
    """The spec whose rows are ``-(C.y - d)``: its row lower bounds are minus upper bounds of ``spec``'s rows."""
    return Spec(spec.x_lo, spec.x_hi, -spec.C, -spec.d, spec.group)


def per_row(spec: Spec) -> Spec:
    """One single-row spec per (sample, row): batch ``B*S`` (so a falsifier attacks every row on its own)."""
    B, S = spec.C.shape[:2]
    shape = spec.x_lo.shape[1:]
    rep = lambda t: t.unsqueeze(1).expand(B, S, *shape).reshape(B * S, *shape)  # noqa: E731
    return Spec(rep(spec.x_lo), rep(spec.x_hi), spec.C.reshape(B * S, 1, -1), spec.d.reshape(B * S, 1),
                torch.zeros(1, dtype=torch.long))


def spec_rows(spec: Spec, y: Tensor) -> Tensor:
    """Row values ``C.y - d`` of outputs ``y`` ``[B, M, n_out]`` for M points per sample: ``[B, M, S]``."""
    C = spec.C.to(y.dtype)
    return torch.einsum("bso,bmo->bms", C, y) - spec.d.to(y.dtype).unsqueeze(1)


def box_points(spec: Spec, n_uniform: int, n_vertices: int, seed: int, max_corner_dims: int = 10) -> Tensor:
    """Points of every sample's box ``[B, M, *shape]``: the centre, ``n_uniform`` uniform points,
    ``n_vertices`` random vertices, and every vertex when the input has at most ``max_corner_dims`` elements."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = spec.x_lo.double(), spec.x_hi.double()
    B, shape = lo.shape[0], tuple(lo.shape[1:])
    n_in = math.prod(shape)
    lo_, hi_ = lo.unsqueeze(1), hi.unsqueeze(1)
    parts = [(lo_ + hi_) / 2]
    u = torch.rand((B, n_uniform, *shape), generator=gen, dtype=torch.float64)
    parts.append(lo_ + u * (hi_ - lo_))
    bits = torch.rand((B, n_vertices, *shape), generator=gen) < 0.5
    parts.append(torch.where(bits, hi_, lo_))
    if n_in <= max_corner_dims:
        corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=n_in)), dtype=torch.float64)
        corners = corners.reshape(1, -1, *shape)
        parts.append(lo_ + corners * (hi_ - lo_))
    return torch.cat(parts, dim=1)


def pgd_row_points(graph: Graph, spec: Spec, seed: int = 0) -> Tensor:
    """PGD's best point for every row of every sample (minimising that row): ``[B, S, *shape]``."""
    B, S = spec.C.shape[:2]
    result = pgd_attack(graph, per_row(spec), steps=30, restarts=2, seed=seed)
    return result.x_adv.reshape(B, S, *spec.x_lo.shape[1:]).double()


def row_range(module: nn.Module, graph: Graph, spec: Spec, *, n_uniform: int = 2000, n_vertices: int = 500,
              seed: int = 0) -> tuple[Tensor, Tensor]:
    """Empirical ``(min, max)`` ``[B, S]`` of the rows ``C.y - d`` over each box: dense sampling, random and
    (for tiny inputs) all vertices, and PGD on each row from both sides. Evaluated in float64 on a copy of
    ``module`` (so the oracle itself carries no float32 rounding)."""
    import copy

    net64 = copy.deepcopy(module).double().eval()
    points = box_points(spec, n_uniform, n_vertices, seed)
    low = pgd_row_points(graph, spec, seed)
    high = pgd_row_points(graph, negated(spec), seed)
    points = torch.cat([points, low, high], dim=1)
    B, M = points.shape[:2]
    # keep every point inside its box (float64 copies of the float32 box bounds)
    points = torch.minimum(torch.maximum(points, spec.x_lo.double().unsqueeze(1)), spec.x_hi.double().unsqueeze(1))
    with torch.no_grad():
        y = net64(points.reshape(B * M, *points.shape[2:])).reshape(B, M, -1)
    rows = spec_rows(spec, y)
    return rows.amin(dim=1), rows.amax(dim=1)


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Run a test module on one intra-op thread: these tensors are tiny, and on a shared, busy machine
    torch's thread pool makes them up to ten times slower. The previous setting is restored afterwards."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


class _Scaled(nn.Module):
    def __init__(self, net: nn.Module, scale: float) -> None:
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x * self.scale)


def digits_mlp(path: Path, input_scale: float = 1.0) -> Path:
    """A small MLP trained (seeded, a few seconds) on digits[0-4] and exported to ``path`` with its model card;
    with ``input_scale`` the exported network reads inputs ``x / input_scale`` (e.g. 255: pixel values 0..255)."""
    from robverify.formats.model_card import ModelCard
    from trainers.tasks import load_task
    from trainers.training import train_standard
    from trainers.zoo import arch_config, build_model

    torch.manual_seed(0)
    data = load_task("digits[0-4]")
    model = build_model("mlp", data.input_shape, data.n_classes, mean=[0.3], std=[0.4], widths=[32, 16], seed=0)
    train_standard(model, data.x_train, data.y_train, epochs=15, lr=3e-3, seed=0)
    card = ModelCard(architecture=arch_config(model), task="digits[0-4]", source_task=None, strategy=None,
                     training={"method": "standard"}, seed=0, clean_acc=None, pgd_acc=None, certified_acc=None,
                     train_time_s=None, parent_hash=None, similarity={}, trainable={}, onnx_sha256=None,
                     opset=None, parity_max_abs_diff=None, robverify_version="test")
    export_onnx(model if input_scale == 1.0 else _Scaled(model, 1.0 / input_scale).eval(), path, data.input_shape,
                card=card)
    return Path(path)
