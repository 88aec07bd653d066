"""User strings become enums once, where they enter, with one error shape: ``unknown WHAT: expected X, got Y``."""

from __future__ import annotations

import enum
from typing import TypeVar

from robverify.errors import RobverifyError

E = TypeVar("E", bound=enum.Enum)

__all__ = ["parse_enum"]


def parse_enum(cls: type[E], value: str | E, what: str) -> E:
    """``value`` as a member of the string enum ``cls`` (case-insensitive); RobverifyError naming ``what``."""
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).lower())
    except ValueError:
        names = ", ".join(str(m.value) for m in cls)
        raise RobverifyError(f"unknown {what}: expected one of {names}, got {value!r}") from None
