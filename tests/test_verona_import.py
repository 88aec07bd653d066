"""`robverify import-verona`: any VERONA result_df.csv becomes a run directory with the tidy sweep table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from properties.onnx_export import export_onnx
from robverify.cli import app
from robverify.errors import RobverifyError
from robverify.runs.schema import SWEEP_COLUMNS, load_results, validate_table
from robverify.runs.verona_csv import import_verona_run, write_verona_result_df
from trainers.zoo import build_model

runner = CliRunner()


def _import(csv: Path, out: Path, *extra: str):
    return runner.invoke(app, ["import-verona", str(csv), "--out", str(out), *extra])


@pytest.fixture(scope="module")
def verona_attack_csv(tmp_path_factory) -> Path:
    """A result_df.csv written by VERONA's own pipeline: PGD attack module, binary search over a grid."""
    if importlib.util.find_spec("ada_verona") is None:
        pytest.skip("ada_verona is not installed")
    from ada_verona import (AttackEstimationModule, BinarySearchEpsilonValueEstimator, DataPoint,
                            ExperimentRepository, One2AnyPropertyGenerator, ONNXNetwork, PGDAttack)

    root = tmp_path_factory.mktemp("verona-own")
    net = build_model("mlp", (1, 8, 8), 4, mean=[0.3], std=[0.4], widths=[16], seed=3).eval()
    (root / "nets").mkdir()
    path = root / "nets" / "tiny.onnx"
    export_onnx(net, path, (1, 8, 8))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand((5, 1, 1, 8, 8), generator=gen)
    with torch.no_grad():
        labels = net(x.reshape(5, 1, 8, 8)).argmax(1).tolist()
    repo = ExperimentRepository(base_path=root / "exp", network_folder=root / "nets")
    repo.initialize_new_experiment("own")
    network = ONNXNetwork(path)
    verifier = AttackEstimationModule(PGDAttack(number_iterations=10))
    estimator = BinarySearchEpsilonValueEstimator([0.0, 0.05, 0.1, 0.2, 0.4, 0.8], verifier)
    for i in range(5):
        context = repo.create_verification_context(network, DataPoint(i, labels[i], x[i]),
                                                   One2AnyPropertyGenerator(4, 0, 1))
        repo.save_result(estimator.compute_epsilon_value(context))
    return repo.get_results_path() / "result_df.csv"


def test_import_verona_own_attack_run(verona_attack_csv, tmp_path):
    out = tmp_path / "imported"
    result = _import(verona_attack_csv, out, "--task", "random[1x8x8]")
    assert result.exit_code == 0, result.output
    table = load_results([out])
    validate_table(table, "sweep")
    assert set(SWEEP_COLUMNS) <= set(table.columns) and len(table) == 5
    raw = pd.read_csv(verona_attack_csv, index_col=0).sort_values("image_id")
    table = table.sort_values("sample_id")
    assert table["sample_id"].tolist() == raw["image_id"].tolist()
    assert set(table["model"]) == {"tiny"} and set(table["task"]) == {"random[1x8x8]"}
    # VERONA's attack module certifies nothing: eps_lo is 0 and its estimate is kept aside.
    assert set(table["status"]) == {"upper-bound"} and bool((table["eps_lo"] == 0.0).all())
    np.testing.assert_array_equal(table["verona_epsilon_value"], raw["epsilon_value"])
    sat = raw["smallest_sat_value"] > raw["epsilon_value"]
    np.testing.assert_array_equal(table["eps_hi"].to_numpy()[sat.to_numpy()], raw["smallest_sat_value"][sat])
    assert bool(np.isinf(table["eps_hi"].to_numpy()[~sat.to_numpy()]).all())
    assert table["run_id"].nunique() == 1 and table["run_id"].notna().all()
    # `compare` reads it like a sweep run.
    from robverify.analysis.runs import load_study_runs

    (run,) = load_study_runs([out])
    assert run.task == "random[1x8x8]" and len(run.table) == 5


def test_reimport_is_idempotent_and_other_file_refused(verona_attack_csv, tmp_path):
    out = tmp_path / "imported"
    first = import_verona_run(verona_attack_csv, out, model="renamed")
    again = import_verona_run(verona_attack_csv, out, model="renamed")
    assert len(again) == len(first) and set(again["model"]) == {"renamed"}
    other = tmp_path / "other.csv"
    other.write_text(",network,image_id,original_label,epsilon_value,smallest_sat_value,total_time,verifier\n"
                     "0,n,1,2,0.1,0.2,1.0,x\n")
    with pytest.raises(RobverifyError, match="different run"):
        import_verona_run(other, out)


def test_one2one_rows_keep_their_target(tmp_path):
    csv = tmp_path / "result_df.csv"
    csv.write_text(
        ",network,image_id,original_label,tmp_path,target_class,epsilon_value,smallest_sat_value,total_time,verifier\n"
        "0,net,4,1,/t,0,0.02,0.04,1.0,oval\n"
        "1,net,4,1,/t,2,0.03,0.06,1.0,oval\n"
        "2,net,9,0,/t,1,0.05,0.05,1.0,oval\n"
    )
    table = import_verona_run(csv, tmp_path / "run")
    assert len(table) == 3 and table["target_class"].tolist() == [0, 2, 1]
    assert table["eps_lo"].tolist() == [0.02, 0.03, 0.05]
    assert table["eps_hi"].tolist() == [0.04, 0.06, np.inf]
    assert set(table["status"]) == {"grid"}


def test_round_trip_of_robverify_sweep(tmp_path):
    n = 6
    sweep = pd.DataFrame({
        "run_id": "r", "model": "m", "backend": "native", "method": "crown", "task": "digits",
        "sample_id": np.arange(n), "label": np.arange(n) % 3, "pred": np.arange(n) % 3, "time_s": 0.5,
        "eps_lo": [0.01, 0.02, 0.0, 0.05, 0.03, 0.0], "eps_hi": [0.02, np.inf, 0.01, 0.06, 0.05, 0.0],
        "status": ["exact", "robust", "exact", "exact", "gap", "misclassified"], "n_calls": 3,
    })
    write_verona_result_df(sweep, tmp_path / "result_df.csv")
    table = import_verona_run(tmp_path / "result_df.csv", tmp_path / "run")
    kept = sweep[sweep["status"] != "misclassified"]
    np.testing.assert_array_equal(table["eps_lo"], kept["eps_lo"])
    np.testing.assert_array_equal(table["eps_hi"], kept["eps_hi"])
    assert set(table["method"]) == {"native-crown"}


def test_not_a_verona_file_is_an_input_error(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    result = _import(bad, tmp_path / "run")
    assert isinstance(result.exception, RobverifyError) and "not a VERONA result_df.csv" in str(result.exception)
    missing = _import(tmp_path / "none.csv", tmp_path / "run2")
    assert isinstance(missing.exception, RobverifyError)
