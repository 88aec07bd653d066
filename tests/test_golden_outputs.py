"""What the commands write is what robverify wrote before its modules moved into subpackages (main at 99f0ad4):
the same small sweep, certify run and VNN-COMP export on the same model give byte-identical VNN-LIB files,
benchmark files, figures, result tables (times and run ids aside; bound margins within float rounding) and the same
run.json fields. The golden files in tests/data/golden were written by the old code (see manifest.json)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from helpers import single_thread  # noqa: F401  (one thread, as the golden files were written)
from robverify.cli import app
from robverify.runs.schema import CERTIFY_DECISION_COLUMNS, SWEEP_DECISION_COLUMNS

GOLDEN = Path(__file__).parent / "data" / "golden"
MANIFEST = json.loads((GOLDEN / "manifest.json").read_text())
VOLATILE = {"time_s", "total_time", "run_id"}
#: run.json fields added since (the verifier libraries a run used)
ADDED_FIELDS = {"verifiers"}


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("golden")
    model = out / "model.onnx"
    shutil.copy(GOLDEN / "model.onnx", model)
    shutil.copy(GOLDEN / "model.json", out / "model.json")
    runner = CliRunner()
    for command in MANIFEST["commands"]:
        args = command.split()
        args = [str(model) if a == "model.onnx" else str(out / a) if prev == "--out" else a
                for prev, a in zip([""] + args, args)]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (command, result.output)
    return out


def _same_version(package: str) -> bool:
    return importlib.metadata.version(package) == MANIFEST[package]


def test_vnnlib_and_benchmark_files_are_byte_identical(outputs: Path) -> None:
    names = sorted(p.relative_to(GOLDEN / "bench") for p in (GOLDEN / "bench").rglob("*") if p.is_file())
    assert len([n for n in names if n.suffix == ".vnnlib"]) == 6
    for name in names:
        if name.suffix == ".onnx" and not _same_version("onnx"):
            continue  # the serialised rewrite depends on the onnx release
        assert (outputs / "bench" / name).read_bytes() == (GOLDEN / "bench" / name).read_bytes(), name
    written = sorted(p.relative_to(outputs / "bench") for p in (outputs / "bench").rglob("*") if p.is_file())
    assert written == names


@pytest.mark.parametrize("run", ["sweep", "certify"])
def test_figures_are_byte_identical(outputs: Path, run: str) -> None:
    if not _same_version("matplotlib"):
        pytest.skip(f"golden figures were drawn with matplotlib {MANIFEST['matplotlib']}")
    golden = sorted(p.name for p in (GOLDEN / run / "figures").iterdir())
    assert sorted(p.name for p in (outputs / run / "figures").iterdir()) == golden
    for name in golden:
        assert (outputs / run / "figures" / name).read_bytes() == (GOLDEN / run / "figures" / name).read_bytes(), name


@pytest.mark.parametrize("table", ["sweep/results.csv", "sweep/result_df.csv", "certify/results.csv"])
def test_tables_are_identical(outputs: Path, table: str) -> None:
    new = pd.read_csv(outputs / table)
    old = pd.read_csv(GOLDEN / table)
    # the golden tables predate the decision columns (how each verdict / bracket end was decided, BaB effort)
    added = set(SWEEP_DECISION_COLUMNS) if table == "sweep/results.csv" else set()
    added |= set(CERTIFY_DECISION_COLUMNS) if table == "certify/results.csv" else set()
    assert [c for c in new.columns if c not in VOLATILE | added] == list(old.columns)
    new = new[list(old.columns)]
    if "margin_lb" in old:  # bounds: the same up to float32 rounding, verdicts exactly
        pd.testing.assert_series_equal(new.pop("margin_lb"), old.pop("margin_lb"), rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(new, old, check_exact=True)


@pytest.mark.parametrize("run", ["sweep", "certify"])
def test_run_json_has_the_same_fields(outputs: Path, run: str) -> None:
    golden = json.loads((GOLDEN / run / "run.json").read_text())
    meta = json.loads((outputs / run / "run.json").read_text())
    assert [f for f in meta if f not in ADDED_FIELDS] == golden["fields"]
    assert meta["verifiers"] == {}  # provenance of the verifier libraries: none for the native engine
    assert {k: v for k, v in meta["arguments"].items() if k != "model"} == golden["arguments"]
    for key in ("command", "fingerprint", "key", "status", "n_rows", "figures", "input_reshape"):
        assert meta[key] == golden[key], key
