"""Statistics of robustness distributions: quantiles with bootstrap confidence intervals, a two-stage cluster
bootstrap (target tasks, then replicate runs within), paired strategy comparisons (Wilcoxon signed-rank,
rank-biserial effect size, Holm correction), rank correlation with confidence intervals, a least-squares
regression with a factor, a slope and factor-specific slopes, and a log-normal goodness-of-fit.

Everything here works on plain arrays; :mod:`robverify.analysis.summary` applies it per (strategy, task).
The *certified radius* of a sample is its ``eps_lo`` if the model classifies it correctly and 0 otherwise.
Bootstraps are seeded percentile bootstraps (``N_BOOT`` resamples).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

__all__ = [
    "CONFIDENCE",
    "MIN_CLUSTERS",
    "N_BOOT",
    "LogNormalFit",
    "OLSFit",
    "PairedComparison",
    "RankCorrelation",
    "SlopeRegression",
    "bootstrap_ci",
    "cluster_bootstrap",
    "cluster_bootstrap_ci",
    "holm",
    "mean_of_cluster_means",
    "ols",
    "slope_regression",
    "lognormal_fit",
    "paired_comparison",
    "quantile",
    "quantile_ci",
    "rank_biserial",
    "spearman",
]

N_BOOT = 2000
CONFIDENCE = 0.95
#: fewest clusters (target tasks) for which :func:`slope_regression` bootstraps its intervals (else OLS errors)
MIN_CLUSTERS = 8


def quantile(values: np.ndarray, q: float) -> float:
    """The ``q`` quantile (linear interpolation) of values [N] that may hold ``inf``: any weight on an infinite
    value makes the quantile infinite. NaN for an empty array."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan
    return float(_quantiles(v[None, :], q)[0])


def _quantiles(samples: np.ndarray, q: float) -> np.ndarray:
    """Row-wise ``q`` quantile of samples [B, N] with ``inf`` handled as :func:`quantile` says."""
    finite = samples[np.isfinite(samples)]
    top = float(np.max(np.abs(finite))) if finite.size else 0.0
    sentinel = 1e300
    out = np.quantile(np.where(np.isinf(samples), sentinel, samples), q, axis=1)
    return np.where(out > top * (1 + 1e-12) + 1e-300, np.inf, out) if np.isinf(samples).any() else out


def bootstrap_ci(values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], *, n_boot: int = N_BOOT,
                 level: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic`` over values [N].

    ``statistic`` maps resamples [B, N] to B numbers (vectorised). Returns (NaN, NaN) for fewer than 2 values.
    """
    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    boots = np.asarray(statistic(v[rng.integers(0, v.size, size=(n_boot, v.size))]), dtype=float)
    return _percentile_interval(boots, level)


def _percentile_interval(boots: np.ndarray, level: float) -> tuple[float, float]:
    boots = boots[~np.isnan(boots)]
    if boots.size == 0:
        return math.nan, math.nan
    alpha = (1 - level) / 2
    lo = quantile(boots, alpha)
    hi = quantile(boots, 1 - alpha)
    return lo, hi


def quantile_ci(values: np.ndarray, q: float, *, n_boot: int = N_BOOT, level: float = CONFIDENCE,
                seed: int = 0) -> tuple[float, float, float]:
    """(quantile, CI low, CI high) of values [N] (``inf`` allowed), percentile bootstrap."""
    lo, hi = bootstrap_ci(values, lambda s: _quantiles(s, q), n_boot=n_boot, level=level, seed=seed)
    return quantile(values, q), lo, hi


# ---------------------------------------------------------------------------------------------------------------
# cluster bootstrap


def _cluster_codes(clusters: np.ndarray) -> np.ndarray:
    """Cluster labels [N] -> codes 0..C-1 numbered in order of first appearance."""
    _, first, inverse = np.unique(np.asarray(clusters), return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


def cluster_bootstrap(values: np.ndarray, clusters: np.ndarray,
                      statistic: Callable[[np.ndarray, np.ndarray], float | np.ndarray], *,
                      strata: np.ndarray | None = None, within: bool = True, n_boot: int = N_BOOT,
                      seed: int = 0) -> np.ndarray:
    """Two-stage bootstrap replicates [B, ...] of ``statistic(values, cluster_ids)`` for values [N] in clusters [N].

    Stage 1 draws C clusters with replacement out of the C present (all B rows at once, as :func:`bootstrap_ci`
    draws values: with singleton clusters both draw the same resamples from the same seed). Stage 2 (``within``)
    resamples the members of each drawn cluster with replacement, separately within each of its ``strata`` [N]
    (e.g. replicate runs within one (task, strategy) cell). ``cluster_ids`` number the drawn copies 0..C-1, so a
    cluster drawn twice counts as two clusters.
    """
    v = np.asarray(values)
    codes = _cluster_codes(clusters)
    if v.shape[:1] != codes.shape:
        raise ValueError(f"cluster_bootstrap: expected values and clusters of one length, got {v.shape}, {codes.shape}")
    strata_codes = np.zeros(codes.size, dtype=np.int64) if strata is None else _cluster_codes(strata)
    n_clusters = int(codes.max()) + 1 if codes.size else 0
    cells = [[np.flatnonzero((codes == c) & (strata_codes == s)) for s in np.unique(strata_codes[codes == c])]
             for c in range(n_clusters)]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_clusters, size=(n_boot, n_clusters))
    out = []
    for row in draws:
        parts, ids = [], []
        for new_id, c in enumerate(row):
            for members in cells[c]:
                picked = members[rng.integers(0, members.size, members.size)] if within and members.size > 1 \
                    else members
                parts.append(picked)
                ids.append(np.full(picked.size, new_id))
        idx = np.concatenate(parts)
        out.append(statistic(v[idx], np.concatenate(ids)))
    return np.asarray(out, dtype=float)


def cluster_bootstrap_ci(values: np.ndarray, clusters: np.ndarray,
                         statistic: Callable[[np.ndarray, np.ndarray], float], *, strata: np.ndarray | None = None,
                         within: bool = True, n_boot: int = N_BOOT, level: float = CONFIDENCE,
                         seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``statistic(values, cluster_ids)`` under :func:`cluster_bootstrap` of values [N] in
    clusters [N] (resample the clusters, then their members). (NaN, NaN) for fewer than 2 clusters."""
    if np.unique(np.asarray(clusters)).size < 2:
        return math.nan, math.nan
    boots = cluster_bootstrap(values, clusters, statistic, strata=strata, within=within, n_boot=n_boot, seed=seed)
    return _percentile_interval(boots, level)


def mean_of_cluster_means(values: np.ndarray, clusters: np.ndarray) -> float:
    """The mean over clusters of the mean of each cluster's values [N] (each cluster weighs the same)."""
    codes = _cluster_codes(clusters)
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return math.nan
    return float(np.mean(np.bincount(codes, weights=v) / np.bincount(codes)))


# ---------------------------------------------------------------------------------------------------------------
# least squares with a factor and factor-specific slopes


@dataclass(frozen=True)
class OLSFit:
    """Ordinary least squares ``y = X b + e``: coefficients [P], their classical covariance
    ``s^2 (X^T X)^-1`` [P, P] (NaN when ``dof`` = N - P is 0) and the residual degrees of freedom."""

    coef: np.ndarray
    cov: np.ndarray
    dof: int


def ols(design: np.ndarray, y: np.ndarray) -> OLSFit | None:
    """OLS of y [N] on design [N, P]; None where the design is rank deficient."""
    x = np.asarray(design, dtype=float)
    t = np.asarray(y, dtype=float)
    n, p = x.shape
    if n < p or np.linalg.matrix_rank(x) < p:
        return None
    coef, *_ = np.linalg.lstsq(x, t, rcond=None)
    dof = n - p
    if dof == 0:
        return OLSFit(coef, np.full((p, p), math.nan), 0)
    s2 = float(np.sum((t - x @ coef) ** 2)) / dof
    return OLSFit(coef, s2 * np.linalg.inv(x.T @ x), dof)


@dataclass(frozen=True)
class SlopeRegression:
    """``y = a + a_g + (b + b_g) x`` over (cluster, group) cells, treatment-coded against ``reference``.

    ``names`` [Q]: ``intercept``, ``<factor>[g]`` (a_g), ``slope`` (b, the reference group's slope),
    ``slope:<factor>[g]`` (b_g), then ``slope_of[g]`` (b + b_g) for every group; ``value`` / ``ci_low`` /
    ``ci_high`` [Q]. ``cluster_bootstrap``: intervals from :func:`cluster_bootstrap` (else OLS t-intervals).
    """

    names: tuple[str, ...]
    value: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    reference: str
    n_cells: int
    n_clusters: int
    n_points: int
    cluster_bootstrap: bool


def _cell_means(x: np.ndarray, y: np.ndarray, groups: np.ndarray, clusters: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean x and y per (cluster, group) cell: (x [M], y [M], group of each cell [M])."""
    key = np.char.add(np.char.add(np.asarray(clusters).astype(str), "\x1f"), np.asarray(groups).astype(str))
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    count = np.bincount(inverse)
    return np.bincount(inverse, weights=x) / count, np.bincount(inverse, weights=y) / count, groups[first]


def _slope_design(x: np.ndarray, groups: np.ndarray, levels: Sequence[str]) -> np.ndarray:
    """[M, 2L] design: intercept, indicators of levels[1:], x, x times the indicators."""
    dummies = np.stack([groups == g for g in levels[1:]], axis=1).astype(float) if len(levels) > 1 \
        else np.zeros((x.size, 0))
    return np.column_stack([np.ones_like(x), dummies, x, x[:, None] * dummies])


def _slope_contrasts(levels: Sequence[str]) -> np.ndarray:
    """[2L + L, 2L]: the coefficients themselves, then each level's slope b + b_g."""
    p = 2 * len(levels)
    per_group = np.zeros((len(levels), p))
    per_group[:, len(levels)] = 1.0
    for i in range(1, len(levels)):
        per_group[i, len(levels) + i] = 1.0
    return np.vstack([np.eye(p), per_group])


def slope_regression(x: np.ndarray, y: np.ndarray, groups: np.ndarray, clusters: np.ndarray, *,
                     factor: str = "group", min_clusters: int = MIN_CLUSTERS, n_boot: int = N_BOOT,
                     level: float = CONFIDENCE, seed: int = 0) -> SlopeRegression | None:
    """OLS of y on x with a group factor and group-specific slopes, over points x [N], y [N] (e.g. replicate runs)
    in groups [N] (strategies) and clusters [N] (target tasks).

    Points are first averaged per (cluster, group) cell, so replicates do not count as independent cells. Groups
    with fewer than two distinct cell x values (no slope to fit) are left out; the reference group is the first
    of the rest in sorted order. Intervals: with at least ``min_clusters`` clusters a :func:`cluster_bootstrap`
    (clusters, then points within each cell; resamples whose design is rank deficient are dropped, and the
    interval is NaN if more than half are), else the classical OLS t-intervals of the cell fit (NaN without
    residual degrees of freedom). None where nothing can be fitted.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    groups = np.asarray(groups).astype(str)[keep]
    clusters = np.asarray(clusters).astype(str)[keep]
    cx, cy, cg = _cell_means(x, y, groups, clusters)
    levels = sorted(g for g in set(cg) if np.unique(cx[cg == g]).size >= 2)
    if not levels:
        return None
    used = np.isin(groups, levels)
    x, y, groups, clusters = x[used], y[used], groups[used], clusters[used]
    cx, cy, cg = _cell_means(x, y, groups, clusters)
    contrasts = _slope_contrasts(levels)
    fit = ols(_slope_design(cx, cg, levels), cy)
    if fit is None:
        return None
    estimate = contrasts @ fit.coef
    n_clusters = int(np.unique(clusters).size)
    bootstrapped = n_clusters >= min_clusters
    if bootstrapped:
        lo, hi = _bootstrap_slopes(x, y, groups, clusters, levels, contrasts, n_boot=n_boot, level=level, seed=seed)
    elif fit.dof > 0:
        se = np.sqrt(np.einsum("qp,pr,qr->q", contrasts, fit.cov, contrasts))
        half = sps.t.ppf(1 - (1 - level) / 2, fit.dof) * se
        lo, hi = estimate - half, estimate + half
    else:
        lo = hi = np.full(estimate.size, math.nan)
    names = (["intercept"] + [f"{factor}[{g}]" for g in levels[1:]] + ["slope"]
             + [f"slope:{factor}[{g}]" for g in levels[1:]] + [f"slope_of[{g}]" for g in levels])
    return SlopeRegression(tuple(names), estimate, np.asarray(lo), np.asarray(hi), levels[0], int(cx.size),
                           n_clusters, int(x.size), bootstrapped)


def _bootstrap_slopes(x: np.ndarray, y: np.ndarray, groups: np.ndarray, clusters: np.ndarray, levels: list[str],
                      contrasts: np.ndarray, *, n_boot: int, level: float, seed: int
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals [Q] of the contrasts under the cluster bootstrap (clusters, then points per cell)."""

    def statistic(idx: np.ndarray, ids: np.ndarray) -> np.ndarray:
        bx, by, bg = _cell_means(x[idx], y[idx], groups[idx], ids)
        fit = ols(_slope_design(bx, bg, levels), by)
        return np.full(contrasts.shape[0], math.nan) if fit is None else contrasts @ fit.coef

    boots = cluster_bootstrap(np.arange(x.size), clusters, statistic, strata=groups, n_boot=n_boot, seed=seed)
    valid = ~np.isnan(boots).any(axis=1)
    if valid.sum() < n_boot / 2:
        nan = np.full(contrasts.shape[0], math.nan)
        return nan, nan
    intervals = [_percentile_interval(column, level) for column in boots[valid].T]
    return np.array([i[0] for i in intervals]), np.array([i[1] for i in intervals])


# ---------------------------------------------------------------------------------------------------------------
# paired comparisons


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values [M] (NaN entries stay NaN and do not count)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    running = 0.0
    for rank, i in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def rank_biserial(a: np.ndarray, b: np.ndarray) -> float:
    """Matched-pairs rank-biserial correlation of a [N] vs b [N]: ``(W+ - W-) / (W+ + W-)`` with W+- the sums of
    the (average) ranks of ``|a - b|`` over the pairs where a > b (a < b); ties a == b are dropped. In [-1, 1];
    0 when every pair ties."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = sps.rankdata(np.abs(d))
    plus, minus = ranks[d > 0].sum(), ranks[d < 0].sum()
    return float((plus - minus) / (plus + minus))


@dataclass(frozen=True)
class PairedComparison:
    """Strategy a vs b on the same N samples (certified radii)."""

    n: int
    median_a: float
    median_b: float
    median_diff: float  # median(a) - median(b)
    diff_ci_low: float
    diff_ci_high: float
    ratio: float  # median(a) / median(b); NaN where median(b) == 0
    ratio_ci_low: float
    ratio_ci_high: float
    wilcoxon_stat: float
    p_value: float  # two-sided Wilcoxon signed-rank; 1 when every pair ties
    effect: float  # matched-pairs rank-biserial correlation, > 0 where a is larger

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def paired_comparison(a: np.ndarray, b: np.ndarray, *, n_boot: int = N_BOOT, level: float = CONFIDENCE,
                      seed: int = 0) -> PairedComparison:
    """Compare paired values a [N], b [N] (the same samples under two strategies): medians, their difference
    and ratio with paired bootstrap intervals, the Wilcoxon signed-rank test and the rank-biserial effect."""
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_comparison: expected two arrays [N] of the same length, got {a.shape}, {b.shape}")
    med_a, med_b = float(np.median(a)), float(np.median(b))
    ratio = med_a / med_b if med_b > 0 else math.nan
    diff_ci = ratio_ci = (math.nan, math.nan)
    if a.size >= 2:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, a.size, size=(n_boot, a.size))
        boot_a, boot_b = np.median(a[idx], axis=1), np.median(b[idx], axis=1)
        diff_ci = _percentile_interval(boot_a - boot_b, level)
        if med_b > 0:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = np.where(boot_b > 0, boot_a / np.where(boot_b > 0, boot_b, 1.0), np.inf)
            ratio_ci = _percentile_interval(ratios, level)
    if np.all(a == b):
        stat, p = 0.0, 1.0
    else:
        result = sps.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        stat, p = float(result.statistic), float(result.pvalue)
    return PairedComparison(int(a.size), med_a, med_b, med_a - med_b, *diff_ci, ratio, *ratio_ci, stat, p,
                            rank_biserial(a, b))


# ---------------------------------------------------------------------------------------------------------------
# rank correlation


@dataclass(frozen=True)
class RankCorrelation:
    """Spearman's rho over N points with a Fisher-z interval (Bonett-Wright standard error; needs N >= 4)."""

    n: int
    rho: float
    ci_low: float
    ci_high: float
    p_value: float


def spearman(x: np.ndarray, y: np.ndarray, *, level: float = CONFIDENCE) -> RankCorrelation:
    """Spearman rank correlation of x [N] and y [N]; rho NaN where either is constant, interval NaN for N < 4.

    Interval: ``tanh(atanh(rho) +- z * sqrt((1 + rho^2 / 2) / (N - 3)))`` (Bonett & Wright 2000)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = int(x.size)
    if n < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return RankCorrelation(n, math.nan, math.nan, math.nan, math.nan)
    result = sps.spearmanr(x, y)
    rho, p = float(result.statistic), float(result.pvalue)
    lo = hi = math.nan
    if n >= 4:
        z = sps.norm.ppf(1 - (1 - level) / 2)
        centre = math.atanh(max(min(rho, 1 - 1e-12), -1 + 1e-12))
        half = z * math.sqrt((1 + rho**2 / 2) / (n - 3))
        lo, hi = math.tanh(centre - half), math.tanh(centre + half)
    return RankCorrelation(n, rho, lo, hi, p)


# ---------------------------------------------------------------------------------------------------------------
# log-normal goodness of fit


@dataclass(frozen=True)
class LogNormalFit:
    """Log-normal fit of the positive values: ``log v ~ N(mu, sigma^2)``; Shapiro-Wilk on ``log v`` (parameters
    estimated, so this is the exact test of log-normality) and the Kolmogorov-Smirnov distance to the fit."""

    n: int  # positive values fitted
    n_zero: int  # values <= 0 left out (a log-normal has no mass there)
    mu: float
    sigma: float
    shapiro_p: float  # NaN for n < 3 or constant values
    ks_stat: float


def lognormal_fit(values: np.ndarray) -> LogNormalFit:
    """Fit a log-normal to the positive finite values [N]."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    positive = v[v > 0]
    n_zero = int(v.size - positive.size)
    if positive.size == 0:
        return LogNormalFit(0, n_zero, math.nan, math.nan, math.nan, math.nan)
    logs = np.log(positive)
    mu, sigma = float(logs.mean()), float(logs.std(ddof=1)) if positive.size > 1 else 0.0
    shapiro_p = ks = math.nan
    if positive.size >= 3 and sigma > 0:
        shapiro_p = float(sps.shapiro(logs).pvalue)
        ks = float(sps.kstest(logs, "norm", args=(mu, sigma)).statistic)
    return LogNormalFit(int(positive.size), n_zero, mu, sigma, shapiro_p, ks)
