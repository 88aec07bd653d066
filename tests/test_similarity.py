"""Task similarity measures: closed forms on tiny features, and order (near-identical task above unrelated)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from robverify.analysis import runs
from robverify.analysis.similarity import (
    REPRESENTATION_CHANGE,
    features_of,
    gbc,
    hscore,
    label_overlap,
    leep,
    linear_cka,
    logme,
    logme_evidence,
    ot_distance,
    transfer_similarity,
)
from robverify.errors import RobverifyError
from trainers.zoo import build_model


def clusters(n_per: int = 40, k: int = 3, d: int = 5, spread: float = 0.3, seed: int = 0):
    """K well separated Gaussian clusters: features [n_per * K, d], labels = cluster index."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 3
    y = np.repeat(np.arange(k), n_per)
    return centres[y] + spread * rng.normal(size=(len(y), d)), y


# ---------------------------------------------------------------------------------------------------------------
# closed forms


def test_hscore_hand_values() -> None:
    # f = [0, 0, 2, 2]: var(f) = 1, E[f|y] = f, so H = 1.
    assert hscore(np.array([0.0, 0, 2, 2]), np.array([0, 0, 1, 1])) == pytest.approx(1.0)
    # f = [-1, 1, 1, 3]: var(f) = 2, E[f|y] = [0, 0, 2, 2] with variance 1, so H = 1/2.
    assert hscore(np.array([-1.0, 1, 1, 3]), np.array([0, 0, 1, 1])) == pytest.approx(0.5)


def test_leep_closed_forms() -> None:
    y = np.array([0, 0, 1, 2, 2, 2])
    # A source head that predicts the labels with certainty: P(y|z) is the identity, LEEP = log 1 = 0.
    assert leep(np.eye(3)[y], y) == pytest.approx(0.0)
    # A uniform source head carries no information: LEEP = mean log of the empirical label frequency.
    freq = np.bincount(y) / len(y)
    assert leep(np.full((6, 4), 0.25), y) == pytest.approx(np.mean(np.log(freq[y])))
    with pytest.raises(RobverifyError, match="probabilities"):
        leep(np.full((6, 4), 0.3), y)


def test_gbc_two_gaussians_by_hand() -> None:
    # class 0: {-1, 1} (mean 0, var 1); class 1: {1, 3} (mean 2, var 1).
    # Bhattacharyya distance = (2^2 / 1) / 8 + 0 = 0.5, coefficient e^-0.5, counted for both ordered pairs.
    f = np.array([-1.0, 1.0, 1.0, 3.0])
    assert gbc(f, np.array([0, 0, 1, 1])) == pytest.approx(-2 * math.exp(-0.5))
    # Unequal variances: class 1 = {0, 4} (mean 2, var 4): var = 2.5,
    # D = 4 / 2.5 / 8 + 0.5 * ln(2.5 / sqrt(1 * 4)).
    d = 4 / 2.5 / 8 + 0.5 * math.log(2.5 / 2.0)
    assert gbc(np.array([-1.0, 1.0, 0.0, 4.0]), np.array([0, 0, 1, 1])) == pytest.approx(-2 * math.exp(-d))


def test_linear_cka_invariances_and_one_dimensional_case() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 4))
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    assert linear_cka(x, 3.0 * x @ q + 7.0) == pytest.approx(1.0)  # orthogonal map, scale and shift
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert linear_cka(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1] ** 2)  # 1-D: squared correlation
    assert linear_cka(x, np.ones((50, 2))) == 0.0


def test_ot_distance_of_a_shifted_cloud_is_the_shift() -> None:
    x = np.random.default_rng(2).normal(size=(30, 3))
    shift = np.array([0.5, -1.0, 2.0])
    assert ot_distance(x, x + shift) == pytest.approx(np.linalg.norm(shift), rel=1e-6)
    assert ot_distance(x, x[::-1]) == pytest.approx(0.0, abs=1e-6)  # sqrt of a rounding-level cost


def test_label_overlap() -> None:
    assert label_overlap([str(i) for i in range(5)], [str(i) for i in range(5, 10)]) == 0.0
    assert label_overlap([str(i) for i in range(5)], [str(i) for i in range(10)]) == 0.5
    assert label_overlap(["a", "b"], ["b", "a"]) == 1.0


@pytest.mark.parametrize("n,d", [(40, 3), (16, 10)])
def test_logme_is_the_maximised_evidence(n: int, d: int) -> None:
    rng = np.random.default_rng(n)
    f = rng.normal(size=(n, d))
    y = rng.integers(0, 3, size=n)
    y[:3] = [0, 1, 2]
    expected = []
    for k in range(3):
        t = (y == k).astype(float)
        result = minimize(lambda p: -logme_evidence(f, t, math.exp(p[0]), math.exp(p[1])), x0=[0.0, 0.0],
                          method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 5000})
        expected.append(-result.fun / n)
    assert logme(f, y) == pytest.approx(np.mean(expected), abs=1e-5)


def test_logme_of_features_that_carry_nothing() -> None:
    """All-zero features (a robust source whose ReLUs are all dead on the target): the evidence of ``t`` as noise
    alone, ``1/2 log(beta) - 1/2 log(2 pi) - 1/2`` with ``beta = N / |t|^2``, per class, averaged."""
    n = 50
    y = np.arange(n) % 3
    expected = [0.5 * math.log(n / (y == k).sum()) - 0.5 * math.log(2 * math.pi) - 0.5 for k in range(3)]
    assert logme(np.zeros((n, 8)), y) == pytest.approx(np.mean(expected), abs=1e-12)
    # the same limit is approached by features that carry almost nothing
    tiny = np.random.default_rng(0).normal(size=(n, 8)) * 1e-9
    assert logme(tiny, y) == pytest.approx(np.mean(expected), abs=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# order: a near-identical task scores above an unrelated one


def test_array_measures_order_related_above_unrelated() -> None:
    f, y = clusters()
    unrelated = np.random.default_rng(9).permutation(y)  # same features, labels unrelated to them
    assert logme(f, y) > logme(f, unrelated)
    assert hscore(f, y) > hscore(f, unrelated)
    assert gbc(f, y) > gbc(f, unrelated)
    probs = np.exp(f[:, :3]) / np.exp(f[:, :3]).sum(axis=1, keepdims=True)
    assert leep(probs, y) > leep(probs, unrelated)
    near, _ = clusters(seed=0, spread=0.31)
    far = clusters(seed=5)[0] + 10.0
    assert ot_distance(f, near) < ot_distance(f, far)


def _data(x: torch.Tensor, y: torch.Tensor, names: tuple[str, ...]) -> SimpleNamespace:
    return SimpleNamespace(x_train=x, y_train=y, class_names=names)


@pytest.fixture(scope="module")
def trained_source():
    """A small MLP trained on two separable image classes (synthetic 1x6x6 images)."""
    gen = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 2
    x = (torch.rand(200, 1, 6, 6, generator=gen) * 0.3 + y.view(-1, 1, 1, 1) * 0.5).clamp(0, 1)
    x[y == 1, :, :3] *= 0.2  # class 1: bright bottom half only
    model = build_model("mlp", (1, 6, 6), 2, mean=[0.5], std=[0.3], seed=0, widths=[16])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model, x, y


def test_transfer_similarity_orders_tasks(trained_source) -> None:
    model, x, y = trained_source
    source = _data(x, y, ("a", "b"))
    same = _data(x.flip(0), y.flip(0), ("a", "b"))
    gen = torch.Generator().manual_seed(3)
    noise = _data(torch.rand(200, 1, 6, 6, generator=gen), torch.randint(0, 2, (200,), generator=gen), ("c", "d"))
    near = transfer_similarity(model, model, source, same, seed=0)
    far = transfer_similarity(model, model, source, noise, seed=0)
    assert set(near) == {"logme", "hscore", "leep", "gbc", REPRESENTATION_CHANGE, "label_overlap", "ot_distance",
                         "otdd"}
    assert all(math.isfinite(v) for v in (*near.values(), *far.values()))
    for key in ("logme", "hscore", "leep", "gbc", "label_overlap"):
        assert near[key] > far[key], key
    assert near["ot_distance"] < far["ot_distance"]
    assert near["otdd"] == pytest.approx(0.0, abs=1e-6)  # the same labelled samples, in another order
    assert far["otdd"] > 0.1
    assert near[REPRESENTATION_CHANGE] == pytest.approx(1.0)  # the "transferred" model is the source itself
    assert REPRESENTATION_CHANGE == runs.REPRESENTATION_CHANGE  # the key the report reads apart
    assert transfer_similarity(model, model, source, same, seed=0) == near  # recomputable: same seed, same scores


def test_features_are_the_head_input(trained_source) -> None:
    model, x, _ = trained_source
    np.testing.assert_allclose(features_of(model, x), model.feature_extractor(x).double().detach().numpy(),
                               rtol=1e-6)
