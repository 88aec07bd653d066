"""Base classes of the operator protocol (see :mod:`robverify.ops`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

Box = tuple[Tensor, Tensor]


def memory_order(A: Tensor, lead: int = 2) -> list[int] | None:
    """The permutation of ``A``'s dims (the first ``lead`` kept first) under which ``A`` is contiguous, when ``A``
    is a dense tensor laid out in another dim order (e.g. rows ``[B, K, C, H, W]`` made by a channels-last
    convolution); None when ``A`` is contiguous or not dense in any order."""
    if A.is_contiguous() or A.dim() <= lead + 1:
        return None
    tail = sorted(range(lead, A.dim()), key=lambda d: A.stride(d), reverse=True)
    perm = list(range(lead)) + tail
    return perm if A.permute(perm).is_contiguous() else None


def in_order(t: Tensor, perm: list[int] | None) -> Tensor:
    """``t`` (same shape and values) laid out in memory in the dim order ``perm`` (from :func:`memory_order`):
    elementwise arithmetic between tensors of one layout is several times faster than across layouts."""
    if perm is None or t.dim() != len(perm):
        return t
    inverse = [0] * len(perm)
    for i, d in enumerate(perm):
        inverse[d] = i
    return t.permute(perm).contiguous().permute(inverse)


def flat_rows(A: Tensor, perm: list[int] | None, lead: int = 2) -> Tensor:
    """``A`` ``[*lead dims, *shape]`` flattened to ``[*lead dims, prod(shape)]`` in the element order of ``perm``
    (a view when ``A`` is laid out so; pair it with every other tensor flattened by the same ``perm``)."""
    t = A if perm is None or A.dim() != len(perm) else A.permute(perm)
    return t.reshape(*A.shape[:lead], -1)


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
        return grads, self.bias_term(A, in_shapes)

    def bias_term(self, A: Tensor, in_shapes: Sequence[tuple[int, ...]]) -> Tensor:
        """``A . c`` ``[B, K]`` for rows ``A`` ``[B, K, *out_shape]`` (the constant part of the map)."""
        B, K = A.shape[:2]
        if not self.has_bias():
            return A.new_zeros(B, K)
        out_shape = tuple(A.shape[2:])
        perm = memory_order(A)  # rows laid out channels-last stay a view
        bias_vec = flat_rows(self.bias_of(out_shape, in_shapes, A).reshape(1, 1, *out_shape), perm)[0, 0]
        return flat_rows(A, perm) @ bias_vec
