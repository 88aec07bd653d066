"""Receptive-field-local bounds (:mod:`robverify.engine.receptive_field`) against the dense backward pass they replace.

Where the first convolution reads an elementwise image of the input, the windowed pass must give the same
intermediate bounds as dense rows over the whole input (up to float rounding), for any kernel, stride,
padding, activation and BatchNorm between, on odd image sizes; and the chain is only used where it applies.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import single_thread, to_onnx  # noqa: F401 (single_thread: an autouse fixture)
from robverify.engine.bounds import BoundOptions, _Propagator, compute_bounds
from robverify.ir.model import load_model
from robverify.ir.blocks import Normalize
from robverify.engine.receptive_field import find_conv_chain
from robverify.spec import robustness_spec

# (in_channels, size, conv1 (out, k, stride, pad), conv2 (out, k, stride, pad), activation, batchnorm)
CHAINS = [
    (1, 12, (4, 4, 2, 1), (6, 4, 2, 1), nn.ReLU, False),
    (2, 11, (3, 3, 1, 1), (5, 3, 2, 0), nn.ReLU, True),
    (1, 13, (4, 5, 2, 2), (3, 3, 1, 1), nn.Sigmoid, False),
    (3, 9, (2, 2, 1, 0), (4, 3, 3, 2), nn.Tanh, True),
    (1, 10, (3, 4, 3, 0), (2, 2, 1, 1), nn.ReLU, False),
    (1, 12, (2, 3, 2, 0), (3, 1, 1, 0), nn.ReLU, False),  # conv1 leaves the last input row unread
]


def chain_net(case: tuple, seed: int) -> nn.Module:
    c_in, size, (o1, k1, s1, p1), (o2, k2, s2, p2), act, bn = case
    gen = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = [Normalize([0.4] * c_in, [0.3] * c_in), nn.Conv2d(c_in, o1, k1, s1, p1)]
    if bn:
        norm = nn.BatchNorm2d(o1)
        with torch.no_grad():
            norm.running_mean.copy_(torch.randn(o1, generator=gen) * 0.3)
            norm.running_var.copy_(torch.rand(o1, generator=gen) + 0.3)
            norm.weight.copy_(torch.randn(o1, generator=gen))
            norm.bias.copy_(torch.randn(o1, generator=gen) * 0.2)
        layers.append(norm)
    layers += [act(), nn.Conv2d(o1, o2, k2, s2, p2), nn.ReLU(), nn.Flatten()]
    net = nn.Sequential(*layers)
    with torch.no_grad():
        n_flat = net(torch.zeros(1, c_in, size, size)).shape[1]
    net.append(nn.Linear(n_flat, 3))
    torch.manual_seed(seed)
    for module in net:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.5)
                module.bias.copy_(torch.randn(module.bias.shape, generator=gen) * 0.2)
    return net.eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("case", range(len(CHAINS)))
def test_windowed_bounds_equal_dense_bounds(tmp_path, case, seed):
    net = chain_net(CHAINS[case], seed)
    c_in, size = CHAINS[case][:2]
    model = load_model(to_onnx(net, tmp_path / "chain.onnx", (c_in, size, size)))
    graph = model.graph
    chained = [name for name in graph.consumers() if name != graph.input_name and find_conv_chain(graph, name)]
    assert len(chained) == 1, "the second convolution is a chain"
    x = torch.rand((6, c_in, size, size), generator=torch.Generator().manual_seed(seed))
    label = model.predict(x)
    eps = torch.tensor([0.0, 0.01, 0.05, 0.1, 0.2, 0.4])
    spec = robustness_spec(x, label, eps, 3, (0.0, 1.0))
    boxes = {}
    for patches in (False, True):
        prop = _Propagator(graph, spec.x_lo, spec.x_hi, BoundOptions(patches=patches, intersect_ibp=False))
        prop.intervals(refine=True)
        boxes[patches] = prop.boxes[chained[0]]
    for dense, windowed in zip(boxes[False], boxes[True]):
        scale = dense.abs().max().clamp(min=1.0)
        assert torch.allclose(dense, windowed, atol=2e-5 * scale, rtol=0), (dense - windowed).abs().max()
    rows = [compute_bounds(graph, spec, "crown", BoundOptions(patches=p)).rows_lb for p in (False, True)]
    assert torch.allclose(rows[0], rows[1], atol=1e-4 * rows[0].abs().max().clamp(min=1.0), rtol=0)


def test_chain_needs_an_elementwise_image_of_the_input(tmp_path):
    """conv -> relu -> conv -> relu -> conv: only the second convolution reads a conv of the input itself."""
    net = nn.Sequential(nn.Conv2d(1, 2, 3, 1, 1), nn.ReLU(), nn.Conv2d(2, 2, 3, 1, 1), nn.ReLU(),
                        nn.Conv2d(2, 2, 3, 1, 1), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 36, 3)).eval()
    graph = load_model(to_onnx(net, tmp_path / "deep.onnx", (1, 6, 6))).graph
    convs = [node.name for node in graph.nodes if type(node.op).__name__ == "Conv"]
    assert [find_conv_chain(graph, name) is not None for name in convs] == [False, True, False]
