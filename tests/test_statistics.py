"""Statistics: quantiles with inf, bootstrap intervals, the cluster bootstrap, Holm, rank-biserial, paired tests,
Spearman, the slope regression, log-normal."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from robverify.analysis.statistics import (
    bootstrap_ci,
    cluster_bootstrap_ci,
    holm,
    mean_of_cluster_means,
    lognormal_fit,
    paired_comparison,
    quantile,
    quantile_ci,
    rank_biserial,
    slope_regression,
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


def test_cluster_bootstrap_of_singletons_is_the_plain_bootstrap() -> None:
    values = np.random.default_rng(0).lognormal(size=25)
    plain = bootstrap_ci(values, lambda s: np.median(s, axis=1), seed=4)
    clustered = cluster_bootstrap_ci(values, np.arange(25)[::-1], lambda v, _c: float(np.median(v)), seed=4)
    assert clustered == plain


def test_cluster_bootstrap_of_identical_members_is_the_bootstrap_of_the_clusters() -> None:
    """Ten clusters of ten identical members: the cluster bootstrap of the mean is the plain bootstrap of the ten
    cluster values (same seed), about sqrt(10) times wider than the naive bootstrap of the hundred values."""
    centres = np.random.default_rng(1).normal(size=10)
    values, clusters = np.repeat(centres, 10), np.repeat([f"task{i}" for i in range(10)], 10)
    clustered = cluster_bootstrap_ci(values, clusters, lambda v, _c: float(np.mean(v)), seed=2)
    assert clustered == pytest.approx(bootstrap_ci(centres, lambda s: s.mean(axis=1), seed=2), rel=1e-9)
    naive = bootstrap_ci(values, lambda s: s.mean(axis=1), seed=2)
    ratio = (clustered[1] - clustered[0]) / (naive[1] - naive[0])
    assert 2.0 < ratio < 4.5
    assert all(math.isnan(v) for v in cluster_bootstrap_ci(values, np.zeros(100), lambda v, _c: 0.0))


def test_cluster_bootstrap_resamples_members_within_clusters() -> None:
    """Two clusters of four distinct values: the members vary within a drawn cluster, so the interval of the
    mean of cluster means is wider than with the clusters' members held fixed."""
    values = np.array([0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0])
    clusters = np.repeat(["a", "b"], 4)
    assert mean_of_cluster_means(values, clusters) == pytest.approx((1.5 + 11.5) / 2)
    assert mean_of_cluster_means(np.array([1.0, 2.0, 3.0]), np.array(["a", "a", "b"])) == pytest.approx(2.25)
    fixed = cluster_bootstrap_ci(values, clusters, mean_of_cluster_means, within=False, seed=0)
    assert fixed == pytest.approx((1.5, 11.5))  # only the cluster draws vary: all a, all b
    resampled = cluster_bootstrap_ci(values, clusters, mean_of_cluster_means, seed=0)
    assert resampled[0] < 1.5 and resampled[1] > 11.5


def _slope_data(n_tasks: int, replicates: int, noise: float, seed: int):
    """Two strategies on n_tasks tasks: y = 1 + 0.5 [s = b] + (2 - 1.5 [s = b]) x + noise, x per task."""
    rng = np.random.default_rng(seed)
    x_task = rng.uniform(0, 1, size=n_tasks)
    rows = [(s, t, x_task[t]) for s in ("a", "b") for t in range(n_tasks) for _ in range(replicates)]
    groups = np.array([r[0] for r in rows])
    tasks = np.array([f"t{r[1]}" for r in rows])
    x = np.array([r[2] for r in rows])
    is_b = groups == "b"
    y = 1 + 0.5 * is_b + (2 - 1.5 * is_b) * x + noise * rng.normal(size=x.size)
    return x, y, groups, tasks


TRUE = {"intercept": 1.0, "strategy[b]": 0.5, "slope": 2.0, "slope:strategy[b]": -1.5, "slope_of[a]": 2.0,
        "slope_of[b]": 0.5}


def test_slope_regression_recovers_exact_coefficients() -> None:
    x, y, groups, tasks = _slope_data(5, 1, noise=0.0, seed=0)
    fit = slope_regression(x, y, groups, tasks, factor="strategy")
    assert fit is not None and fit.reference == "a" and not fit.cluster_bootstrap
    assert dict(zip(fit.names, fit.value)) == pytest.approx(TRUE, abs=1e-9)
    assert fit.n_cells == 10 and fit.n_clusters == 5


def test_slope_regression_ols_intervals_are_the_pooled_variance_slope_errors() -> None:
    """Separate intercepts and slopes: each strategy's slope is its own simple regression's, with standard error
    sqrt(s^2 / Sxx) from the pooled residual variance s^2 = SSR / (M - 4); replicates are averaged first."""
    x, y, groups, tasks = _slope_data(6, 1, noise=0.3, seed=1)
    fit = slope_regression(x, y, groups, tasks, factor="strategy")
    got = dict(zip(fit.names, zip(fit.value, fit.ci_low, fit.ci_high)))
    ssr, sxx, slopes = 0.0, {}, {}
    for g in ("a", "b"):
        xs, ys = x[groups == g], y[groups == g]
        slope, intercept = np.polyfit(xs, ys, 1)
        ssr += float(np.sum((ys - slope * xs - intercept) ** 2))
        sxx[g], slopes[g] = float(np.sum((xs - xs.mean()) ** 2)), slope
    s2 = ssr / (12 - 4)
    for g in ("a", "b"):
        value, lo, hi = got[f"slope_of[{g}]"]
        assert value == pytest.approx(slopes[g])
        assert hi - value == pytest.approx(sps.t.ppf(0.975, 8) * math.sqrt(s2 / sxx[g]), rel=1e-9)
    duplicated = slope_regression(np.repeat(x, 3), np.repeat(y, 3), np.repeat(groups, 3), np.repeat(tasks, 3),
                                  factor="strategy")
    np.testing.assert_allclose(duplicated.value, fit.value)  # replicates are not extra cells
    np.testing.assert_allclose(duplicated.ci_high, fit.ci_high)


def test_slope_regression_bootstraps_over_tasks_with_enough_of_them() -> None:
    """Independent noise: the bootstrap intervals are about as wide as the OLS t-intervals of the same fit."""
    x, y, groups, tasks = _slope_data(12, 2, noise=0.1, seed=0)
    fit = slope_regression(x, y, groups, tasks, factor="strategy", n_boot=400, seed=0)
    ols_fit = slope_regression(x, y, groups, tasks, factor="strategy", min_clusters=13)
    assert fit.cluster_bootstrap and not ols_fit.cluster_bootstrap
    assert fit.n_clusters == 12 and fit.n_points == 48 and fit.n_cells == 24
    np.testing.assert_allclose(fit.value, ols_fit.value)
    for name, value, lo, hi, ols_lo, ols_hi in zip(fit.names, fit.value, fit.ci_low, fit.ci_high, ols_fit.ci_low,
                                                   ols_fit.ci_high):
        assert value == pytest.approx(TRUE[name], abs=0.3), name
        assert lo <= value <= hi, name
        assert 0.5 < (hi - lo) / (ols_hi - ols_lo) < 2.0, name
    single = np.isin(tasks, ["t0"]) | (groups == "a")  # b on one task only: no slope, left out
    part = slope_regression(x[single], y[single], groups[single], tasks[single], factor="strategy", n_boot=100)
    assert part.names == ("intercept", "slope", "slope_of[a]")


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
