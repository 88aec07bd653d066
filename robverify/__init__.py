"""robverify: sound certification of (transferred) adversarial robustness.

The three names a library user meets first, imported lazily (``robverify --help`` does not load torch)::

    import robverify
    graph = robverify.from_onnx("model.onnx")                       # the graph IR
    spec = robverify.robustness_spec(x, label, eps=0.01, n_classes=10)  # what is verified
    result = robverify.compute_bounds(graph, spec, "crown")         # sound lower bounds, verified per sample

The pipeline, one subpackage per stage: ``ir`` (graphs) -> ``engine`` (bounds, attacks) -> ``backends`` ->
``runs`` (run directories, searches, jobs) -> ``analysis``; ``formats`` (files other tools read) beside them;
``app`` and ``cli`` on top.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "from_onnx": "robverify.ir.from_onnx",
    "robustness_spec": "robverify.spec",
    "compute_bounds": "robverify.engine.bounds",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # pragma: no cover
    from robverify.engine.bounds import compute_bounds
    from robverify.ir.from_onnx import from_onnx
    from robverify.spec import robustness_spec


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'robverify' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
