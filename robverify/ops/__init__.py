"""Operators of the graph IR: one class per operator family, each with its forward pass, interval (IBP)
propagation and backward linear (CROWN) propagation.

Protocol (all tensors batched: a node's value is ``[N, *shape]`` where ``shape`` is the node's per-sample shape):

* ``forward(*xs)`` — concrete evaluation.
* ``interval(*boxes)`` — sound interval image of input boxes ``(lo, hi)``.
* ``backward(A, boxes, alpha)`` — given linear coefficients ``A`` ``[B, K, *out_shape]`` of a lower bound
  ``A . out + c``, returns coefficients on each variable input ``[B, K, *in_shape]`` and the bias added
  ``[B, K]`` so that ``A . out >= sum_i A_i . in_i + bias`` holds for all inputs in ``boxes``.

Linear operators (:class:`LinearOp`) are exact; nonlinear ones relax.
"""

from robverify.ops.base import LinearOp, Op
from robverify.ops.linear import (
    Add2,
    AvgPool,
    Conv,
    ElementwiseAffine,
    Linear,
    MatMulLeft,
    Pad,
    Reshape,
    Sub2,
    Transpose,
)
from robverify.ops.nonlinear import MaxPool, Relu, Sigmoid, Tanh

__all__ = [
    "Op", "LinearOp", "Linear", "MatMulLeft", "Conv", "ElementwiseAffine", "Reshape", "Transpose", "Pad",
    "AvgPool", "Add2", "Sub2", "Relu", "Sigmoid", "Tanh", "MaxPool",
]
