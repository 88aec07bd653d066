"""Statistics of robustness distributions: quantiles with bootstrap confidence intervals, paired strategy
comparisons (Wilcoxon signed-rank, rank-biserial effect size, Holm correction), rank correlation with confidence
intervals, and a log-normal goodness-of-fit.

Everything here works on plain arrays; :mod:`robverify.analysis.report` applies it per (strategy, task).
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
    "N_BOOT",
    "LogNormalFit",
    "PairedComparison",
    "RankCorrelation",
    "bootstrap_ci",
    "holm",
    "lognormal_fit",
    "paired_comparison",
    "quantile",
    "quantile_ci",
    "rank_biserial",
    "spearman",
]

N_BOOT = 2000
CONFIDENCE = 0.95


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
