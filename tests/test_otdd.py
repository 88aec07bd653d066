"""OTDD, the label-aware dataset distance: closed forms (identical data, one class, the diagonal Bures formula),
symmetry, invariance to class names, and an ordering that the label-blind OT distance cannot see."""

from __future__ import annotations

import numpy as np
import ot
import pytest

from robverify.analysis.similarity import class_gaussians, gaussian_w2_diag, ot_distance, otdd


def mixture(means: np.ndarray, n_per: int, seed: int, spread: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Labelled Gaussian mixture: class k ~ N(means[k], spread^2 I); features [K * n_per, D], labels [K * n_per]."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(len(means)), n_per)
    return means[y] + spread * rng.normal(size=(len(y), means.shape[1])), y


MEANS = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 3.0]])


def test_identical_datasets_are_at_distance_zero_and_renaming_classes_changes_nothing() -> None:
    x, y = mixture(MEANS, 30, seed=0)
    assert otdd(x, y, x, y) == pytest.approx(0.0, abs=1e-6)
    order = np.random.default_rng(1).permutation(len(y))
    assert otdd(x, y, x[order], y[order]) == pytest.approx(0.0, abs=1e-6)  # the same samples, shuffled
    renamed = np.array([2, 0, 1])[y] + 5  # class names differ, class-conditional distributions do not
    assert otdd(x, y, x, renamed) == pytest.approx(0.0, abs=1e-6)


def test_one_class_each_adds_the_gaussian_w2_to_the_feature_ot() -> None:
    """With one class per dataset every pair pays the same label cost c, so OTDD^2 = OT^2 + c."""
    rng = np.random.default_rng(2)
    a = rng.normal(size=(40, 3))
    b = 1.5 * rng.normal(size=(50, 3)) + np.array([1.0, -2.0, 0.5])
    _, mu_a, sd_a = class_gaussians(a, np.zeros(40, dtype=int))
    _, mu_b, sd_b = class_gaussians(b, np.zeros(50, dtype=int))
    c = float(gaussian_w2_diag(mu_a, sd_a, mu_b, sd_b)[0, 0])
    expected = ot_distance(a, b) ** 2 + c
    assert otdd(a, np.zeros(40, dtype=int), b, np.full(50, 7)) ** 2 == pytest.approx(expected, rel=1e-9)
    shift = np.array([0.3, -0.4, 1.2])  # a shifted copy: OT^2 = |s|^2 and the label cost = |s|^2 too
    assert otdd(a, np.zeros(40, dtype=int), a + shift, np.zeros(40, dtype=int)) ** 2 == pytest.approx(
        2 * float(shift @ shift), rel=1e-6)


def test_diagonal_bures_formula_matches_pot() -> None:
    rng = np.random.default_rng(3)
    mu_a, mu_b = rng.normal(size=(2, 4)), rng.normal(size=(3, 4))
    sd_a, sd_b = rng.uniform(0.2, 2.0, size=(2, 4)), rng.uniform(0.2, 2.0, size=(3, 4))
    got = gaussian_w2_diag(mu_a, sd_a, mu_b, sd_b)
    for i in range(2):
        for j in range(3):
            reference = ot.gaussian.bures_wasserstein_distance(mu_a[i], mu_b[j], np.diag(sd_a[i] ** 2),
                                                               np.diag(sd_b[j] ** 2))
            assert got[i, j] == pytest.approx(float(reference) ** 2, rel=1e-6)


def test_symmetric() -> None:
    a, ya = mixture(MEANS, 20, seed=4)
    b, yb = mixture(MEANS[:2] + 0.7, 25, seed=5)
    assert otdd(a, ya, b, yb) == pytest.approx(otdd(b, yb, a, ya), rel=1e-9)


def test_moving_samples_between_classes_changes_otdd_but_not_the_label_blind_distance() -> None:
    x, y = mixture(MEANS, 30, seed=6)
    shuffled = np.random.default_rng(7).permutation(y)  # the same features, labels unrelated to them
    assert ot_distance(x, x) == pytest.approx(0.0, abs=1e-6)  # the features are all ot_distance sees
    assert otdd(x, y, x, shuffled) > 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_near_task_is_closer_than_a_task_with_the_same_features_and_scrambled_labels(seed: int) -> None:
    """Reference mixture; "near": the class means shifted slightly; "far": near's very features with half of the
    labels moved to the next class. The label-blind OT distance ties them; OTDD orders them."""
    ref, y_ref = mixture(MEANS, 30, seed=seed)
    near, y_near = mixture(MEANS + 0.3, 30, seed=seed + 100)
    rng = np.random.default_rng(seed + 200)
    moved = rng.random(len(y_near)) < 0.5
    y_far = np.where(moved, (y_near + 1) % len(MEANS), y_near)
    assert otdd(ref, y_ref, near, y_near) < otdd(ref, y_ref, near, y_far)
    moved_means, _ = mixture(MEANS[[1, 2, 0]] * 1.5, 30, seed=seed + 300)  # clusters moved away: farther still
    assert otdd(ref, y_ref, near, y_near) < otdd(ref, y_ref, moved_means, y_ref)
