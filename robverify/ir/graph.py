"""The graph IR: a topologically ordered list of nodes over one input, shared by forward passes, bounds and
attacks. Built from an ONNX file (:func:`robverify.ir.from_onnx.from_onnx`) or a live ``torch.nn.Module``
(:func:`robverify.ir.from_module.from_module`, sharing its parameters).

Every value is batched: the graph input is ``[N, *input_shape]`` and a node's value ``[N, *node.shape]``.
``input_shape`` is the shape of ONE sample as the model sees it (``[1, 784, 1]`` for a VNN-COMP network with a
fixed leading 1; ``[1, 28, 28]`` for a zoo model exported with a dynamic batch dimension). A fixed leading 1 is
also read as the batch dimension: such a graph accepts ``[N, 784, 1]`` as well (:mod:`robverify.ir.layout`);
any batch that fits neither layout is refused with a one-line RobverifyError.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from robverify.errors import RobverifyError
from robverify.ir.layout import fit_input
from robverify.ops import Op


@dataclass
class Node:
    """One operator application: ``name = op(*inputs)`` with per-sample output ``shape``."""

    name: str
    op: Op
    inputs: tuple[str, ...]
    shape: tuple[int, ...]


@dataclass
class Graph:
    """A verification graph. ``nodes`` are in topological order; ``output`` names the output node."""

    input_name: str
    input_shape: tuple[int, ...]
    nodes: list[Node]
    output: str
    source: str = "<module>"
    #: the ONNX file it was read from (counterexamples are re-checked there), if any
    onnx_path: str | None = None
    #: whether the ONNX model has a free batch dimension in front of ``input_shape``
    dynamic_batch: bool = True
    _index: dict[str, Node] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._index = {n.name: n for n in self.nodes}
        if self.output not in self._index and self.output != self.input_name:
            raise RobverifyError(f"graph output {self.output!r} is not produced by any node")

    # -- structure ---------------------------------------------------------------------------------------------
    def node(self, name: str) -> Node:
        return self._index[name]

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.input_shape if name == self.input_name else self._index[name].shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shape_of(self.output)

    @property
    def n_outputs(self) -> int:
        n = 1
        for d in self.output_shape:
            n *= d
        return n

    @property
    def n_inputs(self) -> int:
        n = 1
        for d in self.input_shape:
            n *= d
        return n

    def ancestors(self, name: str) -> list[Node]:
        """Nodes that ``name`` depends on (itself included), in topological order."""
        needed = {name}
        for node in reversed(self.nodes):
            if node.name in needed:
                needed.update(node.inputs)
        return [n for n in self.nodes if n.name in needed]

    def consumers(self) -> dict[str, list[Node]]:
        out: dict[str, list[Node]] = {}
        for node in self.nodes:
            for i in node.inputs:
                out.setdefault(i, []).append(node)
        return out

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "Graph":
        """Move (in place) every operator's tensors; returns self."""
        for node in self.nodes:
            node.op.to(device, dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        for node in self.nodes:
            for value in vars(node.op).values():
                if isinstance(value, Tensor) and value.is_floating_point():
                    return value.dtype
        return torch.float32

    @property
    def device(self) -> torch.device:
        for node in self.nodes:
            for value in vars(node.op).values():
                if isinstance(value, Tensor):
                    return value.device
        return torch.device("cpu")

    # -- evaluation --------------------------------------------------------------------------------------------
    def forward(self, x: Tensor, keep: bool = False) -> Tensor | dict[str, Tensor]:
        """Evaluate on ``x`` ``[N, *input_shape]`` (or the natural batch of :mod:`robverify.ir.layout`): the output
        ``[N, *output_shape]`` (all values if ``keep``)."""
        values = {self.input_name: fit_input(self, x)}
        consumers_left = {n: len(c) for n, c in self.consumers().items()}
        for node in self.nodes:
            values[node.name] = node.op.forward(*(values[i] for i in node.inputs))
            if not keep:
                for i in node.inputs:
                    consumers_left[i] -= 1
                    if consumers_left[i] == 0 and i != self.output:
                        values.pop(i, None)
        return values if keep else values[self.output]

    def logits(self, x: Tensor) -> Tensor:
        """Flattened output ``[N, n_outputs]``."""
        return self.forward(x).reshape(x.shape[0], self.n_outputs)  # (-1 is ambiguous for an empty batch)

    def __call__(self, x: Tensor) -> Tensor:
        return self.logits(x)

    def summary(self) -> str:
        lines = [f"input {self.input_name} {list(self.input_shape)}"]
        lines += [f"{n.name}: {n.op!r}({', '.join(n.inputs)}) -> {list(n.shape)}" for n in self.nodes]
        return "\n".join(lines)
