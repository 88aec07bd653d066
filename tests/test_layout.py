"""Coefficient layouts in the backward pass: rows laid out channels-last (as convolutions leave them) give the
same numbers as contiguous rows, and the sub-pixel bound of the first convolution over its input box equals the
transposed convolution read against that box."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import single_thread  # noqa: F401 (an autouse fixture)
from robverify.engine.patches import _window_map
from robverify.ops.base import flat_rows, in_order, memory_order
from robverify.ops.linear import Conv
from robverify.ops.nonlinear import Relu


def _channels_last_rows(B: int, K: int, C: int, H: int, W: int, gen: torch.Generator) -> torch.Tensor:
    """Rows ``[B, K, C, H, W]`` laid out ``[B, K, H, W, C]`` in memory, as a channels-last conv leaves them."""
    flat = torch.randn(B * K, C, H, W, generator=gen, dtype=torch.float64)
    return flat.contiguous(memory_format=torch.channels_last).reshape(B, K, C, H, W)


def test_memory_order_finds_the_layout_and_flat_rows_follow_it():
    gen = torch.Generator().manual_seed(0)
    A = _channels_last_rows(2, 3, 4, 5, 6, gen)
    perm = memory_order(A)
    assert perm == [0, 1, 3, 4, 2]
    assert memory_order(A.contiguous()) is None
    assert memory_order(A[..., ::2]) is None  # not dense in any order
    view = flat_rows(A, perm)
    assert view.data_ptr() == A.data_ptr() and view.shape == (2, 3, 120)
    box = torch.randn(2, 1, 4, 5, 6, generator=gen, dtype=torch.float64)
    # any pairing of two tensors flattened by one perm gives the same dot products as the plain flatten
    assert torch.allclose(flat_rows(A, perm) @ flat_rows(box, perm).transpose(1, 2),
                          A.flatten(2) @ box.flatten(2).transpose(1, 2))
    laid = in_order(box, perm)
    assert torch.equal(laid, box) and laid.permute(perm).is_contiguous()


@pytest.mark.parametrize("seed", range(3))
def test_relu_lines_give_the_same_rows_in_either_layout(seed):
    gen = torch.Generator().manual_seed(seed)
    B, K, C, H, W = 3, 4, 5, 6, 7
    A = _channels_last_rows(B, K, C, H, W, gen)
    lo = torch.randn(B, 1, C, H, W, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(B, 1, C, H, W, generator=gen, dtype=torch.float64)
    a_l, _, a_u, b_u = Relu().relax(lo, hi, None)
    new_cl, bias_cl = Relu.apply_lines(A, a_u, a_l - a_u, b_u)
    new, bias = Relu.apply_lines(A.contiguous(), a_u, a_l - a_u, b_u)
    assert torch.allclose(new_cl, new, atol=1e-12) and torch.allclose(bias_cl, bias, atol=1e-12)
    # the closed form: A a_l where A >= 0, A a_u elsewhere; bias min(A, 0) . b_u
    assert torch.allclose(new, torch.where(A >= 0, A * a_l, A * a_u), atol=1e-12)
    assert torch.allclose(bias, (A.clamp(max=0) * b_u).flatten(2).sum(-1), atol=1e-12)


# (out channels, in channels, kernel, stride, padding, input size): strided and not, kernels not a multiple of
# the stride, transposed outputs that need output padding
CONVS = [(32, 3, 4, 2, 1, 32), (16, 1, 4, 2, 1, 28), (8, 3, 3, 1, 1, 10), (8, 3, 5, 2, 2, 11), (8, 2, 3, 2, 0, 9),
         (4, 3, 3, 3, 1, 12), (4, 3, 2, 2, 0, 9), (4, 1, 7, 3, 3, 20)]


@pytest.mark.parametrize("out_c,in_c,k,s,p,size", CONVS)
def test_subpixel_box_bound_equals_the_transposed_convolution(out_c, in_c, k, s, p, size):
    gen = torch.Generator().manual_seed(out_c * 100 + size)
    weight = torch.randn(out_c, in_c, k, k, generator=gen, dtype=torch.float64)
    op = Conv(weight, torch.randn(out_c, generator=gen, dtype=torch.float64), (s, s), (p, p))
    x = torch.rand(2, in_c, size, size, generator=gen, dtype=torch.float64)
    lo, hi = x - 0.1, x + 0.05
    out = F.conv2d(x, weight, None, s, p)
    A = torch.randn(2, 5, *out.shape[1:], generator=gen, dtype=torch.float64)
    extra = size - ((out.shape[-1] - 1) * s - 2 * p + k)
    rows = F.conv_transpose2d(A.reshape(10, *out.shape[1:]), weight, None, s, p, extra).reshape(2, 5, -1)
    center, radius = ((lo + hi) / 2).flatten(1).unsqueeze(-1), ((hi - lo) / 2).flatten(1).unsqueeze(-1)
    expected = (rows @ center - rows.abs() @ radius).squeeze(-1)
    got = op.box_lower_bound(A, lo, hi)
    assert got is not None and torch.allclose(got, expected, rtol=0, atol=1e-10)
    # and it is a lower bound: never above the rows at sampled points of the box
    for _ in range(20):
        point = lo + torch.rand(lo.shape, generator=gen, dtype=torch.float64) * (hi - lo)
        value = (A.flatten(2) @ F.conv2d(point, weight, None, s, p).flatten(1).unsqueeze(-1)).squeeze(-1)
        assert bool((got <= value + 1e-9).all())


def test_subpixel_box_bound_declines_what_it_does_not_cover():
    weight = torch.randn(4, 8, 3, 3, dtype=torch.float64)  # 8 input channels: the usual pass is faster
    lo = torch.zeros(1, 8, 6, 6, dtype=torch.float64)
    A = torch.ones(1, 2, 4, 6, 6, dtype=torch.float64)
    assert Conv(weight, None, (1, 1), (1, 1)).box_lower_bound(A, lo, lo + 1) is None
    grouped = Conv(torch.randn(4, 1, 3, 3, dtype=torch.float64), None, (1, 1), (1, 1), groups=2)
    assert grouped.box_lower_bound(A, lo[:, :2], lo[:, :2] + 1) is None
    assert Conv(weight[:, :2], None, (1, 1), (1, 1)).box_lower_bound(A, lo[:, :2, None], lo[:, :2, None]) is None


def test_window_map_rows_follow_the_windows_layout():
    weight = torch.randn(6, 3, 3, 3, dtype=torch.float64)
    op = Conv(weight, None, (2, 2), (0, 0))
    windows = _channels_last_rows(2, 4, 6, 3, 3, torch.Generator().manual_seed(1))
    perm = memory_order(windows)
    with torch.no_grad():
        plain = _window_map(op, weight, (3, 3), (2, 2), (1, 1), 1)
        laid = _window_map(op, weight, (3, 3), (2, 2), (1, 1), 1, perm)
    assert torch.allclose(flat_rows(windows, perm).reshape(8, -1) @ laid, windows.reshape(8, -1) @ plain)


@pytest.mark.parametrize("op", ["sigmoid", "tanh"])
def test_s_shaped_lines_give_the_same_rows_in_either_layout(op):
    from robverify.ops.nonlinear import Sigmoid, Tanh

    relax = {"sigmoid": Sigmoid(), "tanh": Tanh()}[op]
    gen = torch.Generator().manual_seed(4)
    A = _channels_last_rows(2, 3, 4, 5, 5, gen)
    lo = torch.randn(2, 1, 4, 5, 5, generator=gen, dtype=torch.float64)
    hi = lo + torch.rand(2, 1, 4, 5, 5, generator=gen, dtype=torch.float64)
    lines = relax.relax(lo, hi, None)
    new_cl, bias_cl = relax.apply_relaxation(A, *lines)
    new, bias = relax.apply_relaxation(A.contiguous(), *lines)
    assert torch.allclose(new_cl, new, atol=1e-12) and torch.allclose(bias_cl, bias, atol=1e-12)
