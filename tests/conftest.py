"""Shared fixtures: seeding and the optional ../shared data of the workplace."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ROBVERIFY_SHARED", REPO.parent / "shared"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def vnncomp_dir() -> Path:
    """The VNN-COMP 2021 files beside the checkout; tests using them skip where they are absent."""
    path = SHARED / "vnncomp2021"
    if not path.is_dir():
        pytest.skip("../shared/vnncomp2021 is not present (optional test data)")
    return path
