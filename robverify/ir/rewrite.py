"""Equivalent rewrites of an ONNX graph for verifiers with narrower operator support (auto_LiRPA 0.3, Marabou 2.0).

* ``Identity`` nodes that forward an initializer (torch's exporter writes them for BatchNorm statistics) are
  removed, their consumers reading the initializer directly;
* per-channel ``Sub`` / ``Div`` / ``Mul`` / ``Add`` by a constant applied to the 4-D image input (the zoo's
  ``Normalize``) become 1x1 ``Conv`` nodes with a diagonal weight: Marabou's parser rejects the broadcasting
  ``Sub``, auto_LiRPA's patches mode handles a ``Conv``.

The rewritten graph computes the same function up to float32 rounding (``x * (1/s)`` for ``x / s``); callers
check it against onnxruntime.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["verifier_ready_onnx", "write_verifier_ready_onnx"]

_AFFINE_OPS = ("Sub", "Div", "Mul", "Add")


def _initializers(model: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def _drop_initializer_identities(model: Any) -> None:
    """Remove ``Identity`` nodes whose input is an initializer, pointing their consumers at it."""
    inits = {init.name for init in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    alias: dict[str, str] = {}
    keep = []
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _per_channel(const: np.ndarray, channels: int) -> bool:
    """``const`` broadcasts against ``[N, C, H, W]`` as one value per channel (or one for all)."""
    if const.size == 1:
        return True
    shape = (1,) * max(0, 4 - const.ndim) + const.shape
    return len(shape) == 4 and shape[0] == 1 and shape[1] == channels and shape[2:] == (1, 1)


def _channel_affine_to_conv(model: Any) -> None:
    """Rewrite per-channel affine ops by constants on the 4-D input into 1x1 ``Conv`` nodes (diagonal weight)."""
    from onnx import helper, numpy_helper

    graph = model.graph
    dims = [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or dims[1] <= 0:
        return
    channels = dims[1]
    inits = _initializers(model)
    on_input = {graph.input[0].name}  # tensors shaped like the input, reached by rewritten ops only
    nodes = []
    for k, node in enumerate(graph.node):
        if node.op_type in _AFFINE_OPS and len(node.input) == 2 and node.input[0] in on_input \
                and node.input[1] in inits:
            const = inits[node.input[1]].astype(np.float64)
            if _per_channel(const, channels):
                c = np.broadcast_to(const.reshape(-1), (channels,))
                if node.op_type == "Div" and (c == 0).any():
                    nodes.append(node)
                    continue
                scale = {"Sub": np.ones(channels), "Add": np.ones(channels), "Mul": c, "Div": 1.0 / c}[node.op_type]
                bias = {"Sub": -c, "Add": c, "Mul": np.zeros(channels), "Div": np.zeros(channels)}[node.op_type]
                w_name, b_name = f"robverify_affine_w{k}", f"robverify_affine_b{k}"
                graph.initializer.append(numpy_helper.from_array(
                    np.diag(scale).reshape(channels, channels, 1, 1).astype(np.float32), w_name))
                graph.initializer.append(numpy_helper.from_array(bias.astype(np.float32), b_name))
                nodes.append(helper.make_node("Conv", [node.input[0], w_name, b_name], list(node.output),
                                              name=f"robverify_affine{k}", kernel_shape=[1, 1]))
                on_input.add(node.output[0])
                continue
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _drop_unused_initializers(model: Any) -> None:
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)


def verifier_ready_onnx(path: str | Path) -> Any:
    """The ONNX model at ``path`` (an ``onnx.ModelProto``) with the rewrites of this module, checked by onnx."""
    import onnx

    model = onnx.load(str(path))
    _drop_initializer_identities(model)
    _channel_affine_to_conv(model)
    _drop_unused_initializers(model)
    onnx.checker.check_model(model)
    return model


def write_verifier_ready_onnx(path: str | Path, out: str | Path | None = None) -> Path:
    """Write :func:`verifier_ready_onnx` of ``path`` to ``out`` (default: a new temporary file); returns it."""
    import onnx

    if out is None:
        handle = tempfile.NamedTemporaryFile(prefix="robverify-", suffix=".onnx", delete=False)
        handle.close()
        out = handle.name
    onnx.save(verifier_ready_onnx(path), str(out))
    return Path(out)
