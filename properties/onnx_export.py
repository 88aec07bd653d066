"""Export a torch classifier to ONNX and prove the file computes what the model computes.

:func:`export_onnx` writes ``<stem>.onnx`` (opset :data:`OPSET`, input ``input``, output ``logits``, dynamic
batch dimension), ``<stem>.pt`` (the ``state_dict``) and, given a :class:`~robverify.formats.model_card.ModelCard`,
``<stem>.json``. Before anything is put in place it checks the ONNX model (``onnx.checker``) and compares
onnxruntime with torch on seeded random inputs in ``[0, 1]`` (batch sizes ``n_parity``, 1 and 7); a
difference above ``tol`` is an error and leaves no files behind. Files are written under temporary names in
the target directory and renamed into place (``os.replace``).
"""

from __future__ import annotations

import copy
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from robverify.errors import RobverifyError
from robverify.files import atomic_write, file_sha256
from robverify.formats.model_card import ModelCard, card_path_for

__all__ = ["OPSET", "ExportReport", "export_onnx", "onnx_sha256"]

#: The ONNX opset every robverify export uses (fixed, so hashes and the graph IR's operator set are stable).
OPSET = 17

#: Batch sizes checked besides ``n_parity`` (they prove the batch dimension is really dynamic).
PARITY_BATCHES = (1, 7)


@dataclass(frozen=True)
class ExportReport:
    """What :func:`export_onnx` wrote and how closely onnxruntime reproduces the torch model."""

    path: Path
    max_abs_diff: float
    sha256: str
    opset: int
    state_dict_path: Path | None = None
    card_path: Path | None = None


def onnx_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (the model identity used in cards and run records)."""
    return file_sha256(path)


def _check_args(path: Path, input_shape: tuple[int, ...], n_parity: int, tol: float) -> tuple[int, ...]:
    if path.suffix != ".onnx":
        raise RobverifyError(f"export path: expected a file name ending in .onnx, got {str(path)!r}")
    if (
        isinstance(input_shape, (str, bytes))
        or not isinstance(input_shape, (tuple, list))
        or not input_shape
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in input_shape)
    ):
        raise RobverifyError(f"input_shape: expected the per-sample shape as positive integers, got {input_shape!r}")
    if isinstance(n_parity, bool) or not isinstance(n_parity, int) or n_parity < 1:
        raise RobverifyError(f"n_parity: expected a positive integer, got {n_parity!r}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol < 0:
        raise RobverifyError(f"tol: expected a non-negative number, got {tol!r}")
    return tuple(int(d) for d in input_shape)


def _temp_file(directory: Path, name: str) -> Path:
    """Create an empty temporary file beside the final one; any failure means the directory is unwritable."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
        os.close(fd)
    except OSError as exc:
        raise RobverifyError(f"cannot write to {directory}: {exc.strerror or exc}") from None
    return Path(tmp)


def _export(net: nn.Module, tmp: Path, shape: tuple[int, ...], seed: int) -> None:
    dummy = torch.rand((2, *shape), generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and tracer notes
        try:
            torch.onnx.export(
                net,
                (dummy,),
                str(tmp),
                dynamo=False,
                export_params=True,
                opset_version=OPSET,
                do_constant_folding=True,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            )
        except Exception as exc:  # exporter errors are many types and many lines; keep the first
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RobverifyError(f"ONNX export failed: {first}") from exc


def _check_onnx(tmp: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(tmp))
    except onnx.checker.ValidationError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
        raise RobverifyError(f"exported ONNX model is invalid: {first}") from exc


def _parity(net: nn.Module, tmp: Path, shape: tuple[int, ...], n_parity: int, seed: int) -> tuple[float, float]:
    """Max |torch - onnxruntime| over seeded random inputs in [0, 1] with batch sizes n_parity, 1 and 7, and
    the scale it is judged at: ``max(1, max |logits|)`` (float32 error grows with the logits)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    session = ort.InferenceSession(str(tmp), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed + 1)
    worst, scale = 0.0, 1.0
    for batch in (n_parity, *PARITY_BATCHES):
        x = torch.rand((batch, *shape), generator=generator)
        with torch.no_grad():
            expected = net(x).numpy()
        (got,) = session.run(["logits"], {"input": x.numpy()})
        if got.shape != expected.shape:
            raise RobverifyError(
                f"ONNX parity failed: onnxruntime output shape {list(got.shape)} != torch {list(expected.shape)} "
                f"at batch size {batch}"
            )
        diff = float(np.max(np.abs(got.astype(np.float64) - expected.astype(np.float64))))
        if math.isnan(diff):
            return diff, scale
        worst = max(worst, diff)
        scale = max(scale, float(np.max(np.abs(expected))) if expected.size else 1.0)
    return worst, scale


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    input_shape: tuple[int, ...],
    *,
    card: ModelCard | None = None,
    n_parity: int = 256,
    tol: float = 1e-5,
    seed: int = 0,
) -> ExportReport:
    """Export ``model`` (in eval mode; the caller's model is not modified) to ``path`` and check parity.

    ``input_shape`` is the per-sample shape without the batch dimension, e.g. ``(1, 28, 28)``. Writes
    ``path``, ``<stem>.pt`` and, when ``card`` is given, fills its ``onnx_sha256``, ``opset`` and
    ``parity_max_abs_diff`` and writes it to ``<stem>.json``.
    """
    path = Path(path)
    shape = _check_args(path, input_shape, n_parity, tol)
    directory = path.parent
    onnx_tmp = _temp_file(directory, path.name)  # checks the directory before any export work
    temps = [onnx_tmp]
    try:
        net = copy.deepcopy(model).cpu().eval()
        _export(net, onnx_tmp, shape, seed)
        _check_onnx(onnx_tmp)
        max_diff, scale = _parity(net, onnx_tmp, shape, n_parity, seed)
        if not max_diff <= tol * scale:
            raise RobverifyError(
                f"ONNX parity failed: max |torch - onnxruntime| = {max_diff:.3g} > tol {tol:g} x max(1, max|logits|) "
                f"= {tol * scale:.3g}"
            )
        sha = onnx_sha256(onnx_tmp)

        pt_path = path.with_name(f"{path.stem}.pt")
        card_path = None
        if card is not None:
            card.onnx_sha256, card.opset, card.parity_max_abs_diff = sha, OPSET, max_diff
            card.to_dict()  # validate before anything is put in place
            card_path = card_path_for(path)
        onnx_bytes = onnx_tmp.read_bytes()
        atomic_write(path, lambda handle: handle.write(onnx_bytes))
        atomic_write(pt_path, lambda handle: torch.save(net.state_dict(), handle))
        if card is not None:
            card.to_json(card_path)
    except OSError as exc:
        raise RobverifyError(f"cannot write to {directory}: {exc.strerror or exc}") from None
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
    return ExportReport(path, max_diff, sha, OPSET, pt_path, card_path)
