"""Import auto_LiRPA, making release 0.3 (the only one on PyPI) work on numpy 2 and torch 2.x.

:func:`import_auto_lirpa` is the one entry point. A newer auto_LiRPA is imported as is; for 0.3 four small
patches are applied first, each only where the installed numpy / torch lack what 0.3 expects:

1. ``numpy.lib.arraysetops`` (removed in numpy 2) is provided as a module holding ``isin``.
2. ``torch.onnx.symbolic_helper._set_opset_version`` (removed in torch 2.x) sets the TorchScript exporter's
   global opset version, which ``torch.onnx.utils._optimize_graph`` reads.
3. ``torch._C.Node.__getitem__`` (removed in torch 2.x) reads a node attribute by its kind.
4. ``BoundedModule._named_members`` of 0.3 rejects the ``remove_duplicate`` keyword torch 2.x passes from
   ``parameters()``; a wrapper accepts and drops the keywords the original does not know.

Patches are idempotent and recorded in :data:`APPLIED`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
import types
from typing import Any

from robverify.errors import RobverifyError

#: auto_LiRPA releases that need the patches
PATCHED_VERSIONS = frozenset({"0.3"})
#: names of the patches applied in this process
APPLIED: set[str] = set()

INSTALL_HINT = ("auto_LiRPA is not installed: pip install --no-deps auto-lirpa==0.3 tqdm appdirs pyyaml packaging "
                "(or run make install)")


def installed_version() -> str | None:
    """Version of the installed ``auto-LiRPA`` distribution, None when it is not installed."""
    for name in ("auto-LiRPA", "auto_LiRPA", "auto-lirpa"):
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def needs_patches(version: str | None) -> bool:
    return version in PATCHED_VERSIONS


def patch_numpy_arraysetops() -> None:
    """numpy 2 removed ``numpy.lib.arraysetops``; 0.3 imports ``isin`` from it."""
    try:
        importlib.import_module("numpy.lib.arraysetops")
        return
    except ImportError:
        pass
    import numpy

    module = types.ModuleType("numpy.lib.arraysetops")
    module.isin = numpy.isin  # type: ignore[attr-defined]
    sys.modules["numpy.lib.arraysetops"] = module
    APPLIED.add("numpy.lib.arraysetops")


def _exporter_globals() -> Any:
    """The TorchScript exporter's global settings object (where torch 2.x keeps the opset version)."""
    import torch.onnx.utils as onnx_utils

    module = sys.modules[onnx_utils._optimize_graph.__module__]
    return module.GLOBALS


def patch_set_opset_version() -> None:
    """Provide ``torch.onnx.symbolic_helper._set_opset_version(opset)``."""
    import torch.onnx.symbolic_helper as helper

    if hasattr(helper, "_set_opset_version"):
        return
    settings = _exporter_globals()

    def _set_opset_version(opset_version: int) -> None:
        settings.export_onnx_opset_version = opset_version

    helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]
    APPLIED.add("torch.onnx.symbolic_helper._set_opset_version")


def patch_node_getitem() -> None:
    """``node["value"]``: the attribute ``value`` read through its kind (``node.t``, ``node.i``, ...)."""
    import torch

    if hasattr(torch._C.Node, "__getitem__"):
        return

    def __getitem__(node: Any, key: str) -> Any:
        return getattr(node, node.kindOf(key))(key)

    torch._C.Node.__getitem__ = __getitem__  # type: ignore[attr-defined]
    APPLIED.add("torch._C.Node.__getitem__")


def patch_named_members(bounded_module_cls: type) -> None:
    """Let 0.3's ``BoundedModule._named_members`` take the keywords torch 2.x passes (``remove_duplicate``)."""
    original = bounded_module_cls._named_members
    if getattr(original, "_robverify_patched", False):
        return

    def _named_members(self: Any, get_members_fn: Any, prefix: str = "", recurse: bool = True,
                       remove_duplicate: bool = True, **kwargs: Any) -> Any:
        # 0.3's own version always removes duplicates (it keeps a memo of members seen).
        return original(self, get_members_fn, prefix, recurse)

    _named_members._robverify_patched = True  # type: ignore[attr-defined]
    bounded_module_cls._named_members = _named_members
    APPLIED.add("BoundedModule._named_members")


def import_auto_lirpa() -> types.ModuleType:
    """``auto_LiRPA``, patched when it is release 0.3. Raises RobverifyError (what to install) when absent."""
    version = installed_version()
    if version is None and importlib.util.find_spec("auto_LiRPA") is None:
        raise RobverifyError(INSTALL_HINT)
    if needs_patches(version):
        patch_numpy_arraysetops()
        patch_set_opset_version()
        patch_node_getitem()
    try:
        module = importlib.import_module("auto_LiRPA")
    except ImportError as exc:
        raise RobverifyError(f"auto_LiRPA {version or ''} cannot be imported ({exc}); {INSTALL_HINT}") from None
    if needs_patches(getattr(module, "__version__", version)):
        patch_named_members(module.BoundedModule)
    return module
