"""Receptive-field ("patches") coefficients (:mod:`robverify.engine.patches`) against the dense backward pass.

The patch pass must give the same intermediate boxes and the same spec bounds as dense rows over whole layers
(``BoundOptions(patches=False)``) up to float rounding, on every kind of layer it passes through (convolutions of
any kernel, stride, padding, dilation and groups, BatchNorm, ReLU / Sigmoid / Tanh, residual sums, average
pooling, padding) and its bounds must contain every sampled value of every refined neuron and spec row.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import single_thread, to_onnx  # noqa: F401 (single_thread: an autouse fixture)
from robverify.engine.bounds import BoundOptions, _Propagator, compute_bounds
from robverify.engine.patches import Patches
from robverify.ir.blocks import Normalize, Residual
from robverify.ir.from_module import from_module
from robverify.ir.graph import Graph
from robverify.ir.model import load_model
from robverify.spec import Spec, robustness_spec
from trainers.zoo import build_model

N_CLASSES = 3

# (in_channels, size, conv1 (out, k, stride, pad), conv2 (out, k, stride, pad), activation, batchnorm)
CHAINS = [
    (1, 12, (4, 4, 2, 1), (6, 4, 2, 1), nn.ReLU, False),
    (2, 11, (3, 3, 1, 1), (5, 3, 2, 0), nn.ReLU, True),
    (1, 13, (4, 5, 2, 2), (3, 3, 1, 1), nn.Sigmoid, False),
    (3, 9, (2, 2, 1, 0), (4, 3, 3, 2), nn.Tanh, True),
    (1, 10, (3, 4, 3, 0), (2, 2, 1, 1), nn.ReLU, False),
    (1, 12, (2, 3, 2, 0), (3, 1, 1, 0), nn.ReLU, False),  # conv1 leaves the last input row unread
]


def _randomise(net: nn.Module, gen: torch.Generator, scale: float = 0.5) -> nn.Module:
    """Seeded weights of both signs and non-trivial BatchNorm statistics; eval mode."""
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * scale)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.3)
                module.weight.copy_(torch.randn(n, generator=gen))
                module.bias.copy_(torch.randn(n, generator=gen) * 0.2)
    return net.eval()


def chain_net(case: tuple, seed: int) -> nn.Module:
    c_in, size, (o1, k1, s1, p1), (o2, k2, s2, p2), act, bn = case
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [Normalize([0.4] * c_in, [0.3] * c_in), nn.Conv2d(c_in, o1, k1, s1, p1)]
    if bn:
        layers.append(nn.BatchNorm2d(o1))
    layers += [act(), nn.Conv2d(o1, o2, k2, s2, p2), nn.ReLU(), nn.Flatten()]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        n_flat = net(torch.zeros(1, c_in, size, size)).shape[1]
    net.append(nn.Linear(n_flat, N_CLASSES))
    return _randomise(net, gen)


def deep_net(kind: str, seed: int) -> tuple[nn.Module, tuple[int, int, int]]:
    """Deeper convolutional networks: every layer type the patch pass handles, several in a row."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed + 100)
    if kind == "cnn-bn":
        return _randomise(build_model("cnn-bn", (1, 12, 12), N_CLASSES, mean=[0.3], std=[0.3], channels=[4, 6],
                                      hidden=10), gen), (1, 12, 12)
    if kind == "resnet-tiny":
        net = build_model("resnet-tiny", (2, 10, 10), N_CLASSES, mean=[0.4], std=[0.3], width=4, n_blocks=3)
        return _randomise(net, gen, 0.4), (2, 10, 10)
    if kind == "conv-stack":  # four convolutions: padding, stride, dilation, groups, a 1x1, avg-pool between
        net = nn.Sequential(nn.Conv2d(2, 4, 3, 1, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 2, dilation=2), nn.Tanh(),
                            nn.Conv2d(4, 6, 3, 1, 1, groups=2), nn.BatchNorm2d(6), nn.ReLU(),
                            nn.AvgPool2d(3, 1, 1), nn.Conv2d(6, 4, 1), nn.ReLU(), nn.Conv2d(4, 3, 2, 2),
                            nn.Sigmoid(), nn.Flatten(), nn.LazyLinear(N_CLASSES))
        net(torch.zeros(1, 2, 11, 11))
        return _randomise(net, gen), (2, 11, 11)
    if kind == "residual-pool":  # sums of windows of different sizes, a strided avg-pool inside a block
        body = nn.Sequential(nn.Conv2d(3, 3, 3, 1, 1), nn.ReLU(), nn.Conv2d(3, 3, 5, 1, 2))
        net = nn.Sequential(nn.Conv2d(1, 3, 3, 1, 1), nn.ReLU(), Residual(body), nn.ReLU(),
                            nn.AvgPool2d(2), nn.Conv2d(3, 4, 3, 1, 0), nn.ReLU(),
                            Residual(nn.Sequential(nn.Conv2d(4, 4, 3, 1, 1), nn.ReLU()), nn.Conv2d(4, 4, 1)),
                            nn.ReLU(), nn.Flatten(), nn.LazyLinear(N_CLASSES))
        net(torch.zeros(1, 1, 12, 12))
        return _randomise(net, gen), (1, 12, 12)
    raise ValueError(kind)


def _spec(graph: Graph, shape: tuple[int, ...], seed: int, eps: list[float]) -> Spec:
    x = torch.rand((len(eps), *shape), generator=torch.Generator().manual_seed(seed))
    label = graph.logits(x).argmax(1)
    return robustness_spec(x, label, torch.tensor(eps), N_CLASSES, (0.0, 1.0))


def _refined_boxes(graph: Graph, spec: Spec, patches: bool) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    prop = _Propagator(graph, spec.x_lo, spec.x_hi, BoundOptions(patches=patches, intersect_ibp=False))
    with torch.no_grad():
        prop.intervals(refine=True)
    return {name: prop.boxes[name] for name in prop.relu_only}


def _assert_same_bounds(graph: Graph, spec: Spec) -> None:
    dense, windowed = _refined_boxes(graph, spec, False), _refined_boxes(graph, spec, True)
    assert any(len(graph.shape_of(name)) == 3 and name not in _Propagator(graph, spec.x_lo, spec.x_hi,
               BoundOptions()).exact for name in dense), "some [C, H, W] layer is refined"
    for name in dense:
        for a, b in zip(dense[name], windowed[name]):
            scale = float(a.abs().max().clamp(min=1.0))
            assert torch.allclose(a, b, atol=2e-5 * scale, rtol=0), (name, (a - b).abs().max())
    for options in (BoundOptions(intersect_ibp=False), BoundOptions()):
        rows = [compute_bounds(graph, spec, "crown", BoundOptions(patches=p, intersect_ibp=options.intersect_ibp)
                               ).rows_lb for p in (False, True)]
        assert torch.allclose(rows[0], rows[1], atol=1e-4 * float(rows[0].abs().max().clamp(min=1.0)), rtol=0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", range(len(CHAINS)))
def test_windowed_bounds_equal_dense_bounds(tmp_path, case, seed):
    """Two convolutions, read from ONNX: the same boxes and rows with and without patches."""
    net = chain_net(CHAINS[case], seed)
    c_in, size = CHAINS[case][:2]
    graph = load_model(to_onnx(net, tmp_path / "chain.onnx", (c_in, size, size))).graph
    _assert_same_bounds(graph, _spec(graph, (c_in, size, size), seed, [0.0, 0.01, 0.05, 0.1, 0.2, 0.4]))


DEEP = ["cnn-bn", "resnet-tiny", "conv-stack", "residual-pool"]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("kind", DEEP)
def test_patch_pass_equals_dense_pass_on_deep_nets(kind, seed):
    net, shape = deep_net(kind, seed)
    graph = from_module(net, shape)
    _assert_same_bounds(graph, _spec(graph, shape, seed, [0.0, 0.005, 0.02, 0.05, 0.1]))


@pytest.mark.parametrize("kind", DEEP)
def test_patch_bounds_contain_sampled_values(kind):
    """Every refined neuron's sampled values lie in its box, every spec row's above its lower bound."""
    net, shape = deep_net(kind, 7)
    graph = from_module(net, shape)
    spec = _spec(graph, shape, 7, [0.01, 0.03, 0.08])
    prop = _Propagator(graph, spec.x_lo, spec.x_hi, BoundOptions())
    with torch.no_grad():
        prop.intervals(refine=True)
    rows = compute_bounds(graph, spec, "crown").rows_lb
    gen = torch.Generator().manual_seed(3)
    n = 300
    for b in range(spec.batch_size):
        lo, hi = spec.x_lo[b], spec.x_hi[b]
        u = torch.rand((n, *shape), generator=gen)
        corners = (torch.rand((n, *shape), generator=gen) < 0.5).float()
        x = torch.cat([lo + (hi - lo) * u, lo + (hi - lo) * corners]).double()
        values = graph.to("cpu", torch.float64).forward(x, keep=True)
        graph.to("cpu", torch.float32)
        for name in prop.relu_only:
            box_lo, box_hi = prop.boxes[name]
            v = values[name]
            below, above = float((v - box_lo[b].double()).min()), float((box_hi[b].double() - v).min())
            tol = 1e-5 * (1.0 + float(v.abs().max()))  # float32 boxes against float64 values
            assert below >= -tol and above >= -tol, (name, b, below, above)
        out = values[graph.output].reshape(2 * n, -1)
        seen = (out @ spec.C[b].double().T - spec.d[b].double()).min(0).values
        assert bool((rows[b].double() <= seen).all()), (rows[b], seen)  # rows carry the safety margin


def test_patches_gather_and_dense_match_a_loop():
    """Window reads (both code paths) and the dense form against explicit loops, padding and negative offsets."""
    gen = torch.Generator().manual_seed(0)
    for C, H, W, gh, gw, s, o, kh, kw in [(3, 9, 8, 4, 4, 2, 1, 5, 4), (2, 7, 7, 7, 7, 1, 2, 3, 6),
                                          (1, 6, 6, 3, 3, 2, -1, 2, 2)]:
        B, K = 2, 30
        pos = torch.stack([torch.randint(0, gh, (B, K), generator=gen), torch.randint(0, gw, (B, K), generator=gen)], -1)
        coef = torch.randn((B, K, C, kh, kw), generator=gen)
        t = torch.randn((B, C, H, W), generator=gen)
        window, dense = torch.zeros(B, K, C, kh, kw), torch.zeros(B, K, C, H, W)
        for b in range(B):
            for k in range(K):
                for i in range(kh):
                    for j in range(kw):
                        r, c = int(pos[b, k, 0]) * s - o + i, int(pos[b, k, 1]) * s - o + j
                        if 0 <= r < H and 0 <= c < W:
                            window[b, k, :, i, j] = t[b, :, r, c]
                            dense[b, k, :, r, c] = coef[b, k, :, i, j]
        for rows in (K, 3):  # more rows than grid positions (unfold) and fewer (index)
            p = Patches(coef[:, :rows], pos[:, :rows], (s, s), (o, o), (gh, gw))
            assert torch.equal(p.gather(t), window[:, :rows])
            assert torch.equal(p.to_dense((C, H, W)), dense[:, :rows])
