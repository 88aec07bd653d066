"""Critical-epsilon search (:func:`robverify.runs.search.critical_epsilon`) and ``--grid`` parsing.

The search's contract, checked against independent re-runs: ``eps_lo`` is an eps the backend verifies,
``eps_hi`` one with a counterexample that onnxruntime confirms, ``eps_lo < eps_hi``, and no box the backend
verified during the search contains a confirmed counterexample (a sample falsified at eps is never verified at
eps' >= eps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from helpers import linear_classifier, single_thread, to_onnx  # noqa: F401 (single_thread: an autouse fixture)
from robverify.backends.base import FalsifyResult, VerifyResult
from robverify.backends.native import NativeBackend
from robverify.errors import RobverifyError
from robverify.ir.model import LoadedModel, load_model
from robverify.runs.search import SearchResult, critical_epsilon
from robverify.runs.sweep import parse_grid
from robverify.spec import Method, Spec, robustness_spec

STATUSES = {"exact", "gap", "robust", "unverified"}
N_CLASSES = 10


# ------------------------------------------------------------------------------------------------ fixtures


@dataclass
class Digits:
    model: LoadedModel
    x: Tensor       # test images [N, 1, 8, 8]
    y: Tensor       # true labels
    pred: Tensor    # onnxruntime's predictions


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Digits:
    """A small MLP trained for a few epochs on sklearn's 8x8 digits, exported to ONNX and loaded."""
    from trainers.datasets import load_dataset
    from trainers.training import train_standard
    from trainers.zoo import build_model

    data = load_dataset("digits")
    net = build_model("mlp", data.input_shape, data.n_classes, mean=[0.3], std=[0.4], seed=0, widths=[32, 16])
    train_standard(net, data.x_train, data.y_train, epochs=4, lr=3e-3, seed=0)
    path = to_onnx(net.eval(), tmp_path_factory.mktemp("digits") / "mlp.onnx", data.input_shape)
    model = load_model(path)
    x, y = data.x_test[:16], data.y_test[:16]
    return Digits(model, x, y, model.predict(x))


class Recording(NativeBackend):
    """The native backend, keeping every verified box and every confirmed counterexample it produced."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.verified: list[tuple[Tensor, Tensor, Tensor]] = []        # (x_lo, x_hi, C) of verified specs
        self.counterexamples: list[tuple[Tensor, Tensor, Tensor]] = []  # (x_adv, x_ref, C) confirmed

    def verify(self, spec: Spec) -> VerifyResult:
        result = super().verify(spec)
        ok = result.verified
        self.verified += list(zip(spec.x_lo[ok], spec.x_hi[ok], spec.C[ok]))
        return result

    def falsify(self, spec: Spec, x_ref: Tensor) -> FalsifyResult:
        result = super().falsify(spec, x_ref)
        ok = result.falsified
        self.counterexamples += list(zip(result.x_adv[ok], x_ref[ok], spec.C[ok]))
        return result


def _check_contract(result: SearchResult, n: int, *, tol: float | None, grid: list[float] | None,
                    eps_max: float) -> None:
    """Shapes, statuses and the bracket invariants every search result must satisfy."""
    assert result.eps_lo.shape == result.eps_hi.shape == result.n_calls.shape == result.n_attacks.shape == (n,)
    assert len(result.status) == n
    assert set(result.status) <= STATUSES, result.status
    assert bool((result.n_calls >= 1).all()) and bool((result.n_attacks >= 0).all())
    top = max(grid) if grid is not None else eps_max
    for i, status in enumerate(result.status):
        lo, hi = float(result.eps_lo[i]), float(result.eps_hi[i])
        if status == "unverified":
            assert math.isnan(lo), (i, status, lo)
            continue
        assert not math.isnan(lo) and lo >= 0, (i, status, lo)
        assert lo < hi, (i, status, lo, hi)
        if status == "robust":
            assert lo == pytest.approx(top) and hi == math.inf, (i, lo, hi)
        elif status == "exact":
            assert math.isfinite(hi)
            if grid is None:
                assert hi - lo <= tol + 1e-12, (i, lo, hi)
            else:  # neighbours in the grid (or eps 0 below its first value)
                values = sorted(set(grid))
                k = values.index(hi)
                assert lo == (values[k - 1] if k > 0 else 0.0), (i, lo, hi)
        else:
            assert status == "gap"
        if grid is not None:
            assert lo in set(grid) | {0.0}, (i, lo)
            assert hi in set(grid) | {math.inf}, (i, hi)
        else:
            assert lo <= eps_max and (hi <= eps_max or hi == math.inf)


def _recheck(model: LoadedModel, method: Method, x: Tensor, label: Tensor, result: SearchResult,
             recorded: list[tuple[Tensor, Tensor, Tensor]]) -> None:
    """Independently of the search: verified at eps_lo; a counterexample within eps_hi, found by a fresh attack
    or else one of the search's own (``recorded``: ``(x_adv, x_ref, C)``) re-confirmed in onnxruntime."""
    fresh = NativeBackend(model, method)
    has_lo = ~torch.isnan(result.eps_lo)
    idx = has_lo.nonzero().squeeze(1)
    if idx.numel():
        spec = robustness_spec(x[idx], label[idx], result.eps_lo[idx].float(), N_CLASSES)
        verified = fresh.verify(spec).verified
        assert bool(verified.all()), f"not verified at eps_lo: samples {idx[~verified].tolist()}"
    idx = torch.isfinite(result.eps_hi).nonzero().squeeze(1)
    if not idx.numel():
        return
    # a little above eps_hi: the reported value is the counterexample's float64 L-inf distance, which the
    # float32 box of exactly that radius may miss by one rounding step
    eps = result.eps_hi[idx].float() * (1 + 1e-6) + 1e-7
    spec = robustness_spec(x[idx], label[idx], eps, N_CLASSES)
    falsified = fresh.falsify(spec, x[idx]).falsified
    for k in (~falsified).nonzero().squeeze(1).tolist():
        i = int(idx[k])
        own = [x_adv for x_adv, x_ref, _ in recorded
               if torch.equal(x_ref, x[i]) and float((x_adv - x_ref).abs().max()) <= float(eps[k])]
        sub = spec.select(torch.tensor([k]))
        assert any(bool(model.confirm(sub, c.unsqueeze(0), torch.tensor([True]))[0]) for c in own), (
            f"sample {i}: no counterexample within eps_hi = {float(result.eps_hi[i])}")


def _check_no_contradiction(backend: Recording) -> None:
    """No verified box (any sample, any eps of the search) contains a confirmed counterexample of the same
    property: a sample falsified at eps is never verified at eps' >= eps."""
    for x_adv, _, C_adv in backend.counterexamples:
        for x_lo, x_hi, C in backend.verified:
            if torch.equal(C_adv, C):
                inside = bool(((x_adv >= x_lo) & (x_adv <= x_hi)).all())
                assert not inside, "a verified box contains a confirmed counterexample"


# ------------------------------------------------------------------------------------------------ continuous


@pytest.mark.parametrize("method", [Method.CROWN, Method.IBP])
def test_continuous_search_brackets_are_consistent(digits, method):
    backend = Recording(digits.model, method)
    tol, eps_max = 2e-3, 0.3
    result = critical_epsilon(backend, digits.x, digits.pred, N_CLASSES, tol=tol, eps_max=eps_max)
    _check_contract(result, len(digits.x), tol=tol, grid=None, eps_max=eps_max)
    assert "unverified" not in result.status  # labels are the predictions: every sample verifies at eps 0
    assert bool(torch.isfinite(result.eps_hi).any())  # the bisection has something to bracket
    _recheck(digits.model, method, digits.x, digits.pred, result, backend.counterexamples)
    _check_no_contradiction(backend)
    assert backend.verified and backend.counterexamples


def test_tighter_method_never_certifies_less(digits):
    """eps_lo of CROWN >= that of IBP up to the tolerance (CROWN's bounds dominate IBP's at every eps)."""
    tol = 1e-3
    ibp = critical_epsilon(NativeBackend(digits.model, Method.IBP), digits.x[:8], digits.pred[:8], N_CLASSES,
                           tol=tol, eps_max=0.3)
    crown = critical_epsilon(NativeBackend(digits.model, Method.CROWN), digits.x[:8], digits.pred[:8],
                             N_CLASSES, tol=tol, eps_max=0.3)
    assert bool((crown.eps_lo >= ibp.eps_lo - tol).all()), (crown.eps_lo, ibp.eps_lo)


def test_wrong_labels_are_unverified_and_falsified(digits):
    wrong = (digits.pred[:6] + 1) % N_CLASSES
    result = critical_epsilon(NativeBackend(digits.model, Method.CROWN), digits.x[:6], wrong, N_CLASSES,
                              tol=1e-3, eps_max=0.3)
    _check_contract(result, 6, tol=1e-3, grid=None, eps_max=0.3)
    assert result.status == ["unverified"] * 6
    assert bool(torch.isnan(result.eps_lo).all())
    assert bool(torch.isfinite(result.eps_hi).all())  # the clean input is already a counterexample


def test_small_eps_max_gives_robust(digits):
    result = critical_epsilon(NativeBackend(digits.model, Method.CROWN), digits.x[:6], digits.pred[:6],
                              N_CLASSES, tol=1e-4, eps_max=1e-3)
    _check_contract(result, 6, tol=1e-4, grid=None, eps_max=1e-3)
    assert "robust" in result.status
    for i, status in enumerate(result.status):
        if status == "robust":
            assert float(result.eps_lo[i]) == pytest.approx(1e-3) and result.n_attacks[i] >= 1


def test_mixed_batch_keeps_samples_apart(digits):
    """One batch with correct and wrong labels gives each sample the result it gets alone."""
    label = digits.pred[:6].clone()
    label[1] = (label[1] + 3) % N_CLASSES
    backend = NativeBackend(digits.model, Method.CROWN)
    together = critical_epsilon(backend, digits.x[:6], label, N_CLASSES, tol=1e-3, eps_max=0.3)
    assert together.status[1] == "unverified"
    for i in (0, 1, 4):
        alone = critical_epsilon(backend, digits.x[i:i + 1], label[i:i + 1], N_CLASSES, tol=1e-3, eps_max=0.3)
        assert alone.status == [together.status[i]]
        torch.testing.assert_close(alone.eps_lo, together.eps_lo[i:i + 1], equal_nan=True)
        torch.testing.assert_close(alone.eps_hi, together.eps_hi[i:i + 1])


def test_non_positive_tol_is_rejected(digits):
    backend = NativeBackend(digits.model, Method.CROWN)
    for tol in (0.0, -1e-3):
        with pytest.raises(RobverifyError, match="tol"):
            critical_epsilon(backend, digits.x[:2], digits.pred[:2], N_CLASSES, tol=tol)


# ------------------------------------------------------------------------------------------------ grid


@pytest.mark.parametrize("text", ["0.01:0.2:0.01", "0.002,0.005,0.01,0.02,0.05,0.1,0.3"])
def test_grid_search_returns_grid_values(digits, text):
    grid = parse_grid(text)
    backend = Recording(digits.model, Method.CROWN)
    result = critical_epsilon(backend, digits.x, digits.pred, N_CLASSES, grid=grid)
    _check_contract(result, len(digits.x), tol=None, grid=grid, eps_max=max(grid))
    assert bool(torch.isfinite(result.eps_hi).any())
    _recheck(digits.model, Method.CROWN, digits.x, digits.pred, result, backend.counterexamples)
    _check_no_contradiction(backend)
    # a binary search over the list: about log2(len(grid)) + 2 bound calls per sample, never more than the list
    assert bool((result.n_calls <= len(grid) + 1).all())


def test_grid_and_continuous_agree(digits):
    """The grid bracket contains (up to the continuous tolerance) the continuous one's verified eps_lo."""
    grid = parse_grid("0.0:0.3:0.02")
    backend = NativeBackend(digits.model, Method.CROWN)
    on_grid = critical_epsilon(backend, digits.x[:8], digits.pred[:8], N_CLASSES, grid=grid)
    continuous = critical_epsilon(backend, digits.x[:8], digits.pred[:8], N_CLASSES, tol=1e-3, eps_max=0.3)
    # the same deterministic bound: every grid eps below the continuous eps_lo is verified too
    assert bool((on_grid.eps_lo >= continuous.eps_lo - 0.02 - 1e-9).all()), (on_grid.eps_lo, continuous.eps_lo)


# ------------------------------------------------------------------------------------------------ linear model


def test_exact_tools_give_brackets_around_the_closed_form(tmp_path):
    """A two-class linear model without clipping: CROWN is exact up to its safety margin and PGD reaches the
    worst vertex, so the bracket must hold the closed-form critical eps ``m / ||w_y - w_j||_1`` and be within
    ``tol`` of it on both sides; ``exact`` brackets are at most ``tol`` wide, and a ``gap`` (the bound's safety
    margin can leave a real one) is never wider than the two searches' ``tol`` each plus that margin."""
    net = linear_classifier(11, n_in=5, n_classes=2)
    model = load_model(to_onnx(net, tmp_path / "linear.onnx", (5,)))
    x = torch.rand((64, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = net(x).double()
    label = logits.argmax(1)
    weight = net[0].weight.detach().double()
    norm = (weight[0] - weight[1]).abs().sum()
    critical = (logits.max(1).values - logits.min(1).values) / norm
    tol = 1e-3
    result = critical_epsilon(NativeBackend(model, Method.CROWN), x, label, 2, tol=tol, eps_max=3.0,
                              domain=(-1e6, 1e6))
    slack = 1e-4  # the bound's safety margin (1e-5 relative) and float32 rounding, in eps
    assert bool((result.eps_lo <= critical + 1e-6).all()) and bool((result.eps_hi >= critical - 1e-6).all())
    assert bool((critical - result.eps_lo <= tol + slack).all()), (critical - result.eps_lo).max()
    assert bool((result.eps_hi - critical <= tol).all()), (result.eps_hi - critical).max()
    width = result.eps_hi - result.eps_lo
    for i, status in enumerate(result.status):
        assert status in {"exact", "gap"}
        assert (width[i] <= tol) == (status == "exact"), (i, status, float(width[i]))
    assert result.status.count("exact") >= 32, result.status


# ------------------------------------------------------------------------------------------------ parse_grid


def test_parse_grid_range_includes_both_ends():
    assert parse_grid("0.01:0.05:0.01") == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])
    assert len(parse_grid("0.01:0.05:0.01")) == 5
    assert parse_grid("0:0.1:0.05") == pytest.approx([0.0, 0.05, 0.1])
    assert parse_grid("0.1:0.1:0.05") == pytest.approx([0.1])
    assert parse_grid("0:0.1:0.03") == pytest.approx([0.0, 0.03, 0.06, 0.09])  # STOP only when reached
    assert parse_grid("1:4:1") == [1.0, 2.0, 3.0, 4.0]


def test_parse_grid_comma_lists():
    assert parse_grid("0.01,0.02,0.5") == pytest.approx([0.01, 0.02, 0.5])
    assert parse_grid("0.01, 0.02 ,0.5") == pytest.approx([0.01, 0.02, 0.5])
    assert parse_grid("0.3") == pytest.approx([0.3])
    assert parse_grid("0,1e-3") == pytest.approx([0.0, 1e-3])


@pytest.mark.parametrize("text", [
    "", ",", "abc", "0.1,x", "0.01:0.05", "0.01:0.05:0.01:0.1", "0.05:0.01:0.01", "0:1:0", "0:1:-0.1",
    "-0.1,0.2", "nan", "inf", "0.1,inf", "a:b:c", "0.01;0.02",
])
def test_parse_grid_rejects_bad_input(text):
    with pytest.raises(RobverifyError, match="grid"):
        parse_grid(text)


@settings(max_examples=200, deadline=None)
@given(start=st.integers(0, 1000), step=st.integers(1, 200), n=st.integers(0, 60))
def test_parse_grid_range_property(start, step, n):
    """``a:a+n*s:s`` with decimal values gives exactly ``n + 1`` values from ``a`` to ``a + n*s``, evenly spaced."""
    a, s = start / 1000, step / 1000
    text = f"{a!r}:{a + n * s!r}:{s!r}"
    values = parse_grid(text)
    assert len(values) == n + 1, text
    assert values[0] == pytest.approx(a) and values[-1] == pytest.approx(a + n * s)
    assert all(v2 - v1 == pytest.approx(s) for v1, v2 in zip(values, values[1:]))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=12))
def test_parse_grid_comma_property(values):
    assert parse_grid(",".join(repr(v) for v in values)) == values
