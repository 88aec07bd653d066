"""The one device parser: trainers and the core accept the same spellings."""

from __future__ import annotations

import torch

from robverify.errors import RobverifyError

__all__ = ["resolve_device"]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` (case and spaces ignored)."""
    if isinstance(device, torch.device):
        device = str(device)
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise RobverifyError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
        try:
            return torch.device(name)
        except RuntimeError:
            pass
    raise RobverifyError(f"unknown device: expected auto, cpu, cuda or cuda:N, got {device!r}")
