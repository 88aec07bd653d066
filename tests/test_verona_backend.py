"""--backend verona: VERONA's pipeline with robverify's verifiers gives the native grid search's critical epsilons;
its pgd verifier is an upper bound only; the command line runs it end to end."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from properties.onnx_export import export_onnx
from robverify.backends import AttackConfig, BackendOptions, get_backend
from robverify.backends.native import NativeBackend
from robverify.errors import RobverifyError
from robverify.runs.jobs import Samples, run_sweep
from robverify.runs.sweep import SweepSettings
from robverify.ir.model import load_model
from robverify.runs.rundir import RunDir
from robverify.runs.schema import validate_table
from robverify.spec import robustness_spec
from trainers.tasks import load_task, sample_test
from trainers.training import train_standard
from trainers.zoo import build_model

if importlib.util.find_spec("ada_verona") is None:  # installed by make install; one test fakes its absence
    pytest.skip("ada_verona is not installed", allow_module_level=True)

from robverify.backends.verona import parse_verifier  # noqa: E402
from robverify.runs.verona_search import grid_bracket, run_verona_sweep  # noqa: E402

GRID = [round(0.01 * i, 2) for i in range(0, 13)]
ATTACK = AttackConfig(steps=10, restarts=1, seed=0)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A small MLP trained on digits[0-4] (1x8x8), its LoadedModel and 10 test samples (one mislabelled)."""
    torch.manual_seed(0)
    data = load_task("digits[0-4]")
    net = build_model("mlp", data.input_shape, data.n_classes, mean=[0.3], std=[0.4], widths=[32, 16], seed=0)
    train_standard(net, data.x_train, data.y_train, epochs=8, lr=3e-3, seed=0)
    path = tmp_path_factory.mktemp("verona-model") / "digits.onnx"
    export_onnx(net, path, data.input_shape)
    model = load_model(path)
    x, y, sid = sample_test(data, 10, seed=0)
    y = y.clone()
    y[0] = (model.predict(x[:1])[0] + 1) % data.n_classes  # a misclassified sample
    return model, Samples(x, y, sid, "digits[0-4]", model.graph.n_outputs)


def _sweep(tmp_path: Path, name: str, backend, samples: Samples, **kw) -> pd.DataFrame:
    run = RunDir.open(tmp_path / name, "sweep-epsilon", {}, {"name": name}, ["sample_id"])
    if backend.name == "verona":
        return run_verona_sweep(run, backend, samples, GRID, **kw)
    return run_sweep(run, backend, samples, SweepSettings(grid=GRID))


def test_native_crown_through_verona_equals_native_grid(digits, tmp_path):
    model, samples = digits
    verona = get_backend("verona")(model, "ibp", attack=ATTACK, options=BackendOptions(verifier="native-crown"))
    ours = _sweep(tmp_path, "verona", verona, samples)
    native = _sweep(tmp_path, "native", NativeBackend(model, "crown", attack=ATTACK), samples)
    validate_table(ours, "sweep")
    assert ours["sample_id"].tolist() == native["sample_id"].tolist()
    assert ours["status"].eq("misclassified").tolist() == native["status"].eq("misclassified").tolist()
    np.testing.assert_array_equal(ours["eps_lo"].to_numpy(), native["eps_lo"].to_numpy())
    assert set(ours["method"]) == {"native-crown"} and set(ours["backend"]) == {"verona"}
    # Sound brackets, and VERONA's own numbers agree where they are certificates.
    correct = ours[ours["status"] != "misclassified"]
    assert bool((correct["eps_lo"] < correct["eps_hi"]).all())
    verified = correct[correct["eps_lo"].notna()]
    np.testing.assert_array_equal(verified["verona_epsilon_value"], verified["eps_lo"])
    # VERONA's experiment folder is kept under the run directory.
    result_df = list((tmp_path / "verona" / "verona").glob("*/results/result_df.csv"))
    assert len(result_df) == 1
    raw = pd.read_csv(result_df[0], index_col=0)
    assert sorted(raw["image_id"]) == sorted(correct["sample_id"])


def test_native_bab_through_verona_proves_at_least_native_crown(digits, tmp_path):
    """``--verifier native-bab``: VERONA asks robverify's branch and bound one (image, eps) at a time; every grid
    bracket holds the native CROWN one's lower end or more, and never goes above a falsified eps."""
    model, samples = digits
    crown = _sweep(tmp_path, "crown", get_backend("verona")(model, "crown", attack=ATTACK,
                                                            options=BackendOptions(verifier="native-crown")), samples)
    backend = get_backend("verona")(model, "crown", attack=ATTACK,
                                    options=BackendOptions(verifier="native-bab", timeout=2))
    assert backend.inner.name == "bab" and backend.verifier == "native-bab"
    bab = _sweep(tmp_path, "bab", backend, samples)
    validate_table(bab, "sweep")
    assert set(bab["method"]) == {"native-bab"}
    ok = (bab["status"] != "misclassified").to_numpy()
    lo_bab, lo_crown = bab["eps_lo"].fillna(-1).to_numpy()[ok], crown["eps_lo"].fillna(-1).to_numpy()[ok]
    assert (lo_bab >= lo_crown).all()
    assert (bab["eps_lo"].to_numpy()[ok] < crown["eps_hi"].to_numpy()[ok]).all()


def test_pgd_is_an_upper_bound_only(digits, tmp_path):
    model, samples = digits
    backend = get_backend("verona")(model, "crown", options=BackendOptions(verifier="pgd"))
    table = _sweep(tmp_path, "pgd", backend, samples)
    correct = table[table["status"] != "misclassified"]
    assert set(correct["status"]) == {"upper-bound"}
    assert bool((correct["eps_lo"] == 0.0).all()), "an attack never certifies"
    raw = pd.read_csv(next((tmp_path / "pgd" / "verona").glob("*/results/result_df.csv")), index_col=0)
    raw = raw.set_index("image_id").loc[correct["sample_id"]]
    found = np.isfinite(correct["eps_hi"].to_numpy())
    assert found.any()
    np.testing.assert_allclose(correct["eps_hi"].to_numpy()[found], raw["smallest_sat_value"].to_numpy()[found])
    # Where the attack never succeeded VERONA writes the grid maximum; robverify says inf.
    assert bool((raw["smallest_sat_value"].to_numpy()[~found] == max(GRID)).all())
    # As a plain backend, pgd verifies nothing.
    x = samples.x[1:4]
    spec = robustness_spec(x, samples.label[1:4], 0.0, samples.n_classes)
    assert not bool(backend.verify(spec).verified.any())


def test_one2one_properties(digits, tmp_path):
    model, samples = digits
    backend = get_backend("verona")(model, "crown", attack=ATTACK, options=BackendOptions(verifier="native-ibp"))
    sub = Samples(samples.x[:5], samples.label[:5], samples.sample_id[:5], samples.task, samples.n_classes)
    one2one = _sweep(tmp_path, "one2one", backend, sub, target=2)
    one2any = _sweep(tmp_path, "one2any", backend, sub)
    both = one2one.merge(one2any, on="sample_id", suffixes=("_t", "_a"))
    both = both[(both["status_a"] != "misclassified") & (both["label_t"] != 2)]
    assert len(both) > 0
    # A single target is a weaker property than "any other class": never certified at a smaller eps.
    assert bool((both["eps_lo_t"].fillna(-1) >= both["eps_lo_a"].fillna(-1)).all())
    raw = pd.read_csv(next((tmp_path / "one2one" / "verona").glob("*/results/result_df.csv")), index_col=0)
    assert set(raw["target_class"]) == {2}


def test_bracket_from_answers():
    grid = [0.0, 0.1, 0.2, 0.3]
    assert grid_bracket([(0.1, "UNSAT"), (0.2, "SAT")], grid, False) == (0.1, 0.2, "exact")
    assert grid_bracket([(0.1, "UNSAT"), (0.2, "TIMEOUT"), (0.3, "SAT")], grid, False) == (0.1, 0.3, "gap")
    assert grid_bracket([(0.3, "UNSAT")], grid, False) == (0.3, math.inf, "robust")
    lo, hi, status = grid_bracket([(0.0, "TIMEOUT")], grid, False)
    assert math.isnan(lo) and hi == math.inf and status == "unverified"
    assert grid_bracket([(0.1, "UNSAT"), (0.2, "UNSAT"), (0.3, "SAT")], grid, True) == (0.0, 0.3, "upper-bound")


def test_verifier_names():
    assert parse_verifier("native-crown")[0] == "native"
    assert parse_verifier("lirpa-crown-ibp")[1].value == "crown-ibp"
    assert parse_verifier("pgd") == ("pgd", None)
    assert parse_verifier("native-bab") == ("bab", None)
    for bad in ("crown", "native-foo", None):
        with pytest.raises(RobverifyError, match="verifier"):
            parse_verifier(bad)


def test_missing_ada_verona_is_one_clear_line(monkeypatch, digits):
    model, _ = digits
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ada_verona" else real(name, *a))
    with pytest.raises(RobverifyError) as err:
        get_backend("verona")(model, "crown", options=BackendOptions(verifier="native-crown"))
    assert "\n" not in str(err.value) and "pip install" in str(err.value) and "ada-verona" in str(err.value)


def test_marabou_verifier_uses_robverify_backend_or_says_why(digits):
    model, _ = digits
    if importlib.util.find_spec("robverify.backends.marabou") is None:
        with pytest.raises(RobverifyError, match="marabou"):
            get_backend("verona")(model, "crown", options=BackendOptions(verifier="marabou"))
        return
    try:
        backend = get_backend("verona")(model, "crown", options=BackendOptions(verifier="marabou", timeout=30))
    except RobverifyError as err:  # maraboupy absent: the marabou backend's own one-line message
        assert "maraboupy" in str(err).lower() or "marabou" in str(err).lower()
        return
    assert backend.inner.name == "marabou" and backend.verifier == "marabou"


@pytest.mark.slow
def test_cli_verona_and_native_grid_agree(digits, tmp_path):
    """End to end through the command line: the same model, samples and grid."""
    model, _ = digits
    cli = [sys.executable, "-m", "robverify.cli", "sweep-epsilon", str(model.path), "--task", "digits[0-4]",
           "-n", "6", "--grid", "0:0.12:0.01"]
    missing = subprocess.run(cli + ["--backend", "verona", "--out", str(tmp_path / "x")], capture_output=True,
                             text=True)
    assert missing.returncode == 2 and "--verifier" in missing.stderr and "Traceback" not in missing.stderr
    for backend, extra in (("verona", ["--verifier", "native-crown"]), ("native", [])):
        done = subprocess.run(cli + ["--backend", backend, *extra, "--out", str(tmp_path / backend)],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    a = pd.read_parquet(tmp_path / "verona" / "results.parquet")
    b = pd.read_parquet(tmp_path / "native" / "results.parquet")
    np.testing.assert_array_equal(a["eps_lo"].to_numpy(), b["eps_lo"].to_numpy())
    assert (tmp_path / "verona" / "result_df.csv").is_file()
