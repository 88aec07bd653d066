"""Statistics: quantiles with inf, bootstrap intervals, Holm, rank-biserial, paired tests, Spearman, log-normal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from robverify.analysis.statistics import (
    bootstrap_ci,
    holm,
    lognormal_fit,
    paired_comparison,
    quantile,
    quantile_ci,
    rank_biserial,
    spearman,
)


def test_quantile_with_infinite_values() -> None:
    assert quantile(np.array([1.0, 2.0, 3.0]), 0.5) == 2.0
    assert quantile(np.array([1.0, 2.0, np.inf]), 0.5) == 2.0
    assert quantile(np.array([1.0, 2.0, np.inf, np.inf]), 0.5) == np.inf  # weight on inf -> inf
    assert quantile(np.array([1.0, 2.0, 3.0, np.inf]), 0.25) == pytest.approx(1.75)
    assert math.isnan(quantile(np.array([]), 0.5))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=20), st.floats(0, 1))
def test_quantile_matches_numpy_on_finite_values(values: list[float], q: float) -> None:
    assert quantile(np.array(values), q) == pytest.approx(np.quantile(values, q))


def test_bootstrap_interval_covers_the_median_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.lognormal(size=30), rng.lognormal(size=3000)
    m, lo, hi = quantile_ci(small, 0.5, seed=1)
    assert lo <= m <= hi
    m2, lo2, hi2 = quantile_ci(large, 0.5, seed=1)
    assert lo2 <= m2 <= hi2
    # asymptotic width of the median's interval: 2 * 1.96 / (2 f(median) sqrt(n)), f(1) = 1/sqrt(2 pi)
    assert hi2 - lo2 == pytest.approx(2 * 1.96 * math.sqrt(2 * math.pi) / (2 * math.sqrt(3000)), rel=0.3)
    assert hi2 - lo2 < hi - lo
    assert quantile_ci(small, 0.5, seed=1) == (m, lo, hi)  # seeded
    assert all(math.isnan(v) for v in bootstrap_ci(np.array([1.0]), lambda s: np.median(s, axis=1)))


def test_holm_hand_values() -> None:
    # sorted p: 0.01 (x3 = 0.03), 0.02 (x2 = 0.04), 0.04 (x1 = 0.04); then monotone
    np.testing.assert_allclose(holm([0.04, 0.01, 0.02]), [0.04, 0.03, 0.04])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    out = holm([0.01, np.nan, 0.03])
    assert math.isnan(out[1]) and out[0] == pytest.approx(0.02) and out[2] == pytest.approx(0.03)


def test_rank_biserial_hand_values() -> None:
    a = np.array([3.0, 5.0, 1.0, 4.0])
    b = np.array([1.0, 1.0, 2.0, 4.0])
    # differences 2, 4, -1 (tie dropped): ranks of |d| = 2, 3, 1 -> W+ = 5, W- = 1 -> r = 4/6
    assert rank_biserial(a, b) == pytest.approx(4 / 6)
    assert rank_biserial(b, a) == pytest.approx(-4 / 6)
    assert rank_biserial(a, a) == 0.0


def test_paired_comparison() -> None:
    rng = np.random.default_rng(3)
    b = rng.lognormal(mean=-4, size=40)
    a = 2 * b  # a doubles every radius
    result = paired_comparison(a, b, seed=0)
    assert result.ratio == pytest.approx(2.0)
    assert result.ratio_ci_low == pytest.approx(2.0) and result.ratio_ci_high == pytest.approx(2.0)
    assert result.effect == 1.0 and result.p_value < 1e-6
    assert result.p_value == pytest.approx(sps.wilcoxon(a, b).pvalue)
    assert result.diff_ci_low <= result.median_diff <= result.diff_ci_high
    same = paired_comparison(b, b)
    assert same.p_value == 1.0 and same.effect == 0.0 and same.median_diff == 0.0
    zero = paired_comparison(b, np.zeros_like(b))
    assert math.isnan(zero.ratio) and math.isnan(zero.ratio_ci_low)


def test_spearman_interval() -> None:
    x = np.arange(10.0)
    r = spearman(x, x**3)
    assert r.rho == pytest.approx(1.0) and r.n == 10
    rng = np.random.default_rng(0)
    noisy = spearman(x, x + rng.normal(scale=3, size=10))
    z, se = math.atanh(noisy.rho), math.sqrt((1 + noisy.rho**2 / 2) / 7)
    assert noisy.ci_low == pytest.approx(math.tanh(z - 1.959964 * se), rel=1e-5)
    assert noisy.ci_high == pytest.approx(math.tanh(z + 1.959964 * se), rel=1e-5)
    assert math.isnan(spearman(x, np.ones(10)).rho)  # constant similarity: undefined
    assert math.isnan(spearman(x[:3], x[:3]).ci_low)  # too few points for an interval


def test_lognormal_fit() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.lognormal(mean=-3, sigma=0.5, size=300), np.zeros(7)])
    fit = lognormal_fit(values)
    assert fit.n == 300 and fit.n_zero == 7
    assert fit.mu == pytest.approx(-3, abs=0.1) and fit.sigma == pytest.approx(0.5, abs=0.06)
    assert fit.shapiro_p > 0.01
    uniform = lognormal_fit(rng.uniform(0.5, 1.0, size=300))
    assert uniform.shapiro_p < 1e-3 and uniform.ks_stat > fit.ks_stat
