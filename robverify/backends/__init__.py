"""Backends verify and falsify batches of specs; registered by name (``--backend``)."""

from __future__ import annotations

from typing import Callable

from robverify.backends.base import AttackConfig, Backend, FalsifyResult, VerifyResult
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


register("native", _native)

__all__ = ["AttackConfig", "Backend", "FalsifyResult", "VerifyResult", "register", "get_backend", "backend_names"]
