"""The model card: the JSON beside every ``.onnx`` / ``.pt`` that says what the model is and where it came from.

Pure data (no torch): architecture (``trainers.zoo.arch_config``), source and target task, transfer strategy,
training method and hyper-parameters, seed, clean / PGD / certified accuracy at ``eps`` (how they were measured in
``evaluation``), training time, the parent model's hash, task-similarity scores, trainable parameters per block,
and the ONNX export facts (hash, opset, parity).
``model.onnx`` has its card at ``model.json`` (:func:`card_path_for`). Numbers are stored as JSON numbers.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from robverify import __version__
from robverify.errors import RobverifyError
from robverify.files import atomic_write_text

__all__ = ["ModelCard", "card_path_for"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class ModelCard:
    """What a trained model is. ``strategy`` is None for a model trained from scratch on ``task``."""

    architecture: dict[str, Any]
    task: str
    source_task: str | None = None
    strategy: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    clean_acc: float | None = None
    pgd_acc: float | None = None
    certified_acc: float | None = None
    #: the L-inf radius (pixel space) at which ``pgd_acc`` and ``certified_acc`` were measured
    eps: float | None = None
    #: how the accuracies were measured: test samples, attack steps, bound method
    evaluation: dict[str, Any] = field(default_factory=dict)
    train_time_s: float | None = None
    parent_hash: str | None = None
    similarity: dict[str, float] = field(default_factory=dict)
    trainable: dict[str, int] = field(default_factory=dict)
    onnx_sha256: str | None = None
    opset: int | None = None
    parity_max_abs_diff: float | None = None
    robverify_version: str = __version__
    created: str = field(default_factory=_now)

    # ----------------------------------------------------------------------------------------- (de)serialise

    def to_dict(self) -> dict[str, Any]:
        """The card as JSON-ready data (numbers stay numbers; numpy/torch scalars become Python numbers)."""
        data = {f.name: _plain(getattr(self, f.name), f.name) for f in dataclasses.fields(self)}
        _validate(data)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> "ModelCard":
        """Build a card from :meth:`to_dict` output; unknown or missing keys and wrong types are errors."""
        if not isinstance(data, dict):
            raise RobverifyError(f"model card: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in names]
        if unknown:
            raise RobverifyError(f"model card: unknown key {unknown[0]!r}")
        required = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [k for k in required if k not in data]
        if missing:
            raise RobverifyError(f"model card: missing key {missing[0]!r}")
        _validate(data)
        return cls(**data)

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the card atomically (temporary file + rename) and return its path."""
        path = Path(path)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        try:
            return atomic_write_text(path, text)
        except OSError as exc:
            raise RobverifyError(f"cannot write model card {path}: {exc.strerror or exc}") from None

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> "ModelCard":
        """Read a card written by :meth:`to_json`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise RobverifyError(f"model card not found: {path}") from None
        except OSError as exc:
            raise RobverifyError(f"cannot read model card {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RobverifyError(f"model card {path} is not valid JSON: {exc.msg} (line {exc.lineno})") from None
        try:
            return cls.from_dict(data)
        except RobverifyError as exc:
            raise RobverifyError(f"{path}: {exc}") from None


def card_path_for(model_path: str | os.PathLike[str]) -> Path:
    """The card of ``<dir>/<stem>.onnx`` (or ``.pt``) is ``<dir>/<stem>.json``."""
    path = Path(model_path)
    return path.with_name(f"{path.stem}.json")


# --------------------------------------------------------------------------------------------- checks

_NUMBER = (int, float)
_OPT_FLOAT = ("clean_acc", "pgd_acc", "certified_acc", "eps", "train_time_s", "parity_max_abs_diff")
_OPT_STR = ("source_task", "strategy", "parent_hash", "onnx_sha256")
_STR = ("task", "robverify_version", "created")
_DICT = ("architecture", "training", "evaluation", "similarity", "trainable")


def _is_number(value: Any) -> bool:
    return isinstance(value, _NUMBER) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate(data: dict[str, Any]) -> None:
    """Type checks with one-line ``field: expected X, got Y`` errors."""

    def fail(name: str, expected: str) -> None:
        raise RobverifyError(f"model card field {name}: expected {expected}, got {data[name]!r}")

    for name in _STR:
        if name in data and not isinstance(data[name], str):
            fail(name, "a string")
    for name in _OPT_STR:
        if data.get(name) is not None and not isinstance(data[name], str):
            fail(name, "a string or null")
    for name in _OPT_FLOAT:
        if data.get(name) is not None and not _is_number(data[name]):
            fail(name, "a number or null")
    for name in _DICT:
        if name in data and not isinstance(data[name], dict):
            fail(name, "an object")
    if "seed" in data and not _is_int(data["seed"]):
        fail("seed", "an integer")
    if data.get("opset") is not None and not _is_int(data["opset"]):
        fail("opset", "an integer or null")
    for key, value in data.get("similarity", {}).items():
        if not _is_number(value):
            raise RobverifyError(f"model card field similarity[{key!r}]: expected a number, got {value!r}")
    for key, value in data.get("trainable", {}).items():
        if not _is_int(value):
            raise RobverifyError(f"model card field trainable[{key!r}]: expected an integer, got {value!r}")


def _plain(value: Any, where: str) -> Any:
    """JSON-ready copy: tuples become lists, numpy / torch scalars (``.item()``) Python numbers; no NaN/inf."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise RobverifyError(f"model card field {where}: keys must be strings, got {key!r}")
            out[key] = _plain(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise RobverifyError(f"model card field {where}: expected a finite number, got {value!r}")
        return value
    item = getattr(value, "item", None)
    if callable(item) and tuple(getattr(value, "shape", (None,))) == ():  # numpy / torch scalar
        return _plain(item(), where)
    raise RobverifyError(f"model card field {where}: cannot store a {type(value).__name__} in JSON")
