"""Read an ONNX file into the graph IR (:class:`robverify.ir.graph.Graph`) and check it against onnxruntime."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from robverify import ops
from robverify.errors import RobverifyError
from robverify.ir.graph import Graph, Node
from robverify.ir.runtime import OnnxRuntimeModel

SUPPORTED_OPS = (
    "Add", "AveragePool", "BatchNormalization", "Cast", "Concat", "Constant", "Conv", "Div", "Dropout", "Flatten",
    "Gather", "Gemm", "GlobalAveragePool", "Identity", "MatMul", "MaxPool", "Mul", "Neg", "Pad", "Relu",
    "Reshape", "Shape", "Sigmoid", "Squeeze", "Sub", "Tanh", "Transpose", "Unsqueeze",
)


class _Builder:
    """Walks the ONNX nodes, folding constant subgraphs and emitting IR nodes for variable ones."""

    def __init__(self, model, source: str) -> None:
        from onnx import numpy_helper

        self.source = source
        self.graph = model.graph
        self.consts: dict[str, Tensor] = {}
        for init in self.graph.initializer:
            self.consts[init.name] = torch.from_numpy(np.array(numpy_helper.to_array(init)))
        _check_finite(source, self.consts, self.graph.node)
        inputs = [i for i in self.graph.input if i.name not in self.consts]
        if len(inputs) != 1:
            raise RobverifyError(f"{source}: expected one graph input, found {len(inputs)}")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs[0].type.tensor_type.shape.dim]
        self.dynamic = bool(dims) and (dims[0] is None or dims[0] == 0)
        per_sample = dims[1:] if self.dynamic else dims
        if any(d is None or d <= 0 for d in per_sample):
            raise RobverifyError(f"{source}: input {inputs[0].name!r} has unknown dimensions {dims}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(int(d) for d in per_sample)
        self.shapes: dict[str, tuple[int, ...]] = {self.input_name: self.input_shape}
        self.alias: dict[str, str] = {}
        self.nodes: list[Node] = []

    # -- helpers -----------------------------------------------------------------------------------------------
    def full(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        """The ONNX-level shape of a per-sample shape (batch of one in front where the model has one)."""
        return (1, *shape) if self.dynamic else shape

    def per_sample(self, full: tuple[int, ...], where: str) -> tuple[int, ...]:
        if not self.dynamic:
            return tuple(full)
        if not full or full[0] != 1:
            raise RobverifyError(f"{self.source}: node {where} mixes the batch dimension (shape {list(full)})")
        return tuple(full[1:])

    def axis(self, axis: int, rank_full: int) -> int:
        return axis + rank_full if axis < 0 else axis

    def const(self, name: str, where: str) -> Tensor:
        if name not in self.consts:
            raise RobverifyError(f"{self.source}: node {where} needs a constant input {name!r}")
        return self.consts[name]

    def emit(self, name: str, op: ops.Op, inputs: list[str]) -> None:
        probes = [torch.zeros((1, *self.shapes[i])) for i in inputs]
        try:
            shape = tuple(op.forward(*probes).shape[1:])
        except RuntimeError as err:
            raise RobverifyError(f"{self.source}: node {name} ({op!r}) cannot be applied: {err}") from None
        self.shapes[name] = shape
        self.nodes.append(Node(name, op, tuple(inputs), shape))

    def emit_reshape(self, name: str, src: str, full_out: tuple[int, ...]) -> None:
        self.emit(name, ops.Reshape(self.per_sample(full_out, name)), [src])

    # -- main loop ---------------------------------------------------------------------------------------------
    def build(self) -> Graph:
        for node in self.graph.node:
            op_type = node.op_type
            if op_type not in SUPPORTED_OPS:
                raise RobverifyError(
                    f"{self.source}: unsupported operator {op_type} (node {node.name or node.output[0]!r}); "
                    f"supported: {', '.join(SUPPORTED_OPS)}"
                )
            attrs = _attributes(node)
            inputs = [self.alias.get(i, i) for i in node.input]
            out = node.output[0]
            where = f"{node.name or out!r} ({op_type})"
            present = [i for i in inputs if i]
            if op_type == "Shape" and present[0] in self.shapes:
                self.consts[out] = torch.tensor(self.full(self.shapes[present[0]]), dtype=torch.int64)
            elif all(i in self.consts for i in present):
                self.consts[out] = _fold(op_type, [self.consts[i] if i else None for i in inputs], attrs, where)
            elif op_type in ("Identity", "Dropout", "Cast"):
                self.alias[out] = present[0]
                self.shapes.setdefault(out, self.shapes[present[0]])
            else:
                handler = getattr(self, f"op_{op_type}", None)
                if handler is None:
                    raise RobverifyError(f"{self.source}: node {where} on a variable input is not supported")
                handler(out, inputs, attrs, where)
        output = self.alias.get(self.graph.output[0].name, self.graph.output[0].name)
        if output in self.consts:
            raise RobverifyError(f"{self.source}: the output does not depend on the input")
        return Graph(self.input_name, self.input_shape, self.nodes, output, source=self.source,
                     onnx_path=self.source, dynamic_batch=self.dynamic)

    # -- operators ---------------------------------------------------------------------------------------------
    def op_Gemm(self, out, inputs, attrs, where):
        if attrs.get("transA", 0):
            raise RobverifyError(f"{self.source}: node {where}: Gemm with transA=1 is not supported")
        b = self.const(inputs[1], where).float()
        weight = (b if attrs.get("transB", 0) else b.T) * attrs.get("alpha", 1.0)
        bias = None
        if len(inputs) > 2 and inputs[2]:
            c = self.const(inputs[2], where).float() * attrs.get("beta", 1.0)
            bias = c.reshape(-1).expand(weight.shape[0]).clone() if c.numel() in (1, weight.shape[0]) else None
            if bias is None:
                raise RobverifyError(f"{self.source}: node {where}: Gemm bias of shape {list(c.shape)}")
        self.emit(out, ops.Linear(weight, bias), [inputs[0]])

    def op_MatMul(self, out, inputs, attrs, where):
        a, b = inputs
        if b in self.consts and self.consts[b].dim() == 2:
            self.emit(out, ops.Linear(self.consts[b].float().T.contiguous()), [a])
        elif a in self.consts and self.consts[a].dim() == 2:
            w = self.consts[a].float()
            op = ops.Linear(w) if len(self.shapes[b]) == 1 else ops.MatMulLeft(w)
            self.emit(out, op, [b])
        else:
            raise RobverifyError(f"{self.source}: node {where}: MatMul needs one constant 2-D operand")

    def _elementwise(self, out, var, scale, shift, where):
        op = ops.ElementwiseAffine(None if scale is None else scale.float(), None if shift is None else shift.float())
        self.emit(out, op, [var])
        if self.shapes[out] != self.shapes[var]:
            raise RobverifyError(f"{self.source}: node {where}: broadcasting a constant enlarges the input")

    def _binary(self, out, inputs, where, kind: str):
        a, b = inputs
        if a not in self.consts and b not in self.consts:
            if kind in ("Add", "Sub") and self.shapes[a] == self.shapes[b]:
                self.emit(out, ops.Add2() if kind == "Add" else ops.Sub2(), [a, b])
                return
            raise RobverifyError(f"{self.source}: node {where}: {kind} of two variable inputs is not supported")
        var, c = (a, self.consts[b]) if b in self.consts else (b, self.consts[a])
        c = _trim_leading_ones(c, len(self.shapes[var]))
        if kind == "Add":
            self._elementwise(out, var, None, c, where)
        elif kind == "Sub":
            if var == a:
                self._elementwise(out, var, None, -c, where)
            else:
                self._elementwise(out, var, -torch.ones_like(c), c, where)
        elif kind == "Mul":
            self._elementwise(out, var, c, None, where)
        elif kind == "Div":
            if var != a:
                raise RobverifyError(f"{self.source}: node {where}: division by a variable is not supported")
            self._elementwise(out, var, 1.0 / c, None, where)

    def op_Add(self, out, inputs, attrs, where):
        self._binary(out, inputs, where, "Add")

    def op_Sub(self, out, inputs, attrs, where):
        self._binary(out, inputs, where, "Sub")

    def op_Mul(self, out, inputs, attrs, where):
        self._binary(out, inputs, where, "Mul")

    def op_Div(self, out, inputs, attrs, where):
        self._binary(out, inputs, where, "Div")

    def op_Neg(self, out, inputs, attrs, where):
        self._elementwise(out, inputs[0], torch.tensor(-1.0), None, where)

    def op_BatchNormalization(self, out, inputs, attrs, where):
        gamma, beta, mean, var = (self.const(i, where).float() for i in inputs[1:5])
        scale = gamma / torch.sqrt(var + attrs.get("epsilon", 1e-5))
        shift = beta - mean * scale
        rank = len(self.full(self.shapes[inputs[0]]))
        view = (-1,) + (1,) * (rank - 2)
        self._elementwise(out, inputs[0], scale.view(view), shift.view(view), where)

    def op_Conv(self, out, inputs, attrs, where):
        weight = self.const(inputs[1], where).float()
        if weight.dim() != 4:
            raise RobverifyError(f"{self.source}: node {where}: only 2-D convolutions are supported")
        bias = self.const(inputs[2], where).float() if len(inputs) > 2 and inputs[2] else None
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise RobverifyError(f"{self.source}: node {where}: auto_pad={attrs['auto_pad']} is not supported")
        src = inputs[0]
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[0] != pads[2] or pads[1] != pads[3]:
            self.emit(out + "/pad", ops.Pad((pads[1], pads[3], pads[0], pads[2])), [src])
            src, pads = out + "/pad", [0, 0, 0, 0]
        self.emit(out, ops.Conv(weight, bias, tuple(attrs.get("strides", [1, 1])), (pads[0], pads[1]),
                                tuple(attrs.get("dilations", [1, 1])), attrs.get("group", 1)), [src])

    def op_Relu(self, out, inputs, attrs, where):
        self.emit(out, ops.Relu(), [inputs[0]])

    def op_Sigmoid(self, out, inputs, attrs, where):
        self.emit(out, ops.Sigmoid(), [inputs[0]])

    def op_Tanh(self, out, inputs, attrs, where):
        self.emit(out, ops.Tanh(), [inputs[0]])

    def op_Flatten(self, out, inputs, attrs, where):
        full_in = self.full(self.shapes[inputs[0]])
        axis = self.axis(attrs.get("axis", 1), len(full_in))
        self.emit_reshape(out, inputs[0], (math.prod(full_in[:axis]), math.prod(full_in[axis:])))

    def op_Reshape(self, out, inputs, attrs, where):
        target = [int(t) for t in self.const(inputs[1], where).tolist()]
        full_in = self.full(self.shapes[inputs[0]])
        resolved = [full_in[i] if t == 0 and not attrs.get("allowzero", 0) else t for i, t in enumerate(target)]
        if resolved.count(-1) == 1:
            known = math.prod(t for t in resolved if t != -1)
            resolved[resolved.index(-1)] = math.prod(full_in) // max(known, 1)
        if math.prod(resolved) != math.prod(full_in):
            if self.dynamic and resolved and math.prod(resolved[1:]) == math.prod(full_in):
                resolved[0] = 1  # a batch size baked into the target shape
            else:
                raise RobverifyError(f"{self.source}: node {where}: cannot reshape {list(full_in)} to {target}")
        self.emit_reshape(out, inputs[0], tuple(resolved))

    def _squeeze(self, out, inputs, attrs, where, unsqueeze: bool):
        axes = attrs.get("axes")
        if axes is None and len(inputs) > 1 and inputs[1]:
            axes = self.const(inputs[1], where).tolist()
        shape = list(self.full(self.shapes[inputs[0]]))
        if unsqueeze:
            for a in sorted(self.axis(a, len(shape) + len(axes)) for a in axes):
                shape.insert(a, 1)
        else:
            axes = [self.axis(a, len(shape)) for a in (axes or [i for i, d in enumerate(shape) if d == 1])]
            shape = [d for i, d in enumerate(shape) if i not in axes]
        self.emit_reshape(out, inputs[0], tuple(shape))

    def op_Squeeze(self, out, inputs, attrs, where):
        self._squeeze(out, inputs, attrs, where, unsqueeze=False)

    def op_Unsqueeze(self, out, inputs, attrs, where):
        self._squeeze(out, inputs, attrs, where, unsqueeze=True)

    def op_Transpose(self, out, inputs, attrs, where):
        rank = len(self.full(self.shapes[inputs[0]]))
        perm = list(attrs.get("perm", list(reversed(range(rank)))))
        if self.dynamic:
            if perm[0] != 0:
                raise RobverifyError(f"{self.source}: node {where}: Transpose moves the batch dimension")
            perm = [p - 1 for p in perm[1:]]
        self.emit(out, ops.Transpose(perm), [inputs[0]])

    def op_Pad(self, out, inputs, attrs, where):
        if attrs.get("mode", "constant") != "constant":
            raise RobverifyError(f"{self.source}: node {where}: only constant padding is supported")
        pads = attrs.get("pads")
        if pads is None:
            pads = self.const(inputs[1], where).tolist()
        value = attrs.get("value", 0.0)
        if len(inputs) > 2 and inputs[2]:
            value = float(self.const(inputs[2], where).reshape(-1)[0])
        rank = len(pads) // 2
        if min(pads) < 0 or (self.dynamic and (pads[0] or pads[rank])):
            raise RobverifyError(f"{self.source}: node {where}: negative or batch padding is not supported")
        torch_pads: list[int] = []
        for d in reversed(range(rank)):
            torch_pads += [int(pads[d]), int(pads[d + rank])]
        while torch_pads and torch_pads[-2:] == [0, 0]:
            torch_pads = torch_pads[:-2]
        self.emit(out, ops.Pad(torch_pads, value), [inputs[0]])

    def _pool_geometry(self, attrs, where):
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise RobverifyError(f"{self.source}: node {where}: auto_pad={attrs['auto_pad']} is not supported")
        kernel = tuple(attrs["kernel_shape"])
        if len(kernel) != 2:
            raise RobverifyError(f"{self.source}: node {where}: only 2-D pooling is supported")
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        if pads[0] != pads[2] or pads[1] != pads[3] or attrs.get("ceil_mode", 0):
            raise RobverifyError(f"{self.source}: node {where}: asymmetric padding / ceil_mode is not supported")
        return kernel, tuple(attrs.get("strides", [1, 1])), (pads[0], pads[1])

    def op_AveragePool(self, out, inputs, attrs, where):
        kernel, stride, padding = self._pool_geometry(attrs, where)
        self.emit(out, ops.AvgPool(kernel, stride, padding, bool(attrs.get("count_include_pad", 0))), [inputs[0]])

    def op_GlobalAveragePool(self, out, inputs, attrs, where):
        h, w = self.shapes[inputs[0]][-2:]
        self.emit(out, ops.AvgPool((h, w), (h, w), (0, 0)), [inputs[0]])

    def op_MaxPool(self, out, inputs, attrs, where):
        kernel, stride, padding = self._pool_geometry(attrs, where)
        self.emit(out, ops.MaxPool(kernel, stride, padding, tuple(attrs.get("dilations", [1, 1]))), [inputs[0]])


def _check_finite(source: str, initializers: dict[str, Tensor], nodes: Iterable[Any]) -> None:
    """RobverifyError naming every initializer (and ``Constant`` node value) holding NaN or inf: such a model
    cannot be verified, and its parity check would only report ``max |diff| = nan``."""
    from onnx import numpy_helper

    tensors = list(initializers.items())
    for node in nodes:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value":
                tensors.append((f"{node.name or node.output[0]} (Constant)",
                                torch.from_numpy(np.array(numpy_helper.to_array(a.t)))))
    bad = []
    for name, t in tensors:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_nan, n_inf = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
            what = ", ".join(f"{k} {w}" for k, w in ((n_nan, "NaN"), (n_inf, "inf")) if k)
            bad.append(f"{name!r} ({what} of {t.numel()})")
    if bad:
        shown = "; ".join(bad[:5]) + (f"; and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise RobverifyError(f"{source}: non-finite weights in initializer(s) {shown}: the model cannot be verified")


def _trim_leading_ones(c: Tensor, rank: int) -> Tensor:
    while c.dim() > rank and c.shape[0] == 1:
        c = c[0]
    return c


def _attributes(node) -> dict:
    from onnx import helper

    values = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}


def _fold(op_type: str, values: list[Tensor | None], attrs: dict, where: str) -> Tensor:
    """Evaluate a node whose inputs are all constants."""
    from onnx import numpy_helper

    v = values
    folders: dict[str, Callable[[], Tensor]] = {
        "Constant": lambda: torch.from_numpy(np.array(numpy_helper.to_array(attrs["value"]))),
        "Identity": lambda: v[0], "Dropout": lambda: v[0], "Cast": lambda: v[0],
        "Add": lambda: v[0] + v[1], "Sub": lambda: v[0] - v[1], "Mul": lambda: v[0] * v[1],
        "Div": lambda: v[0] / v[1] if v[0].is_floating_point() else torch.div(v[0], v[1], rounding_mode="floor"),
        "Neg": lambda: -v[0],
        "Concat": lambda: torch.cat([t.reshape(-1) if t.dim() == 0 else t for t in v if t is not None],
                                    dim=attrs.get("axis", 0)),
        "Gather": lambda: torch.index_select(v[0], attrs.get("axis", 0), v[1].reshape(-1).long()).reshape(
            (*v[0].shape[:attrs.get("axis", 0)], *v[1].shape, *v[0].shape[attrs.get("axis", 0) + 1:])),
        "Unsqueeze": lambda: _fold_unsqueeze(v, attrs),
        "Squeeze": lambda: v[0].squeeze(),
        "Reshape": lambda: v[0].reshape([int(t) for t in v[1].tolist()]),
        "Transpose": lambda: v[0].permute(*attrs.get("perm", list(reversed(range(v[0].dim()))))),
        "Relu": lambda: torch.relu(v[0]), "Sigmoid": lambda: torch.sigmoid(v[0]), "Tanh": lambda: torch.tanh(v[0]),
    }
    if op_type not in folders:
        raise RobverifyError(f"node {where}: cannot fold constant {op_type}")
    return folders[op_type]()


def _fold_unsqueeze(v: list, attrs: dict) -> Tensor:
    axes = attrs.get("axes") or v[1].tolist()
    t = v[0]
    for a in sorted(axes):
        t = t.unsqueeze(a)
    return t


def from_onnx(path: str | Path, check: bool = True, n_check: int = 4, seed: int = 0) -> Graph:
    """Read ``path`` into a :class:`Graph`; with ``check``, compare its forward pass with onnxruntime on
    ``n_check`` random inputs in ``[0, 1]`` (max abs difference above ``1e-4 * (1 + max|y|)`` fails)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise RobverifyError(f"no such model file: {path}")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:  # onnx raises several unrelated types for corrupt files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RobverifyError(f"{path}: not a valid ONNX model ({first})") from None
    graph = _Builder(model, str(path)).build()
    if check:
        check_against_runtime(graph, OnnxRuntimeModel(path, graph.input_shape, graph.dynamic_batch), n_check, seed)
    return graph


def check_against_runtime(graph: Graph, runtime: OnnxRuntimeModel, n: int = 4, seed: int = 0) -> float:
    """Max abs difference between the IR and onnxruntime on ``n`` random inputs; raises above tolerance."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand((n, *graph.input_shape), generator=gen)
    with torch.no_grad():
        ours = graph.logits(x).double().numpy()
    theirs = runtime.logits(x)
    if ours.shape != theirs.shape:
        raise RobverifyError(f"{graph.source}: graph IR output {list(ours.shape)} differs from onnxruntime's "
                             f"{list(theirs.shape)}")
    diff = float(np.max(np.abs(ours - theirs))) if ours.size else 0.0
    scale = 1.0 + float(np.max(np.abs(theirs))) if theirs.size else 1.0
    if not diff <= 1e-4 * scale:
        raise RobverifyError(f"{graph.source}: graph IR disagrees with onnxruntime (max |diff| = {diff:.3g})")
    return diff
