"""Export local-robustness instances of one model as a VNN-COMP benchmark folder.

Layout (what a tool's ``run_instance.sh`` consumes unchanged)::

    OUT/onnx/<model>.onnx         the model, rewritten for verifiers with narrow operator support (below)
    OUT/vnnlib/<model>_s<sample>_eps<eps>[_t<target>].vnnlib
    OUT/instances.csv             onnx path, vnnlib path, timeout (paths relative to OUT, no header)
    OUT/README.md                 how the instances were chosen

Instances are the first ``n`` correctly classified samples (by onnxruntime) in the order given (the task's
seeded permutation), one property per sample and eps: untargeted (one2any) or, with ``targeted``, one
one2one property per other class.

The model is written through :func:`robverify.ir.rewrite.verifier_ready_onnx` (the zoo's ``Normalize`` as a
1x1 ``Conv``: Marabou 2.0 rejects its broadcasting ``Sub``/``Div``), after onnxruntime checks that the written
file computes what the original does; the README gives both hashes and the largest difference seen.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from torch import Tensor

from robverify.files import atomic_write_text
from robverify.formats.vnnlib_write import write_robustness_vnnlib
from robverify.errors import RobverifyError
from robverify.ir.model import LoadedModel
from robverify.ir.rewrite import write_verifier_ready_onnx
from robverify.ir.runtime import OnnxRuntimeModel

__all__ = ["BenchmarkInstance", "export_benchmark", "read_instances"]


@dataclass(frozen=True)
class BenchmarkInstance:
    """One row of ``instances.csv`` and what it stands for."""

    onnx: str
    vnnlib: str
    timeout: float
    sample_id: int
    label: int
    eps: float
    target: int | None


def _eps_text(eps: float) -> str:
    return np.format_float_positional(float(eps), unique=True, trim="-").replace(".", "p")


def export_benchmark(model: LoadedModel, x: Tensor, label: Tensor, sample_id: Tensor, eps: Sequence[float],
                     out: str | Path, *, n: int, n_classes: int, targeted: bool = False, timeout: float = 60.0,
                     domain: tuple[float, float] = (0.0, 1.0), task: str = "", seed: int = 0
                     ) -> list[BenchmarkInstance]:
    """Write the benchmark folder ``out`` for the first ``n`` correctly classified samples.

    Args:
        x: ``[N, *model_input_shape]`` candidate samples in their chosen order; label, sample_id: ``[N]``.
        eps: L-inf radii (in the input's scale); one property per sample and eps.
    Returns the instances written (fewer than ``n`` samples' worth when fewer are correctly classified).
    """
    if n < 1:
        raise RobverifyError(f"-n must be at least 1, got {n}")
    if not eps:
        raise RobverifyError("at least one --eps is needed")
    if any(not math.isfinite(float(e)) or float(e) < 0 for e in eps):
        raise RobverifyError(f"--eps must be finite numbers >= 0, got {list(eps)}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise RobverifyError(f"--timeout must be a finite number > 0, got {timeout}")
    out = Path(out)
    pred = model.predict(x)
    chosen = (pred == label).nonzero().squeeze(1)[:n]
    onnx_rel = f"onnx/{model.name}.onnx"
    (out / "onnx").mkdir(parents=True, exist_ok=True)
    parity = _write_model(model, out / onnx_rel)
    instances: list[BenchmarkInstance] = []
    for i in chosen.tolist():
        sid, lab = int(sample_id[i]), int(label[i])
        for e in eps:
            targets = [t for t in range(n_classes) if t != lab] if targeted else [None]
            for t in targets:
                name = f"{model.name}_s{sid}_eps{_eps_text(e)}" + ("" if t is None else f"_t{t}") + ".vnnlib"
                write_robustness_vnnlib(out / "vnnlib" / name, x[i], lab, float(e), n_classes, domain=domain,
                                        target=t, comment=f"task {task}, sample {sid} (seed {seed})")
                instances.append(BenchmarkInstance(onnx_rel, f"vnnlib/{name}", float(timeout), sid, lab, float(e), t))
    atomic_write_text(out / "instances.csv", "".join(f"{r.onnx},{r.vnnlib},{r.timeout:g}\n" for r in instances))
    atomic_write_text(out / "README.md", _readme(model, out / onnx_rel, parity, instances, x.shape[0], chosen.numel(), n,
                                             eps, targeted, timeout, domain, task, seed))
    return instances


def _write_model(model: LoadedModel, path: Path, n: int = 64) -> float:
    """Write the verifier-ready rewrite of ``model`` to ``path``; returns the largest output difference onnxruntime
    sees between it and the original on ``n`` seeded random inputs (RobverifyError beyond float32 rounding)."""
    write_verifier_ready_onnx(model.path, path)
    x = np.random.default_rng(0).random((n, *model.graph.input_shape)).astype(np.float32)
    ref = model.runtime.logits(x)
    diff = float(np.abs(OnnxRuntimeModel(path, model.graph.input_shape, model.runtime.dynamic_batch).logits(x)
                        - ref).max())
    if not diff <= 1e-5 * (1.0 + float(np.abs(ref).max())):
        path.unlink(missing_ok=True)
        raise RobverifyError(f"the rewritten {model.path.name} differs from the original by {diff:.3g}; not exported")
    return diff


def _readme(model: LoadedModel, written: Path, parity: float, instances: list[BenchmarkInstance], pool: int,
            n_chosen: int, n: int,
            eps: Sequence[float], targeted: bool, timeout: float, domain: tuple[float, float], task: str,
            seed: int) -> str:
    samples = list(dict.fromkeys((r.sample_id, r.label) for r in instances))
    kind = ("targeted (one2one): one property per other class, unsafe if Y_target >= Y_label" if targeted else
            "untargeted (one2any): unsafe if some Y_j >= Y_label")
    lines = [
        f"# VNN-COMP benchmark: {model.name}",
        "",
        "Written by `robverify export-vnnlib`.",
        "",
        f"- Model: `onnx/{model.name}.onnx` (sha256 `{hashlib.sha256(written.read_bytes()).hexdigest()}`): the "
        f"original (sha256 `{model.sha256}`) with per-channel input normalisation as a 1x1 Conv for verifiers that "
        f"lack broadcasting Sub/Div (onnxruntime: outputs within {parity:.1e} of the original's).",
        f"- Task: `{task}`; samples in the order of the task's test set permuted with seed {seed}.",
        f"- Chosen: the first {n_chosen} samples that onnxruntime classifies correctly (asked for {n}, "
        f"{pool} candidates looked at).",
        f"- Properties: L-inf box `clip(x +- eps, [{domain[0]:g}, {domain[1]:g}])` per input, {kind}.",
        f"- eps: {', '.join(repr(float(e)) for e in eps)}; timeout {timeout:g} s per instance.",
        f"- {len(instances)} instances in `instances.csv` (onnx, vnnlib, timeout; paths relative to this folder).",
        "",
        "| sample_id | label |",
        "| --- | --- |",
        *[f"| {sid} | {lab} |" for sid, lab in samples],
        "",
    ]
    return "\n".join(lines)


def read_instances(folder: str | Path) -> list[tuple[Path, Path, float]]:
    """``(onnx, vnnlib, timeout)`` per row of ``folder/instances.csv``, paths resolved against ``folder``."""
    folder = Path(folder)
    rows = []
    for k, line in enumerate((folder / "instances.csv").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            raise RobverifyError(f"{folder / 'instances.csv'}:{k}: expected onnx,vnnlib,timeout, got {line[:80]!r}")
        try:
            timeout = float(parts[2])
        except ValueError:
            raise RobverifyError(f"{folder / 'instances.csv'}:{k}: timeout {parts[2]!r} is not a number") from None
        rows.append((folder / parts[0], folder / parts[1], timeout))
    return rows
