"""Build the graph IR from a live ``torch.nn.Module`` (the zoo's networks), sharing its parameters.

``Linear`` and ``Conv2d`` weights are the module's own tensors, so bounds computed with
``BoundOptions(grad=True)`` give gradients to the model (certified training). Tensors derived from a module
(BatchNorm folding, normalisation) are computed when the graph is built: build the graph again after an
optimiser step (it is cheap). BatchNorm always uses its running statistics (inference semantics).
A container is read as a sequence when it is an ``nn.Sequential`` or defines ``ir_sequence()``.
"""

from __future__ import annotations

import itertools

import torch
from torch import Tensor, nn

from robverify import ops
from robverify.errors import RobverifyError
from robverify.ir.graph import Graph, Node
from robverify.ir.blocks import Normalize, Residual


class _ModuleBuilder:
    def __init__(self, input_shape: tuple[int, ...], like: Tensor) -> None:
        self.input_shape = tuple(input_shape)
        self.like = like
        self.shapes: dict[str, tuple[int, ...]] = {"input": self.input_shape}
        self.nodes: list[Node] = []
        self.counter = itertools.count()

    def emit(self, prefix: str, op: ops.Op, inputs: list[str]) -> str:
        name = f"{prefix or 'node'}#{next(self.counter)}"
        with torch.no_grad():
            probes = [torch.zeros((1, *self.shapes[i]), dtype=self.like.dtype, device=self.like.device)
                      for i in inputs]
            try:
                shape = tuple(op.forward(*probes).shape[1:])
            except RuntimeError as err:
                shapes = ", ".join(str(list(self.shapes[i])) for i in inputs)
                raise RobverifyError(f"module {prefix or type(op).__name__}: cannot take inputs of shape {shapes} "
                                     f"({str(err).splitlines()[0]})") from None
        self.shapes[name] = shape
        self.nodes.append(Node(name, op, tuple(inputs), shape))
        return name

    def channel_view(self, t: Tensor, src: str) -> Tensor:
        rank = len(self.shapes[src])
        return t.view(-1, *([1] * (rank - 1)))

    def visit(self, module: nn.Module, src: str, prefix: str) -> str:
        if isinstance(module, nn.Sequential) or hasattr(module, "ir_sequence"):
            children = module.ir_sequence() if hasattr(module, "ir_sequence") else list(module.named_children())
            for i, child in enumerate(children):
                name, child = child if isinstance(child, tuple) else (str(i), child)
                src = self.visit(child, src, f"{prefix}.{name}" if prefix else name)
            return src
        if isinstance(module, (nn.Identity, nn.Dropout)):
            return src
        if isinstance(module, Residual):
            body = self.visit(module.body, src, f"{prefix}.body")
            short = src if module.shortcut is None else self.visit(module.shortcut, src, f"{prefix}.shortcut")
            return self.emit(f"{prefix}.add", ops.Add2(), [body, short])
        return self.emit(prefix, self.leaf(module, src, prefix), [src])

    def leaf(self, m: nn.Module, src: str, prefix: str) -> ops.Op:
        if isinstance(m, nn.Linear):
            return ops.Linear(m.weight, m.bias)
        if isinstance(m, nn.Conv2d):
            if isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise RobverifyError(f"module {prefix}: Conv2d padding {m.padding!r}/{m.padding_mode} unsupported")
            return ops.Conv(m.weight, m.bias, tuple(m.stride), tuple(m.padding), tuple(m.dilation), m.groups)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            scale = m.weight / torch.sqrt(m.running_var + m.eps) if m.affine else 1 / torch.sqrt(m.running_var + m.eps)
            shift = (m.bias if m.affine else 0) - m.running_mean * scale
            return ops.ElementwiseAffine(self.channel_view(scale, src), self.channel_view(shift, src))
        if isinstance(m, Normalize):
            inv = 1.0 / m.std
            return ops.ElementwiseAffine(self.channel_view(inv, src), self.channel_view(-m.mean * inv, src))
        if isinstance(m, nn.ReLU):
            return ops.Relu()
        if isinstance(m, nn.Sigmoid):
            return ops.Sigmoid()
        if isinstance(m, nn.Tanh):
            return ops.Tanh()
        if isinstance(m, nn.Flatten):
            shape = self.shapes[src]
            start = m.start_dim - 1 if m.start_dim > 0 else m.start_dim + len(shape) + 1
            end = m.end_dim + len(shape) + 1 if m.end_dim < 0 else m.end_dim
            start, end = max(start, 0), end - 1
            merged = 1
            for d in shape[start:end + 1]:
                merged *= d
            return ops.Reshape((*shape[:start], merged, *shape[end + 1:]))
        if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d)):
            pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
            if m.ceil_mode:
                raise RobverifyError(f"module {prefix}: pooling with ceil_mode is not supported")
            stride = pair(m.stride if m.stride is not None else m.kernel_size)
            if isinstance(m, nn.AvgPool2d):
                if m.divisor_override is not None:
                    raise RobverifyError(f"module {prefix}: AvgPool2d divisor_override is not supported")
                return ops.AvgPool(pair(m.kernel_size), stride, pair(m.padding), m.count_include_pad)
            return ops.MaxPool(pair(m.kernel_size), stride, pair(m.padding), pair(m.dilation))
        raise RobverifyError(f"module {prefix or type(m).__name__}: {type(m).__name__} is not supported by the graph IR")


def from_module(module: nn.Module, input_shape: tuple[int, ...]) -> Graph:
    """The IR of ``module`` for per-sample inputs of ``input_shape`` (e.g. ``(1, 28, 28)``)."""
    like = next(itertools.chain(module.parameters(), module.buffers()), torch.zeros(()))
    builder = _ModuleBuilder(input_shape, like if like.is_floating_point() else torch.zeros(()))
    output = builder.visit(module, "input", "")
    if output == "input":
        raise RobverifyError("module has no layers the graph IR can read")
    return Graph("input", builder.input_shape, builder.nodes, output, source=type(module).__name__)
