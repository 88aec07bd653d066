"""Nonlinear operators and their sound linear relaxations: ReLU, Sigmoid, Tanh, MaxPool."""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from robverify.ops.base import Box, Op, flat_rows, in_order, memory_order


class Elementwise(Op):
    """A monotone elementwise function relaxed by lines ``a_l x + b_l <= f(x) <= a_u x + b_u`` on ``[lo, hi]``."""

    refine_inputs = True

    def fn(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def relax(self, lo: Tensor, hi: Tensor, alpha: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def interval(self, box: Box) -> Box:  # type: ignore[override]
        return self.fn(box[0]), self.fn(box[1])

    def backward(self, A: Tensor, boxes: Sequence[Box], alpha: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        lo, hi = boxes[0]
        new_A, bias = self.apply_relaxation(A, *self.relax(lo.unsqueeze(1), hi.unsqueeze(1), alpha))
        return [new_A], bias

    def apply_relaxation(self, A: Tensor, a_l: Tensor, b_l: Tensor | None, a_u: Tensor, b_u: Tensor
                         ) -> tuple[Tensor, Tensor]:
        """``A`` ``[B, K, ...]`` through the lines (broadcast to ``A``): the coefficients on the input and the
        bias ``[B, K]`` of the lower bound ``A . f(x) >= new_A . x + bias``."""
        perm = memory_order(A)  # the lines laid out like the rows (see Relu.apply_lines)
        a_l, b_l, a_u, b_u = (in_order(t, perm) for t in (a_l, b_l, a_u, b_u))
        A_pos, A_neg = A.clamp(min=0), A.clamp(max=0)
        new_A = A_pos * a_l + A_neg * a_u
        bias = flat_rows(A_pos * b_l + A_neg * b_u, perm).sum(-1)
        return new_A, bias


class Relu(Elementwise):
    """ReLU: upper chord on unstable neurons, lower line ``alpha * x`` (CROWN's adaptive slope by default)."""

    def fn(self, x: Tensor) -> Tensor:
        return torch.relu(x)

    @staticmethod
    def default_alpha(lo: Tensor, hi: Tensor) -> Tensor:
        """CROWN's lower slope: 1 where ``hi > -lo`` else 0."""
        return (hi > -lo).to(lo.dtype)

    def relax(self, lo: Tensor, hi: Tensor, alpha: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        active = lo >= 0
        unstable = (lo < 0) & (hi > 0)
        width = torch.where(unstable, hi - lo, torch.ones_like(lo))
        slope = torch.where(unstable, hi / width, active.to(lo.dtype))
        a_u = slope
        b_u = torch.where(unstable, -lo * slope, torch.zeros_like(lo))
        lower = self.default_alpha(lo, hi) if alpha is None else alpha
        a_l = torch.where(active, torch.ones_like(lo), torch.where(unstable, lower, torch.zeros_like(lo)))
        return a_l, torch.zeros_like(a_l), a_u, b_u

    def apply_relaxation(self, A: Tensor, a_l: Tensor, b_l: Tensor | None, a_u: Tensor, b_u: Tensor
                         ) -> tuple[Tensor, Tensor]:
        # Same as Elementwise's with b_l = 0 (ignored).
        return self.apply_lines(A, a_u, a_l - a_u, b_u)

    @staticmethod
    def apply_lines(A: Tensor, a_u: Tensor, d: Tensor, b_u: Tensor) -> tuple[Tensor, Tensor]:
        """``A`` ``[B, K, ...]`` through ReLU's lines given as the upper slope ``a_u``, the lower minus the upper
        slope ``d`` (zero on stable neurons) and the upper intercept ``b_u`` (each broadcast to ``A``):
        ``new_A = A a_u + max(A, 0) d`` (= ``A a_l`` where ``A >= 0``, ``A a_u`` elsewhere) and the bias ``[B, K]``
        ``min(A, 0) . b_u``, in few passes over the (large) coefficient tensor, all in ``A``'s memory layout (the
        lines are laid out like it: arithmetic across layouts runs several times slower)."""
        perm = memory_order(A)
        a_u, d, b_u = in_order(a_u, perm), in_order(d, perm), in_order(b_u, perm)
        A_pos = A.clamp(min=0)
        new_A = (A * a_u).addcmul_(A_pos, d)
        del A_pos
        A_neg = A.clamp(max=0)
        B, K = A.shape[:2]
        if b_u.dim() == A.dim() and b_u.shape[1] == 1:  # lines shared by the K rows: one matrix product
            bias = flat_rows(A_neg, perm) @ flat_rows(b_u, perm).transpose(1, 2)
            return new_A, bias.reshape(B, K)
        if b_u.shape == A.shape:  # one line per row (patches): a batched dot product
            bias = flat_rows(A_neg, perm).reshape(B * K, 1, -1) @ flat_rows(b_u, perm).reshape(B * K, -1, 1)
            return new_A, bias.reshape(B, K)
        return new_A, (A_neg * b_u).flatten(2).sum(-1)


class _SShaped(Elementwise):
    """Sigmoid-like: convex below 0, concave above, derivative largest at 0.

    Concave part: chord below, tangent at the midpoint above; convex part mirrored. Straddling 0: both lines take
    the smallest derivative on ``[lo, hi]`` (attained at an endpoint), through ``(lo, f(lo))`` below and
    ``(hi, f(hi))`` above — sound since ``f' >= slope`` on the interval. Degenerate intervals use constants.
    """

    def deriv(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def relax(self, lo: Tensor, hi: Tensor, alpha: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        f_lo, f_hi = self.fn(lo), self.fn(hi)
        width = hi - lo
        tiny = width < 1e-6
        safe_width = torch.where(tiny, torch.ones_like(width), width)
        chord = (f_hi - f_lo) / safe_width
        mid = (lo + hi) / 2
        tangent = self.deriv(mid)
        f_mid = self.fn(mid)
        min_slope = torch.minimum(self.deriv(lo), self.deriv(hi))
        concave, convex = lo >= 0, hi <= 0
        a_l = torch.where(concave, chord, torch.where(convex, tangent, min_slope))
        b_l = torch.where(concave, f_lo - chord * lo, torch.where(convex, f_mid - tangent * mid, f_lo - min_slope * lo))
        a_u = torch.where(concave, tangent, torch.where(convex, chord, min_slope))
        b_u = torch.where(concave, f_mid - tangent * mid, torch.where(convex, f_hi - chord * hi, f_hi - min_slope * hi))
        zero = torch.zeros_like(lo)
        a_l, b_l = torch.where(tiny, zero, a_l), torch.where(tiny, f_lo, b_l)
        a_u, b_u = torch.where(tiny, zero, a_u), torch.where(tiny, f_hi, b_u)
        return a_l, b_l, a_u, b_u


class Sigmoid(_SShaped):
    def fn(self, x: Tensor) -> Tensor:
        return torch.sigmoid(x)

    def deriv(self, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        return s * (1 - s)


class Tanh(_SShaped):
    def fn(self, x: Tensor) -> Tensor:
        return torch.tanh(x)

    def deriv(self, x: Tensor) -> Tensor:
        return 1 - torch.tanh(x) ** 2


class MaxPool(Op):
    """2-D max pooling. Per window, ``i*`` = argmax of the lower bounds: ``y >= x_{i*}`` always; ``y <= x_{i*}``
    when ``lo[i*] >= hi[j]`` for all other ``j`` (the window is decided), else ``y <= max_j hi[j]``."""

    mixing = True
    refine_inputs = True

    def __init__(self, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
                 dilation: tuple[int, int] = (1, 1)) -> None:
        self.kernel, self.stride, self.padding, self.dilation = kernel, stride, padding, dilation

    def _pool(self, x: Tensor) -> Tensor:
        lead = x.shape[:-3]
        y = F.max_pool2d(x.reshape(-1, *x.shape[-3:]), self.kernel, self.stride, self.padding, self.dilation)
        return y.reshape(*lead, *y.shape[1:])

    def forward(self, x: Tensor) -> Tensor:
        return self._pool(x)

    def interval(self, box: Box) -> Box:  # type: ignore[override]
        return self._pool(box[0]), self._pool(box[1])

    def _windows(self, t: Tensor) -> Tensor:
        """``[M, C, H, W]`` -> ``[M, C, kh*kw, L]`` with -inf padding."""
        ph, pw = self.padding
        t = F.pad(t, (pw, pw, ph, ph), value=-math.inf)
        M, C = t.shape[:2]
        cols = F.unfold(t, self.kernel, dilation=self.dilation, stride=self.stride)
        return cols.reshape(M, C, self.kernel[0] * self.kernel[1], -1)

    def backward(self, A: Tensor, boxes: Sequence[Box], alpha: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        lo, hi = boxes[0]
        in_shape = tuple(lo.shape[1:])
        B, K = A.shape[:2]
        C, H, W = in_shape[-3:]
        lo4, hi4 = lo.reshape(B, C, H, W), hi.reshape(B, C, H, W)
        lw, hw = self._windows(lo4), self._windows(hi4)  # [B, C, kk, L]
        i_star = lw.argmax(dim=2, keepdim=True)  # [B, C, 1, L]
        l_star = lw.gather(2, i_star).squeeze(2)
        u_other = hw.scatter(2, i_star, -math.inf).amax(dim=2)
        decided = (l_star >= u_other).to(A.dtype)  # [B, C, L]
        u_max = hw.amax(dim=2)
        A_flat = A.reshape(B, K, C, -1)  # [B, K, C, L]
        A_pos, A_neg = A_flat.clamp(min=0), A_flat.clamp(max=0)
        coef = A_pos + A_neg * decided.unsqueeze(1)
        bias = (A_neg * ((1 - decided) * u_max).unsqueeze(1)).flatten(2).sum(-1)
        kk = lw.shape[2]
        cols = torch.zeros(B, K, C, kk, coef.shape[-1], dtype=A.dtype, device=A.device)
        index = i_star.unsqueeze(1).expand(B, K, C, 1, coef.shape[-1])
        cols = cols.scatter(3, index, coef.unsqueeze(3))
        ph, pw = self.padding
        padded = F.fold(cols.reshape(B * K, C * kk, -1), (H + 2 * ph, W + 2 * pw), self.kernel,
                        dilation=self.dilation, stride=self.stride)
        grad = padded[:, :, ph:ph + H, pw:pw + W].reshape(B, K, *in_shape)
        return [grad], bias
