"""Receptive-field-local bounds of convolution neurons.

The neurons of a convolution ``S`` that reads ``act(affine*(conv1(P)))`` depend on a small window of ``P``
only (10x10 pixels for two 4x4 stride-2 convolutions). Bounding them with dense rows over the whole of ``P``
(as a generic backward pass does) spends most of its time and memory on zeros. :func:`conv_chain_bounds`
runs the same backward pass (the activation's linear relaxation, the affine maps, ``conv1`` transposed)
on each neuron's window and concretizes over the window of ``P``'s box. When ``P``'s box is the exact image of
the input box (``P`` is reached from the input through elementwise maps only) the result equals the dense
backward pass up to float rounding; it is sound whatever ``P``'s box is, as long as that box is sound.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from robverify.ir.graph import Graph
from robverify.ops.base import Box, LinearOp
from robverify.ops.linear import Conv, ElementwiseAffine
from robverify.ops.nonlinear import Elementwise


@dataclass(frozen=True)
class ConvChain:
    """``S = conv2(act(affines(conv1(P))))``; node names of the activation's input ``z`` and of ``P``."""

    conv2: Conv
    act: Elementwise
    z: str
    affines: tuple[ElementwiseAffine, ...]  # forward order, between conv1 and the activation
    conv1: Conv
    p: str


def _plain_conv(op: object) -> bool:
    return (isinstance(op, Conv) and op.groups == 1 and tuple(op.dilation) == (1, 1)
            and op.weight.dim() == 4)


def _elementwise_image_of_input(graph: Graph, name: str) -> bool:
    """True when ``name``'s box is the exact set of its values: reached from the input by one-input,
    non-mixing affine maps only."""
    while name != graph.input_name:
        node = graph.node(name)
        if not (isinstance(node.op, LinearOp) and node.op.n_inputs == 1 and not node.op.mixing):
            return False
        name = node.inputs[0]
    return True


def find_conv_chain(graph: Graph, name: str) -> ConvChain | None:
    """The chain ending at node ``name`` when it has the supported form, else None."""
    node = graph.node(name)
    if not _plain_conv(node.op) or len(node.inputs) != 1 or node.inputs[0] == graph.input_name:
        return None
    act = graph.node(node.inputs[0])
    if not isinstance(act.op, Elementwise) or len(act.inputs) != 1 or act.inputs[0] == graph.input_name:
        return None
    affines: list[ElementwiseAffine] = []
    current = graph.node(act.inputs[0])
    while isinstance(current.op, ElementwiseAffine) and current.inputs[0] != graph.input_name:
        affines.append(current.op)
        current = graph.node(current.inputs[0])
    if not _plain_conv(current.op) or len(current.inputs) != 1:
        return None
    if len(graph.shape_of(act.inputs[0])) != 3 or len(graph.shape_of(current.inputs[0])) != 3:
        return None
    if not _elementwise_image_of_input(graph, current.inputs[0]):
        return None
    return ConvChain(node.op, act.op, act.inputs[0], tuple(reversed(affines)), current.op, current.inputs[0])


def _windows(x: Tensor, kernel: tuple[int, int], stride: tuple[int, int], before: tuple[int, int],
             count: tuple[int, int]) -> Tensor:
    """``x`` ``[B, C, H, W]`` -> ``[B, count_h * count_w, C * kh * kw]``: window ``(i, j)`` starts at
    ``i * stride - before`` (zero outside ``x``)."""
    pads = []
    for d in (1, 0):  # F.pad order: last dim first
        size = x.shape[2 + d]
        need = (count[d] - 1) * stride[d] + kernel[d]
        pads += [before[d], need - before[d] - size]  # a negative pad crops
    padded = F.pad(x, pads)
    return F.unfold(padded, kernel, stride=stride).transpose(1, 2)


def conv_chain_bounds(chain: ConvChain, boxes: dict[str, Box], idx: Tensor) -> tuple[Tensor, Tensor]:
    """Lower and upper bounds ``[B, k]`` of the ``conv2`` neurons ``idx`` ``[B, k]`` (flat indices into
    ``conv2``'s per-sample output ``[O, H2, W2]``), with the activation relaxed on ``boxes[z]`` and
    concretized over ``boxes[p]`` (the same relaxation as the dense backward pass, without alpha)."""
    c2, c1 = chain.conv2, chain.conv1
    z_lo, z_hi = boxes[chain.z]
    p_lo, p_hi = boxes[chain.p]
    B, k = idx.shape
    C1, H1, W1 = z_lo.shape[1:]
    O2, _, k2h, k2w = c2.weight.shape
    H2 = (H1 + 2 * c2.padding[0] - k2h) // c2.stride[0] + 1
    W2 = (W1 + 2 * c2.padding[1] - k2w) // c2.stride[1] + 1
    L = H2 * W2
    channel, where = idx // L, idx % L
    windows = dict(kernel=(k2h, k2w), stride=tuple(c2.stride), before=tuple(c2.padding), count=(H2, W2))

    def at_rows(t: Tensor) -> Tensor:
        """Per-sample map ``[B or 1, C1, H1, W1]`` -> its window under each row ``[B, 2k, D]``."""
        win = _windows(t, **windows)  # [B|1, L, D]
        rows = torch.cat([where, where], dim=1)
        if win.shape[0] == 1:
            return win[0][rows]
        return win.gather(1, rows.unsqueeze(-1).expand(-1, -1, win.shape[-1]))

    w2 = c2.weight.reshape(O2, -1)
    a = w2[channel]  # [B, k, D] rows on the activation's output
    rows = torch.cat([a, -a], dim=1)
    a_l, b_l, a_u, b_u = chain.act.relax(z_lo, z_hi, None)
    pos, neg = rows.clamp(min=0), rows.clamp(max=0)
    coef = pos * at_rows(a_l) + neg * at_rows(a_u)
    bias = (pos * at_rows(b_l) + neg * at_rows(b_u)).sum(-1)
    if c2.bias is not None:
        b2 = c2.bias[channel]
        bias = bias + torch.cat([b2, -b2], dim=1)
    for op in reversed(chain.affines):
        zeros = z_lo.new_zeros(1, C1, H1, W1)
        shift = op.forward(zeros)
        scale = op.forward(torch.ones_like(zeros)) - shift
        bias = bias + (coef * at_rows(shift.expand(1, C1, H1, W1))).sum(-1)
        coef = coef * at_rows(scale.expand(1, C1, H1, W1))
    coef = coef.reshape(B * 2 * k, C1, k2h, k2w)
    if c1.bias is not None:
        bias = bias + (coef.sum((2, 3)) @ c1.bias).reshape(B, 2 * k)
    # conv1 transposed on each window, as one matrix [D, Cin*Kh*Kw] (small windows: a GEMM beats the conv).
    D = C1 * k2h * k2w
    eye = torch.eye(D, dtype=coef.dtype, device=coef.device).reshape(D, C1, k2h, k2w)
    window_map = F.conv_transpose2d(eye, c1.weight, None, c1.stride).reshape(D, -1)
    p_coef = (coef.reshape(B, 2 * k, D) @ window_map)
    Kh = (k2h - 1) * c1.stride[0] + c1.weight.shape[2]
    Kw = (k2w - 1) * c1.stride[1] + c1.weight.shape[3]
    p_windows = dict(kernel=(Kh, Kw), stride=(c1.stride[0] * c2.stride[0], c1.stride[1] * c2.stride[1]),
                     before=(c2.padding[0] * c1.stride[0] + c1.padding[0],
                             c2.padding[1] * c1.stride[1] + c1.padding[1]),
                     count=(H2, W2))
    rows_at = torch.cat([where, where], dim=1).unsqueeze(-1).expand(-1, -1, p_coef.shape[-1])
    center = _windows((p_lo + p_hi) / 2, **p_windows).gather(1, rows_at)
    radius = _windows((p_hi - p_lo) / 2, **p_windows).gather(1, rows_at)
    bound = (p_coef * center).sum(-1) - (p_coef.abs() * radius).sum(-1) + bias
    return bound[:, :k], -bound[:, k:]


def row_width(chain: ConvChain) -> int:
    """Elements held per row (for chunking): activation window plus ``P`` window."""
    c2, c1 = chain.conv2, chain.conv1
    k2h, k2w = c2.weight.shape[2:]
    d = c2.weight.shape[1] * k2h * k2w
    kh = (k2h - 1) * c1.stride[0] + c1.weight.shape[2]
    kw = (k2w - 1) * c1.stride[1] + c1.weight.shape[3]
    return 8 * d + 3 * c1.weight.shape[1] * kh * kw
