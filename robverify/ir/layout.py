"""Which input batches fit a graph: the one shape check every entry point of the library makes.

A graph's per-sample shape is ``graph.input_shape``; every library function takes batches ``[N, *input_shape]``.

**A fixed leading 1.** An ONNX model whose input is declared with a fixed first dimension of 1 (what
``torch.onnx.export`` writes without ``dynamic_axes``, and what VNN-COMP files such as ``mnist-net_256x2.onnx``
declare: ``[1, 784, 1]``) takes one sample per run; the graph IR keeps that 1 in ``input_shape``
(``(1, 1, 28, 28)``, ``(1, 784, 1)``), which is the layout the command line feeds
(:func:`robverify.ir.model.inputs_for`).
That 1 is read as the batch dimension: such a graph also accepts the natural batch ``[N, *input_shape[1:]]``
(``[N, 1, 28, 28]``), sample ``n`` being the model input ``x[n:n+1]``. Both layouts mean the same inputs, so
both give the same bounds, labels and counterexamples; functions that return inputs (counterexamples) return
them in the layout they were given. The rule applies only to a *fixed* 1 on an input of rank at least 2: with a
dynamic batch dimension (``[N, 1, 28, 28]`` in the file, ``input_shape == (1, 28, 28)``) the 1 is a channel,
and a rank-1 input ``[1]`` has no other dimension to be a sample. Every other shape is refused with a
one-line :class:`~robverify.errors.RobverifyError` naming both shapes.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from torch import Tensor

from robverify.errors import RobverifyError
from robverify.spec import Spec

if TYPE_CHECKING:
    from robverify.ir.graph import Graph

__all__ = ["accepted_shapes", "describe_input", "empty_bounds", "fit_batch_of", "fit_box", "fit_input", "fit_shape",
           "fit_spec", "in_layout_of", "natural_shape"]


def natural_shape(input_shape: tuple[int, ...], dynamic_batch: bool) -> tuple[int, ...] | None:
    """The per-sample shape with a fixed leading 1 read as the batch dimension (``(1, C, H, W) -> (C, H, W)``),
    or None where the rule does not apply (a dynamic batch dimension, a first dimension other than 1, rank 1)."""
    if dynamic_batch or len(input_shape) < 2 or input_shape[0] != 1:
        return None
    return tuple(input_shape[1:])


def accepted_shapes(graph: "Graph") -> tuple[tuple[int, ...], ...]:
    """The per-sample shapes ``graph`` accepts: ``input_shape`` and, with a fixed leading 1, the natural one."""
    natural = natural_shape(graph.input_shape, graph.dynamic_batch)
    return (graph.input_shape,) if natural is None else (graph.input_shape, natural)


def describe_input(input_shape: tuple[int, ...], dynamic_batch: bool) -> str:
    """The model input and what to pass, for error messages."""
    shape = list(input_shape)
    if dynamic_batch:
        return f"the model input [N, {', '.join(map(str, shape))}]"
    natural = natural_shape(tuple(input_shape), dynamic_batch)
    if natural is None:
        return f"the model input {shape} (one sample per run: pass [N, {', '.join(map(str, shape))}])"
    return (f"the model input {shape} (its fixed 1 is the batch: pass [N, {', '.join(map(str, natural))}] "
            f"or [N, {', '.join(map(str, shape))}])")


def _fits(shape: tuple[int, ...], input_shape: tuple[int, ...], dynamic_batch: bool) -> int:
    """0: ``shape`` is ``[N, *input_shape]``; 1: the natural batch; -1: neither."""
    if len(shape) >= 1 and tuple(shape[1:]) == tuple(input_shape):
        return 0
    natural = natural_shape(tuple(input_shape), dynamic_batch)
    if natural is not None and len(shape) >= 1 and tuple(shape[1:]) == natural:
        return 1
    return -1


def fit_shape(x: Tensor, input_shape: tuple[int, ...], dynamic_batch: bool, what: str = "input batch") -> Tensor:
    """``x`` as ``[N, *input_shape]``: unchanged, or the natural batch ``[N, *input_shape[1:]]`` with the fixed 1
    put back (a view); anything else raises a one-line RobverifyError naming both shapes."""
    kind = _fits(tuple(x.shape), input_shape, dynamic_batch)
    if kind == 0:
        return x
    if kind == 1:
        return x.unsqueeze(1)
    raise RobverifyError(f"{what} of shape {list(x.shape)} does not fit {describe_input(input_shape, dynamic_batch)}")


def fit_input(graph: "Graph", x: Tensor, what: str = "input batch") -> Tensor:
    """``x`` ``[N, *s]`` for an accepted per-sample shape ``s`` -> ``[N, *graph.input_shape]`` (see the module)."""
    return fit_shape(x, graph.input_shape, graph.dynamic_batch, what)


def fit_batch_of(graph: "Graph", x: Tensor, n: int, what: str) -> Tensor:
    """:func:`fit_input` of a batch that must hold exactly ``n`` samples (one per spec)."""
    x = fit_input(graph, x, what)
    if x.shape[0] != n:
        raise RobverifyError(f"{what} holds {x.shape[0]} samples for a batch of {n} specs")
    return x


def fit_box(graph: "Graph", x_lo: Tensor, x_hi: Tensor) -> tuple[Tensor, Tensor]:
    """Both corners of a batch of boxes as ``[B, *graph.input_shape]``."""
    return fit_input(graph, x_lo, "input box"), fit_input(graph, x_hi, "input box")


def fit_spec(graph: "Graph", spec: Spec) -> Spec:
    """``spec`` with boxes ``[B, *graph.input_shape]`` (natural batches are reshaped, a view); its rows must act
    on the graph's ``n_outputs`` outputs. A spec that does not fit raises a one-line RobverifyError."""
    n_out = int(spec.C.shape[2])
    if n_out != graph.n_outputs:
        raise RobverifyError(f"spec rows act on {n_out} outputs, but the model has {graph.n_outputs} "
                             f"(output shape {list(graph.output_shape)})")
    x_lo = fit_input(graph, spec.x_lo, "spec box")
    if x_lo is spec.x_lo:
        return spec
    return Spec(x_lo, spec.x_hi.unsqueeze(1), spec.C, spec.d, spec.group)


def empty_bounds(graph: "Graph", spec: Spec) -> tuple[Tensor, Tensor]:
    """The bounds of an empty batch: rows ``[0, S]`` and margins ``[0]`` (graph's dtype and device)."""
    rows = spec.C.new_zeros((0, spec.C.shape[1])).to(graph.device, graph.dtype)
    return rows, rows.new_zeros(0)


def in_layout_of(x: Tensor, like: Tensor) -> Tensor:
    """Inputs ``x`` ``[N, *graph.input_shape]`` in the layout of ``like`` (the batch a caller passed)."""
    if tuple(x.shape) == tuple(like.shape):
        return x
    if math.prod(x.shape) != math.prod(like.shape):
        raise RuntimeError(f"cannot lay {list(x.shape)} out as {list(like.shape)}")  # a bug, not bad input
    return x.reshape(like.shape)
