"""Normalisation outside the model (``--mean`` / ``--std``): the model that is verified is ``net((x - mean) / std)``.

Many published models expect normalised input and leave the normalisation to the data pipeline. Verifying them
on pixel-scale data needs the normalisation *in* the verified function, so that eps, the input range and clipping
stay in pixel scale and each channel's radius is scaled by its own ``1 / std`` exactly. :func:`with_normalisation`
writes that function as an ONNX file (``Sub`` and ``Div`` by constants in front of the original graph), which every
backend and any external verifier reads like any other model.

``mean`` / ``std`` are given per channel of the data (or one value for all); :func:`per_element` spreads them over
the data's image shape and fits them to the model input as the data is fitted (:func:`robverify.ir.model.inputs_for`:
a transpose for channels-last models, the data's own order for flat ones).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from robverify.errors import RobverifyError

__all__ = ["parse_channel_values", "per_element", "with_normalisation"]

_CENTRED = "robverify_input_centred"
_NORMALISED = "robverify_input_normalised"


def parse_channel_values(text: str | None, what: str) -> tuple[float, ...] | None:
    """``"0.49,0.48,0.45"`` -> ``(0.49, 0.48, 0.45)`` (finite numbers; ``--std`` also ``> 0``); None stays None."""
    if text is None:
        return None
    try:
        values = tuple(float(t) for t in text.split(","))
    except ValueError:
        raise RobverifyError(f"{what}: expected numbers separated by commas (one per channel), got {text!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise RobverifyError(f"{what}: expected finite numbers, got {text!r}")
    if what == "--std" and not all(v > 0 for v in values):
        raise RobverifyError(f"--std: every value must be > 0, got {text!r}")
    return values


def per_element(values: Sequence[float], image_shape: Sequence[int], what: str) -> np.ndarray:
    """Channel values [C] (or [1]) spread over one image ``image_shape`` (``[C, H, W]``, or ``[D]`` for flat data,
    which takes one value only) -> float64 array of ``image_shape``."""
    shape = tuple(int(s) for s in image_shape)
    channels = shape[0] if len(shape) == 3 else 1
    if len(values) not in (1, channels):
        raise RobverifyError(f"{what}: {len(values)} values, but the data has {channels} channel(s) "
                             f"(images {list(shape)}); give one value per channel or one for all")
    column = np.asarray(values, dtype=np.float64).reshape((-1,) + (1,) * (len(shape) - 1))
    return np.broadcast_to(column, shape).copy()


def with_normalisation(model: str | Path, mean: np.ndarray, std: np.ndarray, out: str | Path) -> Path:
    """Write to ``out`` the ONNX model ``model((x - mean) / std)``.

    ``mean`` / ``std``: arrays of the model's input shape without the batch axis (or broadcastable to it); stored as
    float32 constants of shape ``[1, *shape]`` so that fixed and dynamic batches both broadcast. The graph input
    keeps its name, shape and type; every node that read it reads the normalised tensor instead.
    """
    proto = onnx.load(str(model))
    graph = proto.graph
    consts = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1:
        raise RobverifyError(f"{model}: expected one graph input, found {len(inputs)}")
    name = inputs[0].name
    if any(o.name == name for o in graph.output):
        raise RobverifyError(f"{model}: the graph input is also an output; it cannot be normalised in place")
    mean32 = np.asarray(mean, dtype=np.float32)[None]
    std32 = np.asarray(std, dtype=np.float32)[None]
    if not (np.isfinite(mean32).all() and np.isfinite(std32).all() and (std32 > 0).all()):
        raise RobverifyError("--mean/--std: expected finite values and std > 0")
    for node in graph.node:
        for k, used in enumerate(node.input):
            if used == name:
                node.input[k] = _NORMALISED
    prefix = [helper.make_node("Sub", [name, "robverify_mean"], [_CENTRED], name="robverify_sub_mean"),
              helper.make_node("Div", [_CENTRED, "robverify_std"], [_NORMALISED], name="robverify_div_std")]
    nodes = prefix + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend([numpy_helper.from_array(mean32, "robverify_mean"),
                              numpy_helper.from_array(std32, "robverify_std")])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out
