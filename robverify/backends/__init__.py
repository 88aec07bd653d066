"""Backends verify and falsify batches of specs; registered by name (``--backend``)."""

from __future__ import annotations

from typing import Callable

from robverify.backends.base import AttackConfig, Backend, BackendOptions, FalsifyResult, VerifyResult
from robverify.errors import RobverifyError

_REGISTRY: dict[str, Callable[[], type[Backend]]] = {}


def register(name: str, loader: Callable[[], type[Backend]]) -> None:
    """Register a backend class under ``name``; ``loader`` imports it lazily."""
    _REGISTRY[name] = loader


def backend_names() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str) -> type[Backend]:
    if name not in _REGISTRY:
        raise RobverifyError(f"unknown backend: expected one of {', '.join(backend_names())}, got {name!r}")
    return _REGISTRY[name]()


def _native() -> type[Backend]:
    from robverify.backends.native import NativeBackend

    return NativeBackend


def _lazy(module: str, cls: str) -> Callable[[], type[Backend]]:
    def load() -> type[Backend]:
        import importlib

        return getattr(importlib.import_module(module), cls)

    return load


register("native", _native)
register("lirpa", _lazy("robverify.backends.lirpa", "LirpaBackend"))
register("verona", _lazy("robverify.backends.verona", "VeronaBackend"))
register("marabou", _lazy("robverify.backends.marabou", "MarabouBackend"))
register("bab", _lazy("robverify.backends.bab", "BabBackend"))
register("external", _lazy("robverify.backends.external", "ExternalBackend"))

__all__ = ["AttackConfig", "Backend", "BackendOptions", "FalsifyResult", "VerifyResult", "register", "get_backend", "backend_names"]
