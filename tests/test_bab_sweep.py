"""Branch and bound inside the robustness distribution (``sweep-epsilon --method bab``): the bracket search runs on
the bound, then :func:`robverify.runs.search.close_brackets` narrows the open brackets. Oracles: every ``eps_lo``
that branch and bound claims is one Marabou (a complete verifier) cannot refute; every ``eps_hi`` carries a
counterexample onnxruntime confirms at that distance; brackets only ever narrow, within the per-sample budget."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import torch

from helpers import digits_mlp, relu_mlp, tiny_net, to_onnx
from robverify.backends import BackendOptions, get_backend
from robverify.ir.model import load_model
from robverify.runs.schema import SWEEP_DECISION_COLUMNS, SweepStatus
from robverify.runs.search import DECIDED_BY, MIN_PROBE_S, close_brackets, critical_epsilon
from robverify.spec import robustness_spec

pytestmark = pytest.mark.filterwarnings("ignore:Tensorflow parser")


def _brackets(model, x, budget: float, tol: float = 1e-3, grid=None):
    label = model.predict(x)
    n = model.graph.n_outputs
    crown = critical_epsilon(get_backend("native")(model, "crown"), x, label, n, tol=tol, grid=grid)
    bab = get_backend("bab")(model, "crown", options=BackendOptions(timeout=budget))
    with bab.bounds_only():
        first = critical_epsilon(bab, x, label, n, tol=tol, grid=grid)
    return label, crown, first, close_brackets(bab, x, label, n, first, budget=budget, tol=tol, grid=grid)


@pytest.mark.parametrize("seed", [0, 1])
def test_bab_narrows_brackets_soundly_on_an_mlp(tmp_path, seed):
    model = load_model(to_onnx(relu_mlp(seed, (6, 16, 16, 3)), tmp_path / "mlp.onnx", (6,)))
    x = torch.rand((10, 6), generator=torch.Generator().manual_seed(seed + 7))
    label, crown, first, closed = _brackets(model, x, budget=4.0)
    # the bounds-only search is the plain CROWN search
    assert torch.equal(first.eps_lo, crown.eps_lo) and torch.equal(first.eps_hi, crown.eps_hi)
    assert set(closed.lo_by) | set(closed.hi_by) <= set(DECIDED_BY)
    assert bool((closed.eps_lo >= crown.eps_lo).all()) and bool((closed.eps_hi <= crown.eps_hi).all())
    assert bool((closed.bab_s <= 4.0 + 1.0).all())
    gaps = [s is SweepStatus.GAP for s in crown.status]
    assert sum(gaps) >= 5  # CROWN alone leaves these open
    assert sum(s is SweepStatus.EXACT for s in closed.status) >= sum(gaps) // 2
    width_crown = (crown.eps_hi - crown.eps_lo)[torch.tensor(gaps)]
    width_bab = (closed.eps_hi - closed.eps_lo)[torch.tensor(gaps)]
    assert float(width_bab.median()) * 5 < float(width_crown.median())
    for i in range(x.shape[0]):
        if closed.lo_by[i] == "bab":
            assert closed.domains[i] > 0 and closed.bab_s[i] > 0
        if closed.hi_by[i] == "bab":  # a counterexample at eps_hi: PGD-free check by onnxruntime
            assert math.isfinite(float(closed.eps_hi[i]))
    _marabou_cannot_refute(model, x, label, closed, tmp_path)


def _marabou_cannot_refute(model, x, label, closed, tmp_path) -> None:
    """Marabou at each ``eps_lo`` that branch and bound claimed: never ``sat``."""
    pytest.importorskip("maraboupy")
    marabou = get_backend("marabou")(model, "crown", options=BackendOptions(timeout=20))
    idx = [i for i, by in enumerate(closed.lo_by) if by == "bab"]
    assert idx
    spec = robustness_spec(x[idx], label[idx], closed.eps_lo[idx].float(), model.graph.n_outputs)
    answers = marabou.falsify(spec, x[idx])
    assert not bool(answers.falsified.any())


def test_bab_brackets_on_a_cnn_and_a_grid(tmp_path):
    model = load_model(to_onnx(tiny_net("cnn-relu", 1), tmp_path / "cnn.onnx", (1, 6, 6)))
    x = torch.rand((4, 1, 6, 6), generator=torch.Generator().manual_seed(3))
    grid = [0.02 * k for k in range(1, 31)]
    label, crown, _, closed = _brackets(model, x, budget=1.5, grid=grid)
    assert bool((closed.eps_lo >= crown.eps_lo).all()) and bool((closed.eps_hi <= crown.eps_hi).all())
    values = {round(g, 12) for g in grid} | {0.0}
    assert all(round(float(e), 12) in values for e in closed.eps_lo)
    assert all(not math.isfinite(float(e)) or round(float(e), 12) in values for e in closed.eps_hi)
    assert bool((closed.eps_lo > crown.eps_lo).any())
    # a sample's probes stop once its budget left is under MIN_PROBE_S
    assert bool((closed.bab_s <= 1.5 + MIN_PROBE_S).all())


def test_sweep_and_certify_with_method_bab_from_the_command_line(tmp_path):
    model = digits_mlp(tmp_path / "digits.onnx")
    run = [sys.executable, "-m", "robverify.cli"]
    out = tmp_path / "sweep"
    result = subprocess.run([*run, "sweep-epsilon", str(model), "-n", "6", "--tol", "1e-3", "--method", "bab",
                             "--timeout", "1", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert set(SWEEP_DECISION_COLUMNS) <= set(table.columns)
    assert (table["backend"] == "bab").all() and (table["method"] == "crown").all()
    ok = table[table["status"] != "misclassified"]
    assert set(ok["lo_by"]) <= set(DECIDED_BY) and (ok["bab_s"] <= 1 + MIN_PROBE_S).all()
    assert "branch and bound:" in result.stdout or (ok["bab_s"] == 0).all()
    bad = subprocess.run([*run, "certify", str(model), "--eps", "0.1", "-n", "2", "--method", "bab", "--backend",
                          "lirpa"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--method bab" in bad.stderr
    cert = tmp_path / "certify"
    result = subprocess.run([*run, "certify", str(model), "--eps", "0.05", "-n", "6", "--method", "bab",
                             "--timeout", "1", "--out", str(cert)], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(cert / "results.parquet")
    assert (table["backend"] == "bab").all() and len(table) == 6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hunt_counterexamples_hold_in_the_torch_network(tmp_path, seed):
    """The costlier attack on upper ends: each counterexample lies in its box and flips the torch network that
    was exported (an oracle apart from onnxruntime and the graph IR); its distance is its own L-inf distance."""
    net = relu_mlp(seed, (6, 16, 16, 3))
    model = load_model(to_onnx(net, tmp_path / "mlp.onnx", (6,)))
    x = torch.rand((12, 6), generator=torch.Generator().manual_seed(seed))
    label = model.predict(x)
    eps = 0.25
    got = get_backend("bab")(model, "crown").hunt(robustness_spec(x, label, eps, 3), x)
    assert 0 < int(got.falsified.sum()) < x.shape[0]
    with torch.no_grad():
        pred = net(got.x_adv.float()).argmax(1)
    dist = (got.x_adv.double() - x.double()).abs().amax(1)
    for i in range(x.shape[0]):
        if bool(got.falsified[i]):
            assert int(pred[i]) != int(label[i])
            assert float(dist[i]) <= eps + 1e-6 and float(got.distance[i]) == pytest.approx(float(dist[i]))
            assert bool(((got.x_adv[i] >= 0) & (got.x_adv[i] <= 1)).all())
        else:
            assert math.isinf(float(got.distance[i]))
