"""The house's single homes: the package face, the atomic write, the device parser, the enum parser, the sweep
settings and the epsilon-search protocol."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from robverify.devices import resolve_device
from robverify.enums import parse_enum
from robverify.errors import RobverifyError
from robverify.files import atomic_write, atomic_write_text, file_sha256, remove_stale_tmp
from robverify.runs.schema import SweepStatus
from robverify.runs.sweep import BracketSearch, SweepSettings, VeronaGridSearch, search_for
from robverify.spec import Method


def test_the_package_face_is_lazy_and_has_three_names() -> None:
    code = ("import sys, robverify; assert 'torch' not in sys.modules, 'import robverify loaded torch'; "
            "f = robverify.compute_bounds; assert 'torch' in sys.modules; "
            "print(sorted(n for n in robverify.__all__ if n != '__version__'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['compute_bounds', 'from_onnx', 'robustness_spec']"
    import robverify
    from robverify.engine.bounds import compute_bounds
    from robverify.ir.from_onnx import from_onnx
    from robverify.spec import robustness_spec

    assert (robverify.compute_bounds, robverify.from_onnx, robverify.robustness_spec) == (
        compute_bounds, from_onnx, robustness_spec)
    with pytest.raises(AttributeError):
        robverify.bounds  # noqa: B018


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = atomic_write_text(tmp_path / "sub" / "a.txt", "old\n")
    assert path.read_text() == "old\n"
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # umask permissions, not mkstemp's 0600

    def broken(handle) -> None:
        handle.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_text() == "old\n"
    assert [p.name for p in path.parent.iterdir()] == ["a.txt"]  # the temporary file is gone
    (path.parent / ".a.txt.1.x.tmp").write_text("stale")
    assert [p.name for p in remove_stale_tmp(path.parent)] == [".a.txt.1.x.tmp"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_file_sha256(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 << 20)
    (tmp_path / "f").write_bytes(data)
    assert file_sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    with pytest.raises(RobverifyError, match="cannot read"):
        file_sha256(tmp_path / "missing")


def test_one_device_parser_for_core_and_trainers() -> None:
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("tpu", "cudax", ""):
        with pytest.raises(RobverifyError, match="unknown device: expected auto, cpu, cuda"):
            resolve_device(bad)


def test_enum_parser() -> None:
    assert parse_enum(Method, "CROWN", "method") is Method.CROWN
    assert parse_enum(Method, Method.IBP, "method") is Method.IBP
    with pytest.raises(RobverifyError, match=r"unknown method: expected one of ibp, crown-ibp, crown, alpha-crown, "
                                             r"got 'bogus'"):
        Method.parse("bogus")
    assert SweepStatus("gap") is SweepStatus.GAP and SweepStatus.GAP == "gap" and str(SweepStatus.GAP) == "gap"


def test_sweep_settings_are_checked_once() -> None:
    s = SweepSettings.parse(1e-3, "0.01:0.03:0.01", 0.5)
    assert s.grid == pytest.approx((0.01, 0.02, 0.03)) and s.tol == 1e-3 and s.eps_max == 0.5
    assert s.fingerprint() == {"tol": 1e-3, "grid": list(s.grid), "eps_max": 0.5}
    assert SweepSettings.parse(1e-4, None, 1.0).grid is None
    for kwargs, message in [(dict(tol=0), "--tol must be > 0"), (dict(eps_max=float("inf")), "--eps-max"),
                            (dict(grid=(0.1, -0.1)), "--grid")]:
        with pytest.raises(RobverifyError, match=message):
            SweepSettings(**kwargs)


def test_backend_name_maps_to_a_search_in_one_place() -> None:
    assert isinstance(search_for("native"), BracketSearch)
    assert isinstance(search_for("lirpa"), BracketSearch)
    verona = search_for("verona")
    assert isinstance(verona, VeronaGridSearch)
    with pytest.raises(RobverifyError, match="needs --grid"):
        verona.check(SweepSettings())
    verona.check(SweepSettings(grid=(0.1,)))
