"""A model under verification: its graph IR, an onnxruntime judge and its identity (hash)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from robverify.devices import resolve_device
from robverify.errors import RobverifyError
from robverify.files import file_sha256
from robverify.ir.graph import Graph
from robverify.ir.from_onnx import check_against_runtime, from_onnx
from robverify.ir.layout import fit_batch_of, fit_input, fit_spec
from robverify.ir.runtime import OnnxRuntimeModel
from robverify.spec import Spec


@dataclass
class LoadedModel:
    """``graph`` (on ``device``), ``runtime`` (onnxruntime on CPU, float64 outputs), ``sha256`` of the file."""

    path: Path
    graph: Graph
    runtime: OnnxRuntimeModel
    sha256: str

    @property
    def name(self) -> str:
        return self.path.stem

    def predict(self, x: Tensor) -> Tensor:
        """Labels predicted by onnxruntime ``[N]`` for ``[N, *input_shape]`` (or the natural batch of
        :mod:`robverify.ir.layout`); a batch that fits neither is a RobverifyError."""
        x = fit_input(self.graph, x)
        if x.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long)
        return torch.from_numpy(self.runtime.logits(x).argmax(axis=1))

    def confirm(self, spec: Spec, x_adv: Tensor, candidates: Tensor) -> Tensor:
        """Re-check candidate counterexamples in onnxruntime: inside the box and property margin ``<= 0``.

        Returns ``[B]`` bool; non-candidates are False. ``spec`` and ``x_adv`` in either layout of
        :mod:`robverify.ir.layout`.
        """
        spec = fit_spec(self.graph, spec)
        x_adv = fit_batch_of(self.graph, x_adv, spec.batch_size, "counterexample batch")
        confirmed = torch.zeros(spec.batch_size, dtype=torch.bool)
        idx = candidates.nonzero().squeeze(1).cpu()
        if idx.numel() == 0:
            return confirmed
        x = x_adv[idx].detach().cpu()
        sub = spec.select(idx.to(spec.x_lo.device)).to("cpu", torch.float64)
        x64 = x.to(torch.float32).to(torch.float64)  # what onnxruntime will be fed
        inside = ((x64 >= sub.x_lo) & (x64 <= sub.x_hi)).flatten(1).all(dim=1)
        y = torch.from_numpy(self.runtime.logits(x.to(torch.float32).numpy()))
        margin = sub.output_margin(y)
        confirmed[idx] = inside & (margin <= 0)
        return confirmed


def load_model(path: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32) -> LoadedModel:
    """Read an ONNX model into the IR, check it against onnxruntime and move it to ``device``."""
    path = Path(path)
    graph = from_onnx(path, check=False)
    runtime = OnnxRuntimeModel(path, graph.input_shape, graph.dynamic_batch)
    check_against_runtime(graph, runtime)
    graph.to(resolve_device(device), dtype)
    return LoadedModel(path, graph, runtime, file_sha256(path))


def inputs_for(model: LoadedModel, x: Tensor) -> tuple[Tensor, dict | None]:
    """Fit task images ``[N, C, H, W]`` (or ``[N, *image_shape]``) to the model's input shape when only the layout
    differs: a channels-last input ``[H, W, C]`` (after any leading 1s) gets the images transposed; any other shape
    with the same number of values (e.g. a flat ``[1, 784, 1]`` input) gets them reshaped in their own order.

    Returns the fitted tensor and a record of what was done (None if nothing was needed); different element
    counts are an input error.
    """
    image_shape = tuple(x.shape[1:])
    want = model.graph.input_shape
    if image_shape == want:
        return x, None
    if int(np.prod(image_shape)) != int(np.prod(want)):
        raise RobverifyError(
            f"task images of shape {list(image_shape)} do not fit the model input {list(want)} "
            f"({int(np.prod(image_shape))} vs {int(np.prod(want))} values)"
        )
    core = tuple(want)
    while len(core) > 3 and core[0] == 1:
        core = core[1:]
    if len(image_shape) == 3 and len(core) == 3 and core == (image_shape[1], image_shape[2], image_shape[0]):
        moved = x.permute(0, 2, 3, 1).reshape(x.shape[0], *want)  # channels last: a transpose, not a reshape
        return moved, {"from": list(image_shape), "to": list(want), "layout": "NCHW->NHWC"}
    return x.reshape(x.shape[0], *want), {"from": list(image_shape), "to": list(want)}
