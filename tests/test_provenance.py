"""run.json names the verifier libraries (and external tools) a run used: auto_LiRPA for ``--backend lirpa``,
ada-verona and its inner verifier for ``verona``, maraboupy for ``marabou``, the command and script hash for
``external``; a native run names none (robverify and torch are in ``versions`` of every run)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import stat
from pathlib import Path

import pytest

from robverify.app.commands import backend_options, prepare_certify
from robverify.backends import BackendOptions, get_backend
from robverify.files import file_sha256
from robverify.ir.model import load_model
from tests.helpers import single_thread, to_onnx  # noqa: F401 (fixture)
from trainers.zoo import build_model

TASK = "digits[0-4]"


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory) -> Path:
    """An untrained MLP for the digits task (input ``[N, 1, 8, 8]``, 5 classes): provenance needs no accuracy."""
    net = build_model("mlp", (1, 8, 8), 5, mean=[0.3], std=[0.4], widths=[16], seed=0).eval()
    return to_onnx(net, tmp_path_factory.mktemp("prov") / "digits.onnx", (1, 8, 8))


def _run_json(model: Path, backend: str, out: Path, options: BackendOptions | None = None) -> dict:
    prep = prepare_certify(model, eps=[0.01], task=TASK, n=2, method="ibp", backend=backend, out=out, seed=0,
                           device="cpu", data_root=None, batch_size=8, options=options or backend_options())
    assert prep.engine.provenance() == json.loads((out / "run.json").read_text())["verifiers"]
    return json.loads((out / "run.json").read_text())


def test_native_run_names_no_verifier_library(digits_onnx, tmp_path):
    meta = _run_json(digits_onnx, "native", tmp_path / "native")
    assert meta["verifiers"] == {}
    assert meta["versions"]["torch"] == importlib.metadata.version("torch")


@pytest.mark.skipif(importlib.util.find_spec("auto_LiRPA") is None, reason="auto_LiRPA is not installed")
def test_lirpa_run_names_auto_lirpa_and_its_version(digits_onnx, tmp_path):
    meta = _run_json(digits_onnx, "lirpa", tmp_path / "lirpa")
    assert meta["verifiers"] == {"auto_LiRPA": importlib.metadata.version("auto-LiRPA")}
    assert meta["verifiers"]["auto_LiRPA"]  # a real version string, e.g. "0.3"


@pytest.mark.skipif(importlib.util.find_spec("ada_verona") is None, reason="ada-verona is not installed")
def test_verona_names_itself_and_its_inner_verifier(digits_onnx):
    model = load_model(digits_onnx)
    native = get_backend("verona")(model, "ibp", options=BackendOptions(verifier="native-ibp"))
    assert native.provenance() == {"ada-verona": importlib.metadata.version("ada-verona")}
    if importlib.util.find_spec("auto_LiRPA") is not None:
        lirpa = get_backend("verona")(model, "ibp", options=BackendOptions(verifier="lirpa-ibp"))
        assert lirpa.provenance() == {"ada-verona": importlib.metadata.version("ada-verona"),
                                      "auto_LiRPA": importlib.metadata.version("auto-LiRPA")}


@pytest.mark.skipif(importlib.util.find_spec("maraboupy") is None, reason="maraboupy is not installed")
def test_marabou_names_maraboupy(digits_onnx):
    backend = get_backend("marabou")(load_model(digits_onnx), "ibp")
    assert backend.provenance() == {"maraboupy": importlib.metadata.version("maraboupy")}


def test_external_run_names_the_command_and_its_script(digits_onnx, tmp_path):
    script = tmp_path / "tool" / "run_instance.sh"
    script.parent.mkdir()
    script.write_text("#!/bin/sh\necho unknown > \"$5\"\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    options = backend_options(verifier_cmd=f"{script} --fast", timeout=5.0)
    meta = _run_json(digits_onnx, "external", tmp_path / "external", options)
    assert meta["verifiers"] == {"external_command": f"{script.resolve()} --fast",
                                 "external_command_sha256": file_sha256(script)}
