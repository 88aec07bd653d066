"""Base classes of the operator protocol (see :mod:`robverify.ops`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

Box = tuple[Tensor, Tensor]


class Op:
    """An operator node. ``n_inputs`` variable inputs; ``mixing`` is True when an output element depends on
    several input elements (interval arithmetic is then exact only for a single such map of a box)."""

    n_inputs: int = 1
    linear: bool = False
    mixing: bool = False
    #: nonlinear ops whose relaxation is tightened by better input bounds ask for them ("refine")
    refine_inputs: bool = False

    def forward(self, *xs: Tensor) -> Tensor:
        raise NotImplementedError

    def interval(self, *boxes: Box) -> Box:
        raise NotImplementedError

    def backward(self, A: Tensor, boxes: Sequence[Box], alpha: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        raise NotImplementedError

    def to(self, device: torch.device | str, dtype: torch.dtype) -> "Op":
        """Move every tensor attribute (parameters and constants)."""
        for key, value in vars(self).items():
            if isinstance(value, Tensor):
                setattr(self, key, value.to(device=device, dtype=dtype if value.is_floating_point() else None))
        return self

    def __repr__(self) -> str:
        return type(self).__name__


class LinearOp(Op):
    """An affine map ``out = L(in) + c`` of its variable inputs.

    Subclasses implement ``forward`` and ``vjp`` (the transpose ``L^T`` applied to ``[M, *out_shape]``);
    the bias ``c`` is found once as ``forward(0)`` and cached per shape.
    """

    linear = True

    def vjp(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> list[Tensor]:
        raise NotImplementedError

    def has_bias(self) -> bool:
        return True

    def bias_of(self, out_shape: tuple[int, ...], in_shapes: Sequence[tuple[int, ...]], like: Tensor) -> Tensor:
        """``c`` as ``[*out_shape]``: the output at zero input (``like`` gives dtype and device)."""
        zeros = [torch.zeros((1, *s), dtype=like.dtype, device=like.device) for s in in_shapes]
        return self.forward(*zeros)[0]

    def interval(self, *boxes: Box) -> Box:
        # Center-radius form: exact for one affine map of a box.
        centers = [(lo + hi) / 2 for lo, hi in boxes]
        radii = [(hi - lo) / 2 for lo, hi in boxes]
        center = self.forward(*centers)
        in_shapes = [tuple(c.shape[1:]) for c in centers]
        bias = self.bias_of(tuple(center.shape[1:]), in_shapes, center)
        radius = self.abs_forward(radii, in_shapes, bias)
        return center - radius, center + radius

    def abs_forward(self, radii: Sequence[Tensor], in_shapes: Sequence[tuple[int, ...]], bias: Tensor) -> Tensor:
        """``|L| r`` for non-negative radii ``r``; subclasses with weights override."""
        return self.forward(*radii) - bias

    def backward(self, A: Tensor, boxes: Sequence[Box], alpha: Tensor | None = None) -> tuple[list[Tensor], Tensor]:
        B, K = A.shape[:2]
        out_shape = tuple(A.shape[2:])
        in_shapes = [tuple(lo.shape[1:]) for lo, _ in boxes]
        flat = A.reshape(B * K, *out_shape)
        grads = [g.reshape(B, K, *s) for g, s in zip(self.vjp(flat, in_shapes), in_shapes)]
        if self.has_bias():
            bias_vec = self.bias_of(out_shape, in_shapes, A).reshape(-1)
            bias = A.reshape(B, K, -1) @ bias_vec
        else:
            bias = A.new_zeros(B, K)
        return grads, bias
