"""IBP with the spec folded into the last affine layers (Gowal et al. 2018), against an independent oracle:
interval arithmetic written out here layer by layer, with ``C`` multiplied into the trailing Linear (and a
BatchNorm after it). The engine's IBP rows must never be looser than that oracle, never looser than ``C``
applied to the output box, and still below every sampled value of every row."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from helpers import single_thread  # noqa: F401 (an autouse fixture)
from robverify.engine.bounds import BoundOptions, compute_bounds
from robverify.ir.from_module import from_module
from robverify.spec import robustness_spec

N_CLASSES = 4


def _net(seed: int, tail_bn: bool) -> nn.Sequential:
    gen = torch.Generator().manual_seed(seed)
    layers = [nn.Conv2d(1, 3, 3, 1, 1), nn.ReLU(), nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Flatten(),
              nn.Linear(36, 12), nn.ReLU(), nn.Linear(12, N_CLASSES)]
    if tail_bn:
        layers.append(nn.BatchNorm1d(N_CLASSES))
    net = nn.Sequential(*layers)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen) * 0.6)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.2)
            elif isinstance(m, nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(N_CLASSES, generator=gen))
                m.running_var.copy_(torch.rand(N_CLASSES, generator=gen) + 0.5)
                m.weight.copy_(torch.randn(N_CLASSES, generator=gen))
                m.bias.copy_(torch.randn(N_CLASSES, generator=gen))
    return net.eval()


def _oracle(net: nn.Sequential, lo: Tensor, hi: Tensor, C: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
    """Interval arithmetic in float64: ``(rows folded into the trailing affine layers, rows on the output box)``."""
    layers = list(net)
    tail = 8  # index of the first layer of the trailing affine chain: Linear(12, n) [+ BatchNorm1d]
    lo, hi = lo.double(), hi.double()
    for layer in layers[:tail - 1]:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            layer = layer.double()
            center, radius = (lo + hi) / 2, (hi - lo) / 2
            w_abs = layer.weight.abs()
            mid = layer(center)
            rad = (nn.functional.conv2d(radius, w_abs, None, layer.stride, layer.padding)
                   if isinstance(layer, nn.Conv2d) else radius @ w_abs.T)
            lo, hi = mid - rad, mid + rad
        else:  # ReLU, Flatten: monotone
            lo, hi = layer(lo), layer(hi)
    last = layers[tail - 1].double()
    W, b = last.weight, last.bias
    if len(layers) > tail:  # BatchNorm1d after the Linear: y = s * (Wz + b) + t
        bn = layers[tail].double()
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        t = bn.bias - bn.running_mean * s
        W, b = s[:, None] * W, s * b + t
    CW = C.double() @ W  # [B, S, 12]
    folded = (CW.clamp(min=0) @ lo.unsqueeze(-1) + CW.clamp(max=0) @ hi.unsqueeze(-1)).squeeze(-1) \
        + C.double() @ b - d.double()
    center, radius = (lo + hi) / 2, (hi - lo) / 2
    out_c, out_r = center @ W.T + b, radius @ W.abs().T
    out_lo, out_hi = out_c - out_r, out_c + out_r
    boxed = (C.double().clamp(min=0) @ out_lo.unsqueeze(-1) + C.double().clamp(max=0) @ out_hi.unsqueeze(-1)
             ).squeeze(-1) - d.double()
    return folded, boxed


@pytest.mark.parametrize("tail_bn", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ibp_rows_fold_the_spec_into_the_last_affine_layers(seed, tail_bn):
    net = _net(seed, tail_bn)
    graph = from_module(net, (1, 6, 6))
    x = torch.rand((16, 1, 6, 6), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        label = net(x).argmax(1)
    spec = robustness_spec(x, label, torch.linspace(0.002, 0.1, 16), N_CLASSES, (0.0, 1.0))
    folded, boxed = _oracle(net, spec.x_lo, spec.x_hi, spec.C, spec.d)
    for options in (BoundOptions(), BoundOptions(intersect_ibp=False, safety=0.0)):
        rows = compute_bounds(graph, spec, "ibp", options).rows_lb.double()
        scale = 1e-5 * (1.0 + folded.abs())
        assert bool((rows >= folded - scale).all()), float((folded - rows).max())
        assert bool((rows >= boxed - scale).all())
    assert bool((folded > boxed + 1e-3).any()), "folding is tighter on some rows"
    # sound: every sampled value of every row lies above its bound
    rows = compute_bounds(graph, spec, "ibp").rows_lb.double()
    gen = torch.Generator().manual_seed(seed + 5)
    u = torch.rand((16, 400, 1, 6, 6), generator=gen)
    points = spec.x_lo.unsqueeze(1) + (spec.x_hi - spec.x_lo).unsqueeze(1) * u
    with torch.no_grad():
        y = net.double()(points.reshape(-1, 1, 6, 6).double()).reshape(16, 400, N_CLASSES)
    values = torch.einsum("bsn,bpn->bps", spec.C.double(), y) - spec.d.double().unsqueeze(1)
    assert bool((rows <= values.min(1).values).all())
