"""--backend marabou: complete verdicts on tiny ReLU MLPs, consistent with the native bounds and PGD; exact
critical-epsilon brackets; answers that must not count (timeouts, errors, witnesses onnxruntime rejects)."""

from __future__ import annotations

import pytest
import torch

from helpers import relu_mlp, to_onnx
from robverify.engine.attacks import pgd_attack
from robverify.backends import AttackConfig, BackendOptions, get_backend
from robverify.ir.model import load_model
from robverify.runs.search import critical_epsilon
from robverify.spec import Verdict, robustness_spec

pytest.importorskip("maraboupy")
pytestmark = pytest.mark.filterwarnings("ignore:Tensorflow parser")

WIDTHS = (4, 8, 8, 3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = to_onnx(relu_mlp(1, WIDTHS), tmp_path_factory.mktemp("net") / "mlp.onnx", (WIDTHS[0],))
    return load_model(path)


@pytest.fixture(scope="module")
def samples(model):
    x = torch.rand((8, WIDTHS[0]), generator=torch.Generator().manual_seed(1))
    return x, model.predict(x)


def _marabou(model, **kw):
    return get_backend("marabou")(model, "crown", options=BackendOptions(timeout=20), **kw)


def test_every_spec_is_decided_and_consistent_with_bounds_and_pgd(model, samples):
    x, label = samples
    backend = _marabou(model)
    native = get_backend("native")(model, "alpha-crown")
    for eps in (0.03, 0.1, 0.25):
        spec = robustness_spec(x, label, eps, WIDTHS[-1])
        verified = backend.verify(spec).verified
        falsified = backend.falsify(spec, x).falsified
        assert not bool((verified & falsified).any()), eps
        assert bool((verified | falsified).all()), (eps, [(r.verdict, r.reason) for r in backend.records])
        # what a sound bound proves, Marabou proves; no strong attack refutes what Marabou proves
        assert not bool((native.verify(spec).verified & ~verified).any())
        strong = pgd_attack(model.graph, spec, steps=60, restarts=3, seed=7)
        assert not bool((model.confirm(spec, strong.x_adv, strong.found) & verified).any())
    assert backend.n_solves > 0, "every spec was settled without asking Marabou: the test shows nothing"


def test_one_query_per_disjunct_and_marabou_witnesses_are_confirmed(model, samples):
    x, label = samples
    backend = _marabou(model, attack=AttackConfig(steps=0, restarts=0))
    backend.attack_first = False  # let Marabou find the counterexamples itself
    spec = robustness_spec(x, label, 0.25, WIDTHS[-1])
    backend.verify(spec)
    sat = [r for r in backend.records if r.verdict is Verdict.FALSIFIED]
    assert sat and all("Marabou sat" in r.reason for r in sat)
    assert backend.n_solves <= spec.batch_size * (WIDTHS[-1] - 1)
    falsified = backend.falsify(spec, x).falsified  # PGD is off: these are Marabou's, re-checked
    assert int(falsified.sum()) == len(sat)


@pytest.mark.parametrize("code,values,verdict", [
    ("TIMEOUT", {}, Verdict.TIMEOUT),
    ("ERROR", {}, Verdict.UNKNOWN),
    ("sat", "centre", Verdict.UNKNOWN),  # a bogus witness (the clean, correctly classified point)
])
def test_answers_that_do_not_prove_or_refute(model, samples, code, values, verdict):
    x, label = samples
    backend = _marabou(model, attack=AttackConfig(steps=0, restarts=0))
    backend.attack_first = False

    def fake_solve(lo, hi, rows):
        if values == "centre":
            centre = [(a + b) / 2 for a, b in zip(lo, hi)]
            return code, dict(zip(backend.input_vars, centre))
        return code, values

    backend._solve = fake_solve
    spec = robustness_spec(x, label, 0.1, WIDTHS[-1])
    open_ = ~get_backend("native")(model, "crown").verify(spec).verified
    assert bool(open_.any())
    result = backend.verify(spec)
    assert not bool(result.verified[open_].any())
    assert all(r.verdict is verdict for r in backend.records), [(r.verdict, r.reason) for r in backend.records]
    assert not bool(backend.falsify(spec, x).falsified.any())


def test_sweep_brackets_are_exact_and_contain_the_native_ones(model, samples):
    x, label = samples[0][:4], samples[1][:4]
    tol = 4e-3
    fast = AttackConfig(steps=20, restarts=2)
    marabou = critical_epsilon(_marabou(model, attack=fast), x, label, WIDTHS[-1], tol=tol, eps_max=0.5)
    native = critical_epsilon(get_backend("native")(model, "crown", attack=fast), x, label, WIDTHS[-1], tol=tol,
                              eps_max=0.5)
    for i, status in enumerate(marabou.status):
        assert status in ("exact", "robust"), (i, status)
        if status == "exact":
            assert float(marabou.eps_hi[i] - marabou.eps_lo[i]) <= tol + 1e-12
        assert float(marabou.eps_lo[i]) >= float(native.eps_lo[i]) - tol
        assert float(marabou.eps_lo[i]) <= float(native.eps_hi[i])


def test_zoo_models_with_normalize_are_read_and_decided(tmp_path):
    """The zoo's first layer exports a broadcasting Sub/Div that Marabou 2.0's parser rejects; the backend reads
    an equivalent rewrite (1x1 Conv) and its verdicts stay consistent with the native bound and PGD."""
    from properties.onnx_export import export_onnx
    from trainers.zoo import build_model

    net = build_model("mlp", (1, 4, 4), 3, mean=[0.4], std=[0.3], seed=2, widths=(8, 8))
    zoo = load_model(export_onnx(net, tmp_path / "zoo_mlp.onnx", (1, 4, 4)).path)
    x = torch.rand((4, 1, 4, 4), generator=torch.Generator().manual_seed(3))
    label = zoo.predict(x)
    backend = get_backend("marabou")(zoo, "crown", attack=AttackConfig(steps=0, restarts=0),
                                     options=BackendOptions(timeout=20))
    backend.attack_first = False
    native = get_backend("native")(zoo, "alpha-crown")
    for eps in (0.01, 0.2):
        spec = robustness_spec(x, label, eps, 3)
        verified = backend.verify(spec).verified
        falsified = backend.falsify(spec, x).falsified
        assert not bool((verified & falsified).any())
        assert not bool((native.verify(spec).verified & ~verified).any())
        strong = pgd_attack(zoo.graph, spec, steps=60, restarts=3, seed=7)
        assert not bool((zoo.confirm(spec, strong.x_adv, strong.found) & verified).any())
    assert backend.n_solves > 0
