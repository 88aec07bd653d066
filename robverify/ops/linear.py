"""Affine operators: dense, matmul, convolution, elementwise affine, shape ops, pooling, sums."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robverify.ops.base import LinearOp, flat_rows, memory_order


def _lead(x: Tensor, keep: int) -> tuple[Tensor, tuple[int, ...]]:
    """Merge all but the last ``keep`` dims into one batch dim; return the merged tensor and the lead shape."""
    lead = tuple(x.shape[: x.dim() - keep])
    return x.reshape(-1, *x.shape[x.dim() - keep:]), lead


class Linear(LinearOp):
    """``y = x @ W^T + b`` on the last dimension (ONNX Gemm, MatMul with a constant on the right).

    weight ``[out, in]``, bias ``[out]`` or None.
    """

    mixing = True

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight, self.bias)

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        return [A @ self.weight]

    def has_bias(self) -> bool:
        return self.bias is not None

    def bias_of(self, out_shape: tuple[int, ...], in_shapes: Sequence[tuple[int, ...]], like: Tensor) -> Tensor:
        if self.bias is None:
            return like.new_zeros(out_shape)
        return self.bias.expand(out_shape)

    def abs_forward(self, radii: Sequence[Tensor], in_shapes: Sequence[tuple[int, ...]], bias: Tensor) -> Tensor:
        return F.linear(radii[0], self.weight.abs())


class MatMulLeft(LinearOp):
    """``y = W @ x + b`` with a constant matrix on the left and per-sample ``x`` of shape ``[..., k, n]``."""

    mixing = True

    def __init__(self, weight: Tensor, bias: Tensor | None = None) -> None:
        self.weight = weight
        self.bias = bias

    def forward(self, x: Tensor) -> Tensor:
        y = torch.matmul(self.weight, x)
        return y if self.bias is None else y + self.bias

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        return [torch.matmul(self.weight.transpose(-1, -2), A)]

    def has_bias(self) -> bool:
        return self.bias is not None

    def abs_forward(self, radii: Sequence[Tensor], in_shapes: Sequence[tuple[int, ...]], bias: Tensor) -> Tensor:
        return torch.matmul(self.weight.abs(), radii[0])


class Conv(LinearOp):
    """2-D convolution on the last three dims ``[C, H, W]`` (ONNX Conv). weight ``[O, C/g, kh, kw]``."""

    mixing = True

    def __init__(self, weight: Tensor, bias: Tensor | None, stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int] = (1, 1), groups: int = 1) -> None:
        self.weight, self.bias = weight, bias
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def _conv(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        flat, lead = _lead(x, 3)
        y = F.conv2d(flat, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return y.reshape(*lead, *y.shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        return self._conv(x, self.weight, self.bias)

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        in_shape = in_shapes[0]
        flat, lead = _lead(A, 3)
        kh, kw = self.weight.shape[2:]
        out_pad = []
        for i, k in enumerate((kh, kw)):
            full = (flat.shape[2 + i] - 1) * self.stride[i] - 2 * self.padding[i] + self.dilation[i] * (k - 1) + 1
            out_pad.append(in_shape[-2 + i] - full)
        flat = flat.contiguous(memory_format=torch.channels_last)  # ~1.5x faster on CPU, and a view below
        g = F.conv_transpose2d(flat, self.weight, None, self.stride, self.padding, tuple(out_pad), self.groups,
                               self.dilation)
        return [g.reshape(*lead, *g.shape[1:])]

    def has_bias(self) -> bool:
        return self.bias is not None

    def bias_of(self, out_shape: tuple[int, ...], in_shapes: Sequence[tuple[int, ...]], like: Tensor) -> Tensor:
        if self.bias is None:
            return like.new_zeros(out_shape)
        return self.bias.view(-1, 1, 1).expand(out_shape[-3:]).expand(out_shape)

    def subpixel_weight(self) -> Tensor:
        """The transposed convolution as a plain one followed by ``pixel_shuffle``: weight ``[C s s, O, T, T']``
        (``T = ceil(kh / s)``) with ``pixel_shuffle(conv2d(A, w, padding=(T - 1, T' - 1)), s)[..., p + y, p' + x]
        = conv_transpose2d(A)[..., y, x]`` (stride ``s`` on both axes, no groups or dilation)."""
        O, C, kh, kw = self.weight.shape
        s = self.stride[0]
        th, tw = -(-kh // s), -(-kw // s)
        # tap (a, b) of sub-pixel (r, q) reads kernel tap (s (T-1-a) + r, s (T'-1-b) + q): pad the kernel to
        # s T x s T' at the top/left... by index arithmetic on a zero-padded copy
        padded = F.pad(self.weight, (0, s * tw - kw, 0, s * th - kh))  # [O, C, s T, s T']
        taps = padded.reshape(O, C, th, s, tw, s).flip(2, 4)  # [O, C, a, r, b, q]
        return taps.permute(1, 3, 5, 0, 2, 4).reshape(C * s * s, O, th, tw)

    def box_lower_bound(self, A: Tensor, lo: Tensor, hi: Tensor) -> Tensor | None:
        """Lower bound ``[B, K]`` of ``A . (conv(x) - bias)`` over the box ``lo <= x <= hi`` ``[B, C, H, W]`` for
        rows ``A`` ``[B, K, O, H', W']``, without making the rows on the input: a sub-pixel convolution
        (:meth:`subpixel_weight`) read against the box laid out alike (a convolution onto few channels, as onto
        an image, runs ~2x faster so than transposed on CPU). None where it does not apply (the caller
        goes the usual way)."""
        if lo.dim() != 4:
            return None
        C, H, W = lo.shape[1:]
        s = self.stride[0]
        if (self.groups != 1 or tuple(self.dilation) != (1, 1) or self.stride[0] != self.stride[1] or C > 4
                or A.dim() != 5 or self.weight.dim() != 4):
            return None
        B, K, O, h, w = A.shape
        th, tw = -(-self.weight.shape[2] // s), -(-self.weight.shape[3] // s)
        ph, pw = self.padding
        full_h, full_w = s * (h + th - 1), s * (w + tw - 1)  # covers the whole transposed output
        flat = A.reshape(B * K, O, h, w).contiguous(memory_format=torch.channels_last)
        rows = F.conv2d(flat, self.subpixel_weight(), None, 1, (th - 1, tw - 1))  # [B K, C s s, h+T-1, w+T'-1]
        rows = rows.reshape(B, K, *rows.shape[1:])

        def laid_out(t: Tensor) -> Tensor:  # the box on the sub-pixel grid, zero on the transposed conv's padding
            full = t.new_zeros(B, C, max(full_h, ph + H), max(full_w, pw + W))
            full[:, :, ph:ph + H, pw:pw + W] = t  # input pixels past full_h x full_w: output padding, no rows
            return F.pixel_unshuffle(full[:, :, :full_h, :full_w], s).unsqueeze(1)

        perm = memory_order(rows)
        center = flat_rows(laid_out((lo + hi) / 2), perm).transpose(1, 2)  # [B, n, 1]
        radius = flat_rows(laid_out((hi - lo) / 2), perm).transpose(1, 2)
        a = flat_rows(rows, perm)
        return (a @ center).squeeze(-1) - (a.abs() @ radius).squeeze(-1)

    def abs_forward(self, radii: Sequence[Tensor], in_shapes: Sequence[tuple[int, ...]], bias: Tensor) -> Tensor:
        return self._conv(radii[0], self.weight.abs(), None)


class ElementwiseAffine(LinearOp):
    """``y = x * scale + shift`` with constants broadcast to the per-sample shape (Mul, Div, Add, Sub by
    constants, Neg, folded BatchNormalization, Normalize)."""

    def __init__(self, scale: Tensor | None = None, shift: Tensor | None = None) -> None:
        self.scale, self.shift = scale, shift

    def forward(self, x: Tensor) -> Tensor:
        y = x if self.scale is None else x * self.scale
        return y if self.shift is None else y + self.shift

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        return [A if self.scale is None else A * self.scale]

    def has_bias(self) -> bool:
        return self.shift is not None

    def abs_forward(self, radii: Sequence[Tensor], in_shapes: Sequence[tuple[int, ...]], bias: Tensor) -> Tensor:
        return radii[0] if self.scale is None else radii[0] * self.scale.abs()


class Reshape(LinearOp):
    """Reshape to a per-sample shape (ONNX Reshape, Flatten, Squeeze, Unsqueeze)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = tuple(shape)

    def forward(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.shape)

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        return [A.reshape(A.shape[0], *in_shapes[0])]

    def has_bias(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"Reshape{self.shape}"


class Transpose(LinearOp):
    """Permute per-sample dims (``perm`` indexes the per-sample dims)."""

    def __init__(self, perm: Sequence[int]) -> None:
        self.perm = tuple(perm)
        self.inverse = tuple(sorted(range(len(perm)), key=lambda i: self.perm[i]))

    def forward(self, x: Tensor) -> Tensor:
        return x.permute(0, *(p + 1 for p in self.perm))

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        return [A.permute(0, *(p + 1 for p in self.inverse))]

    def has_bias(self) -> bool:
        return False


class Pad(LinearOp):
    """Constant padding; ``pads`` in torch's ``F.pad`` order (last dim first)."""

    def __init__(self, pads: Sequence[int], value: float = 0.0) -> None:
        self.pads, self.value = tuple(pads), float(value)

    def forward(self, x: Tensor) -> Tensor:
        return F.pad(x, self.pads, value=self.value)

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        index = [slice(None)]
        n = len(self.pads) // 2
        for dim in range(A.dim() - 1, 0, -1):
            k = A.dim() - 1 - dim
            if k < n:
                lo, hi = self.pads[2 * k], self.pads[2 * k + 1]
                index.insert(1, slice(lo, A.shape[dim] - hi))
            else:
                index.insert(1, slice(None))
        return [A[tuple(index)]]

    def has_bias(self) -> bool:
        return self.value != 0.0


class AvgPool(LinearOp):
    """2-D average pooling on the last three dims."""

    mixing = True

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 count_include_pad: bool = True, ceil_mode: bool = False) -> None:
        self.kernel, self.stride, self.padding = kernel, stride, padding
        self.count_include_pad, self.ceil_mode = count_include_pad, ceil_mode

    def forward(self, x: Tensor) -> Tensor:
        flat, lead = _lead(x, 3)
        y = F.avg_pool2d(flat, self.kernel, self.stride, self.padding, self.ceil_mode, self.count_include_pad)
        return y.reshape(*lead, *y.shape[1:])

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        # The transpose of a linear map is its vector-Jacobian product at any point.
        x0 = torch.zeros((A.shape[0], *in_shapes[0]), dtype=A.dtype, device=A.device, requires_grad=True)
        with torch.enable_grad():
            y = self.forward(x0)
            (g,) = torch.autograd.grad(y, x0, A, create_graph=A.requires_grad)
        return [g]

    def has_bias(self) -> bool:
        return False


class Add2(LinearOp):
    """Sum of two variable inputs of the same shape (residual connections)."""

    n_inputs = 2

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x + y

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        return [_unbroadcast(A, s) for s in in_shapes]

    def has_bias(self) -> bool:
        return False


class Sub2(LinearOp):
    """Difference of two variable inputs."""

    n_inputs = 2

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return x - y

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        return [_unbroadcast(A, in_shapes[0]), -_unbroadcast(A, in_shapes[1])]

    def has_bias(self) -> bool:
        return False

    def abs_forward(self, radii: Sequence[Tensor], in_shapes: Sequence[tuple[int, ...]], bias: Tensor) -> Tensor:
        return radii[0] + radii[1]


def _unbroadcast(A: Tensor, shape: tuple[int, ...]) -> Tensor:
    """Sum ``A`` ``[M, *out]`` down to ``[M, *shape]`` (the transpose of broadcasting)."""
    target = (A.shape[0], *shape)
    if tuple(A.shape) == target:
        return A
    extra = A.dim() - len(target)
    if extra:
        A = A.sum(dim=tuple(range(1, 1 + extra)))
    dims = tuple(i for i in range(1, A.dim()) if target[i] == 1 and A.shape[i] != 1)
    return A.sum(dim=dims, keepdim=True) if dims else A
