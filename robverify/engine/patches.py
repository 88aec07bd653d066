"""Linear coefficients in receptive-field ("patches") form for the backward pass of convolutional layers.

A row of the backward pass that starts at one neuron of a ``[C, H, W]`` layer is nonzero, on any layer before
it, only on a window around the neuron's position: for a target neuron at grid position ``p`` the window on a
layer starts at ``p * stride - offset`` and spans ``kh x kw`` pixels of all ``C`` channels. :class:`Patches`
holds these windows ``[B, K, C, kh, kw]`` instead of dense rows ``[B, K, C, H, W]``; :func:`patch_backward`
moves them through convolutions, elementwise affine maps (BatchNorm, Normalize), elementwise relaxations
(ReLU, Sigmoid, Tanh), sums, average pooling and padding with the same arithmetic as the dense operators'
``backward`` (same relaxations: :meth:`robverify.ops.nonlinear.Elementwise.apply_relaxation`). A window that
grows as large as its layer, or meets an operator without a patch rule (Linear, Reshape, MaxPool, ...), is
converted to dense rows (:meth:`Patches.to_dense`) and the dense pass goes on from there.

Window positions outside the layer (a convolution's zero padding) hold coefficients that multiply nothing:
every map a window reads (:meth:`Patches.gather`) is zero there, and a convolution drops them before it
transposes them, so the result equals the dense pass up to float rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from robverify.ops.base import Box, Op, flat_rows, memory_order
from robverify.ops.linear import Add2, AvgPool, Conv, ElementwiseAffine, Pad, Sub2
from robverify.ops.nonlinear import Elementwise, Relu


@dataclass(frozen=True)
class Patches:
    """Rows ``[B, K]`` each nonzero on one window of a ``[C, H, W]`` layer.

    ``coef`` ``[B, K, C, kh, kw]``; ``pos`` ``[B, K, 2]`` (long): the grid position of each row's target neuron;
    window ``(b, k)`` covers rows ``pos[b, k, 0] * stride[0] - offset[0] + (0..kh-1)`` (columns alike).
    ``grid``: the target layer's ``(H, W)`` (bounds ``pos``); ``clean``: window pixels outside the layer are
    known to hold zeros (else a convolution masks them before it reads them)."""

    coef: Tensor
    pos: Tensor
    stride: tuple[int, int]
    offset: tuple[int, int]
    grid: tuple[int, int]
    clean: bool = False
    _index: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        return int(self.coef.shape[-2]), int(self.coef.shape[-1])

    @classmethod
    def one_hot(cls, idx: Tensor, shape: tuple[int, int, int], like: Tensor, sign: float = 1.0) -> "Patches":
        """Rows ``sign * e_i`` for the flat neuron indices ``idx`` ``[B, k]`` of a ``[C, H, W]`` layer (1x1
        windows)."""
        C, H, W = shape
        B, k = idx.shape
        channel, where = idx // (H * W), idx % (H * W)
        pos = torch.stack([where // W, where % W], dim=-1)
        coef = like.new_zeros(B, k, C)
        coef.scatter_(2, channel.unsqueeze(-1), sign)
        return cls(coef.reshape(B, k, C, 1, 1), pos, (1, 1), (0, 0), (H, W), clean=True)

    def _flat_index(self, H: int, W: int) -> tuple[Tensor, tuple[int, int, int, int], int]:
        """Flat index ``[B, K, kh, kw]`` of every window pixel in the map padded by ``(left, right, top,
        bottom)`` so that every window lies inside it; returns index, pads, padded width (cached)."""
        if (H, W) in self._index:
            return self._index[(H, W)]
        kh, kw = self.size
        (sh, sw), (oh, ow), (gh, gw) = self.stride, self.offset, self.grid
        top, left = max(oh, 0), max(ow, 0)
        bottom = max(0, (gh - 1) * sh - oh + kh - H)
        right = max(0, (gw - 1) * sw - ow + kw - W)
        Wp = W + left + right
        dev = self.pos.device
        rows = self.pos[..., 0] * sh - oh + top  # [B, K]
        cols = self.pos[..., 1] * sw - ow + left
        r = rows[..., None, None] + torch.arange(kh, device=dev).view(kh, 1)
        c = cols[..., None, None] + torch.arange(kw, device=dev).view(1, kw)
        self._index[(H, W)] = result = (r * Wp + c, (left, right, top, bottom), Wp)
        return result

    def gather(self, *maps: Tensor) -> Tensor | list[Tensor]:
        """Each row's window of per-sample maps ``[B or 1, C', H, W]`` (zero outside them):
        ``[B, K, C', kh, kw]`` each (one tensor for one map, else a list; maps are read in one pass)."""
        if len(maps) > 1:
            batch = max(m.shape[0] for m in maps)
            both = self.gather(torch.cat([m.expand(batch, *m.shape[1:]) for m in maps], dim=1))
            return list(both.split([m.shape[1] for m in maps], dim=2))
        t = maps[0]
        H, W = t.shape[-2:]
        B, K = self.pos.shape[:2]
        (gh, gw), (kh, kw) = self.grid, self.size
        if gh * gw <= K:
            # Fewer grid positions than rows: every window of the map once (unfold), then one row lookup.
            (sh, sw), (oh, ow) = self.stride, self.offset
            pads = (ow, (gw - 1) * sw + kw - W - ow, oh, (gh - 1) * sh + kh - H - oh)  # negative: crop
            cols = F.unfold(F.pad(t, pads), (kh, kw), stride=(sh, sw)).transpose(1, 2)  # [B|1, gh*gw, C'*kh*kw]
            where = self.pos[..., 0] * gw + self.pos[..., 1]  # [B, K]
            if cols.shape[0] > 1:
                where = where + gh * gw * torch.arange(B, device=t.device).view(-1, 1)
            out = F.embedding(where.reshape(-1), cols.reshape(-1, cols.shape[-1]))  # row lookup (faster on CPU)
            return out.reshape(B, K, t.shape[1], kh, kw)
        index, pads, _ = self._flat_index(H, W)
        padded = F.pad(t, pads).flatten(2).transpose(1, 2)  # [B|1, Hp*Wp, C']
        if padded.shape[0] == 1:
            out = padded[0][index]
        else:
            batch_index = torch.arange(padded.shape[0], device=t.device).view(-1, 1, 1, 1)
            out = padded[batch_index, index]  # [B, K, kh, kw, C']
        return out.permute(0, 1, 4, 2, 3)

    def inside(self, H: int, W: int) -> Tensor:
        """``[B, K, 1, kh, kw]``: 1 where the window pixel lies in an ``H x W`` layer, else 0."""
        return self.gather(self.coef.new_ones(1, 1, H, W))

    def to_dense(self, shape: tuple[int, ...]) -> Tensor:
        """Dense rows ``[B, K, C, H, W]`` on a layer of per-sample ``shape`` ``(C, H, W)``."""
        C, H, W = shape
        B, K = self.coef.shape[:2]
        kh, kw = self.size
        index, (left, right, top, bottom), Wp = self._flat_index(H, W)
        Hp = H + top + bottom
        flat = self.coef.new_zeros(B * K, C, Hp * Wp)
        index = index.reshape(B * K, 1, kh * kw).expand(-1, C, -1)
        flat = flat.scatter_add(2, index, self.coef.reshape(B * K, C, kh * kw))
        dense = flat.reshape(B * K, C, Hp, Wp)[:, :, top:top + H, left:left + W]
        return dense.reshape(B, K, C, H, W)

    def concretize(self, box: Box) -> Tensor:
        """Lower bound ``[B, K]`` of the rows over ``box`` (``[B, C, H, W]`` each)."""
        lo, hi = box
        center, radius = self.gather((lo + hi) / 2, (hi - lo) / 2)
        return (self.coef * center).sum((2, 3, 4)) - (self.coef.abs() * radius).sum((2, 3, 4))

    def row_elements(self) -> int:
        return math.prod(self.coef.shape[2:])


def add_coefficients(a: Tensor | Patches, b: Tensor | Patches, shape: tuple[int, ...]) -> Tensor | Patches:
    """Sum of two coefficient sets on one node of per-sample ``shape``: patches stay patches when their
    strides match (the window grows to the union of both), anything else is summed dense."""
    if isinstance(a, Patches) and isinstance(b, Patches) and a.stride == b.stride and a.grid == b.grid:
        (ah, aw), (bh, bw) = a.size, b.size
        top, left = max(a.offset[0], b.offset[0]), max(a.offset[1], b.offset[1])
        kh = top + max(ah - a.offset[0], bh - b.offset[0])
        kw = left + max(aw - a.offset[1], bw - b.offset[1])

        clean = a.clean and b.clean
        for big, small in ((a, b), (b, a)):
            if big.size == (kh, kw):  # one window holds the other: add it into a copy of the bigger one
                t, l_ = top - small.offset[0], left - small.offset[1]
                coef = big.coef.clone()
                coef[..., t:t + small.size[0], l_:l_ + small.size[1]] += small.coef
                return replace(big, coef=coef, clean=clean)

        def grow(p: Patches, h: int, w: int) -> Tensor:
            t, l_ = top - p.offset[0], left - p.offset[1]
            return F.pad(p.coef, (l_, kw - w - l_, t, kh - h - t))

        return replace(a, coef=grow(a, ah, aw) + grow(b, bh, bw), offset=(top, left), clean=clean)
    dense = [x.to_dense(shape) if isinstance(x, Patches) else x for x in (a, b)]
    return dense[0] + dense[1]


#: window maps of convolutions (as matrices) are used when at most this many elements
_WINDOW_MAP_LIMIT = 2**22


def _window_map(op: Op, weight: Tensor, in_size: tuple[int, int], stride: tuple[int, int],
                dilation: tuple[int, int], groups: int, perm: list[int] | None = None) -> Tensor:
    """The transposed convolution of one ``[O, kh, kw]`` window as a matrix ``[O*kh*kw, C*kh'*kw']``, its rows
    in the element order of ``perm`` (a :func:`~robverify.ops.base.memory_order` of ``[B, K, O, kh, kw]``
    windows), cached on ``op`` by the weight's version (not under autograd)."""
    key = (id(weight), weight._version, weight.dtype, weight.device, tuple(weight.shape), in_size,
           None if perm is None else tuple(perm))
    cache = op.__dict__.setdefault("_window_maps", {})
    if not torch.is_grad_enabled() and key in cache:
        return cache[key]
    D = weight.shape[0] * in_size[0] * in_size[1]
    eye = torch.eye(D, dtype=weight.dtype, device=weight.device).reshape(D, weight.shape[0], *in_size)
    matrix = F.conv_transpose2d(eye, weight, None, stride, 0, 0, groups, dilation).reshape(D, -1)
    if perm is not None:
        order = [d - 2 for d in perm[2:]]
        matrix = matrix.reshape(weight.shape[0], *in_size, -1).permute(*order, 3).reshape(D, -1)
    if not torch.is_grad_enabled():
        if len(cache) > 16:
            cache.clear()
        cache[key] = matrix
    return matrix


def _conv_transpose(op: Op, p: Patches, layer_hw: tuple[int, int], weight: Tensor, bias: Tensor | None,
                    stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int], groups: int
                    ) -> tuple[Patches, Tensor]:
    """Windows on a convolution's output -> windows on its input, and the bias term ``[B, K]``."""
    coef = p.coef if p.clean else p.coef * p.inside(*layer_hw)  # the output's padding is not its value
    B, K, O, kh, kw = coef.shape
    bias_term = coef.sum((3, 4)) @ bias if bias is not None else coef.new_zeros(B, K)
    C, (wh, ww) = weight.shape[1] * groups, weight.shape[2:]
    out_h, out_w = (kh - 1) * stride[0] + dilation[0] * (wh - 1) + 1, (kw - 1) * stride[1] + dilation[1] * (ww - 1) + 1
    d_in, d_out = O * kh * kw, C * out_h * out_w
    conv_flops = O * (C // groups) * wh * ww * kh * kw
    # Small windows: one GEMM beats the convolution up to ~4x its multiply-adds, ~8x for a convolution onto <= 4
    # channels (an image input: CPU convolution kernels run slowly there); measured on 2 CPU cores.
    if d_in * d_out <= min(_WINDOW_MAP_LIMIT, (8 if C <= 4 else 4) * conv_flops):
        perm = memory_order(coef)  # channels-last windows are read as they lie, the map's rows ordered alike
        matrix = _window_map(op, weight, (kh, kw), stride, dilation, groups, perm)
        g = flat_rows(coef, perm).reshape(B * K, d_in) @ matrix
        g = g.reshape(B, K, C, out_h, out_w)
    else:
        flat = coef.reshape(B * K, O, kh, kw).contiguous(memory_format=torch.channels_last)
        if tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1:
            # A full forward convolution with the flipped kernel: the same map, faster on CPU.
            g = F.conv2d(flat, weight.flip(2, 3).transpose(0, 1), None, 1, (wh - 1, ww - 1))
        else:
            g = F.conv_transpose2d(flat, weight, None, stride, 0, 0, groups, dilation)
        g = g.reshape(B, K, C, out_h, out_w)
    offset = (p.offset[0] * stride[0] + padding[0], p.offset[1] * stride[1] + padding[1])
    new_stride = (p.stride[0] * stride[0], p.stride[1] * stride[1])
    return Patches(g, p.pos, new_stride, offset, p.grid, clean=False), bias_term


def patch_backward(op: Op, p: Patches, out_shape: tuple[int, ...], boxes: list[Box]
                   ) -> tuple[list[Tensor | Patches], Tensor] | None:
    """The patch form of ``op.backward(dense(p), boxes)``: coefficients per input and the bias ``[B, K]``;
    None where ``op`` has no patch rule (the caller goes on dense)."""
    B, K = p.coef.shape[:2]
    if isinstance(op, Conv) and op.weight.dim() == 4 and len(out_shape) == 3:
        q, bias = _conv_transpose(op, p, out_shape[1:], op.weight, op.bias, tuple(op.stride), tuple(op.padding),
                                  tuple(op.dilation), op.groups)
        return [q], bias
    if isinstance(op, AvgPool) and len(out_shape) == 3 and not op.ceil_mode and (
            op.count_include_pad or tuple(op.padding) == (0, 0)):
        C = out_shape[0]
        kh, kw = op.kernel
        weight = p.coef.new_full((C, 1, kh, kw), 1.0 / (kh * kw))
        q, bias = _conv_transpose(op, p, out_shape[1:], weight, None, tuple(op.stride), tuple(op.padding), (1, 1), C)
        return [q], bias
    if isinstance(op, Elementwise):
        lo, hi = boxes[0]
        if lo.dim() != 4:
            return None
        a_l, b_l, a_u, b_u = op.relax(lo, hi, None)
        if isinstance(op, Relu):  # its lower line passes through 0
            new, bias = Relu.apply_lines(p.coef, *p.gather(a_u, a_l - a_u, b_u))
        else:
            new, bias = op.apply_relaxation(p.coef, *p.gather(a_l, b_l, a_u, b_u))
        return [replace(p, coef=new, clean=True)], bias
    if isinstance(op, ElementwiseAffine) and len(out_shape) == 3:
        like = p.coef.new_zeros(1, *out_shape)
        shift = op.forward(like).expand(1, *out_shape)
        scale = (op.forward(torch.ones_like(like)) - shift).expand(1, *out_shape)
        if not op.has_bias():
            return [replace(p, coef=p.coef * p.gather(scale), clean=True)], p.coef.new_zeros(B, K)
        g_scale, g_shift = p.gather(scale, shift)
        return [replace(p, coef=p.coef * g_scale, clean=True)], (p.coef * g_shift).sum((2, 3, 4))
    if isinstance(op, Add2) and len(out_shape) == 3:
        return [p, p], p.coef.new_zeros(B, K)
    if isinstance(op, Sub2) and len(out_shape) == 3:
        return [p, replace(p, coef=-p.coef)], p.coef.new_zeros(B, K)
    if isinstance(op, Pad) and len(out_shape) == 3 and not any(op.pads[4:]):
        left, right, top, bottom = op.pads[:4]
        H, W = out_shape[1:]
        coef = p.coef * p.inside(H, W)
        moved = replace(p, coef=coef, offset=(p.offset[0] + top, p.offset[1] + left), clean=False)
        bias = p.coef.new_zeros(B, K)
        if op.value != 0.0:
            # Pixels of the output that are padding (inside the output, outside the input) hold ``value``.
            border = coef.new_ones(1, 1, H, W)
            border[..., max(top, 0):H - max(bottom, 0), max(left, 0):W - max(right, 0)] = 0.0
            bias = (coef * p.gather(border)).sum((2, 3, 4)) * op.value
        return [moved], bias
    return None


def worth_keeping(p: Patches, shape: tuple[int, ...]) -> bool:
    """Patches on a layer of per-sample ``shape`` stay patches while a window is smaller than the layer."""
    if len(shape) != 3:
        return False
    kh, kw = p.size
    return kh * kw < shape[1] * shape[2]
