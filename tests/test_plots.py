"""Robustness distributions, certified-accuracy curves and the data behind their figures."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from robverify.analysis.distribution import (
    CURVE_COLUMNS,
    certified_accuracy_curve,
    robustness_distribution,
    series_labels,
    summary_statistics,
)
from robverify.analysis.plots import plot_certified_accuracy, plot_ecdf
from robverify.errors import RobverifyError

INF = np.inf
# Two models with different brackets. Row 0 of "a" is misclassified but carries a large eps_lo on purpose: it
# must never count as certified. Model "b" is much more robust than "a"; pooling would show.
ROWS = [
    # model, sample_id, label, pred, eps_lo, eps_hi, status
    ("a", 0, 1, 2, 0.50, 0.60, "misclassified"),
    ("a", 1, 0, 0, 0.010, 0.020, "tol"),
    ("a", 2, 3, 3, 0.030, INF, "tol"),
    ("a", 3, 2, 2, 0.000, 0.005, "tol"),
    ("a", 4, 4, 4, 0.020, 0.040, "tol"),
    ("b", 0, 1, 1, 0.080, 0.120, "tol"),
    ("b", 1, 0, 0, 0.060, INF, "tol"),
    ("b", 2, 3, 3, 0.100, INF, "tol"),
]


def table(rows=ROWS, backend: str = "native", method: str = "crown") -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["model", "sample_id", "label", "pred", "eps_lo", "eps_hi", "status"])
    return df.assign(
        run_id="r", backend=backend, method=method, task="mnist5k[0-4]", time_s=0.1, n_calls=5
    )


def correct_rows(df: pd.DataFrame, model: str) -> pd.DataFrame:
    return df[(df["model"] == model) & (df["status"] != "misclassified")]


# ---------------------------------------------------------------------------------------------------------------
# distribution


@pytest.mark.parametrize("eps", [0.0, 0.005, 0.01, 0.015, 0.03, 0.08, 0.1, 0.55])
def test_certified_accuracy_matches_independent_count(eps: float) -> None:
    df = table()
    curve = certified_accuracy_curve(df, eps=[eps])
    assert list(curve.columns) == CURVE_COLUMNS
    for model in ("a", "b"):
        rows = [r for r in ROWS if r[0] == model]
        certified = sum(1 for r in rows if r[6] != "misclassified" and r[4] >= eps) / len(rows)
        falsified = sum(1 for r in rows if r[6] == "misclassified" or r[5] <= eps) / len(rows)
        got = curve[curve["model"] == model].iloc[0]
        assert got["eps"] == eps and got["n"] == len(rows)
        assert got["certified_acc"] == pytest.approx(certified)
        assert got["falsified_frac"] == pytest.approx(falsified)
        assert got["unknown_frac"] == pytest.approx(1 - certified - falsified)
    # The misclassified row of "a" (eps_lo = 0.5) is never certified: at eps 0, certified = clean accuracy 4/5.
    assert certified_accuracy_curve(df, eps=[0.0]).query("model == 'a'")["certified_acc"].item() == 0.8


def test_certified_accuracy_default_grid() -> None:
    curve = certified_accuracy_curve(table())
    for _, part in curve.groupby("model"):
        assert len(part) == 101
        np.testing.assert_allclose(part["eps"].to_numpy(), np.linspace(0, 0.6, 101))  # max finite bound is 0.6
        assert np.all(np.diff(part["certified_acc"]) <= 0) and np.all(np.diff(part["falsified_frac"]) >= 0)


def test_certified_accuracy_from_certify_table() -> None:
    df = pd.DataFrame(
        {
            "model": "a", "backend": "native", "method": "ibp", "sample_id": [0, 1, 2, 3] * 2,
            "label": 1, "pred": [1, 1, 1, 0] * 2,
            "eps": [0.01] * 4 + [0.02] * 4,
            "verdict": ["verified", "verified", "falsified", "misclassified",
                        "verified", "unknown", "falsified", "misclassified"],
        }
    )
    curve = certified_accuracy_curve(df)
    assert curve["eps"].tolist() == [0.01, 0.02]
    assert curve["certified_acc"].tolist() == [0.5, 0.25]
    assert curve["falsified_frac"].tolist() == [0.5, 0.5]
    assert curve["unknown_frac"].tolist() == [0.0, 0.25]
    with pytest.raises(RobverifyError, match="not in the certify table"):
        certified_accuracy_curve(df, eps=[0.03])


def test_robustness_distribution_is_per_model() -> None:
    df = table()
    dist = robustness_distribution(df)
    assert sorted(dist) == ["a", "b"]
    for model, (lo, hi) in dist.items():
        rows = correct_rows(df, model)
        np.testing.assert_array_equal(lo, np.sort(rows["eps_lo"].to_numpy()))
        np.testing.assert_array_equal(hi, np.sort(rows["eps_hi"].to_numpy()))
    assert 0.5 not in dist["a"][0]  # the misclassified sample is not part of the distribution


def test_series_are_split_by_method_when_a_model_has_several() -> None:
    df = pd.concat([table(method="crown"), table(method="ibp")], ignore_index=True)
    assert set(series_labels(df)) == {"a (native/crown)", "a (native/ibp)", "b (native/crown)", "b (native/ibp)"}
    dist = robustness_distribution(df)
    assert len(dist["a (native/ibp)"][0]) == 4  # not 8: the two methods are not pooled


def test_summary_statistics() -> None:
    stats = summary_statistics(table()).set_index("model")
    a = stats.loc["a"]
    assert (a["n"], a["n_correct"], a["clean_acc"]) == (5, 4, 0.8)
    assert a["median_eps_lo"] == pytest.approx(0.015) and a["mean_eps_lo"] == pytest.approx(0.015)
    assert a["n_falsified"] == 3 and a["median_eps_hi"] == pytest.approx(0.02)
    assert a["mean_gap"] == pytest.approx(np.mean([0.01, 0.005, 0.02]))
    b = stats.loc["b"]
    assert b["n_falsified"] == 1 and b["median_eps_hi"] == pytest.approx(0.12)


def test_contradictory_bracket_is_refused() -> None:
    bad = table([("a", 0, 1, 1, 0.03, 0.02, "tol")])
    with pytest.raises(RobverifyError, match="eps_lo >= eps_hi"):
        certified_accuracy_curve(bad)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(0, 1, allow_nan=False), st.floats(1e-6, 1, allow_nan=False), st.booleans(), st.booleans()
        ),
        min_size=1,
        max_size=30,
    )
)
def test_curve_invariants(samples: list[tuple[float, float, bool, bool]]) -> None:
    rows = [
        ("m", i, 0, 0 if ok else 1, lo, (lo + gap) if falsified else INF, "tol" if ok else "misclassified")
        for i, (lo, gap, falsified, ok) in enumerate(samples)
    ]
    curve = certified_accuracy_curve(table(rows))
    parts = curve[["certified_acc", "falsified_frac", "unknown_frac"]]
    assert (parts >= 0).all().all()
    np.testing.assert_allclose(parts.sum(axis=1), 1.0)
    assert np.all(np.diff(curve["certified_acc"]) <= 0) and np.all(np.diff(curve["falsified_frac"]) >= 0)


# ---------------------------------------------------------------------------------------------------------------
# plots: test the data behind the figure


def test_ecdf_lines_are_each_models_own_data(tmp_path: Path) -> None:
    df = table()
    drawn = plot_ecdf(df, tmp_path, name="ecdf")
    assert sorted(drawn) == ["a", "b"]
    pooled = np.sort(df.loc[df["status"] != "misclassified", "eps_lo"].to_numpy())
    for model, data in drawn.items():
        rows = correct_rows(df, model)
        n = len(rows)
        lo = np.sort(rows["eps_lo"].to_numpy())
        hi = np.sort(rows["eps_hi"].to_numpy())
        hi = hi[np.isfinite(hi)]
        np.testing.assert_array_equal(data["lo_x"], lo)
        np.testing.assert_array_equal(data["lo_y"], np.arange(1, n + 1) / n)
        np.testing.assert_array_equal(data["hi_x"], hi)  # never-falsified samples are not drawn ...
        np.testing.assert_array_equal(data["hi_y"], np.arange(1, hi.size + 1) / n)  # ... but stay in n
        assert len(data["lo_x"]) != len(pooled)
    assert not np.array_equal(drawn["a"]["lo_x"], drawn["b"]["lo_x"])
    for ext, magic in (("png", b"\x89PNG"), ("svg", b"<?xml")):
        path = tmp_path / f"ecdf.{ext}"
        assert path.is_file() and path.read_bytes().startswith(magic)


def test_certified_accuracy_plot_draws_the_curve(tmp_path: Path) -> None:
    curve = certified_accuracy_curve(table(), eps=[0.0, 0.01, 0.02, 0.05, 0.1])
    drawn = plot_certified_accuracy(curve, tmp_path / "figs")
    assert sorted(drawn) == ["a", "b"]
    for model, data in drawn.items():
        part = curve[curve["model"] == model]
        np.testing.assert_array_equal(data["lo_x"], part["eps"].to_numpy())
        np.testing.assert_array_equal(data["lo_y"], part["certified_acc"].to_numpy())
        np.testing.assert_array_equal(data["hi_y"], 1 - part["falsified_frac"].to_numpy())
    assert (tmp_path / "figs" / "certified_accuracy.png").is_file()
    assert (tmp_path / "figs" / "certified_accuracy.svg").is_file()


def test_plotting_changes_no_global_state(tmp_path: Path) -> None:
    before = dict(matplotlib.rcParams)
    backend = matplotlib.get_backend()
    plot_ecdf(table(), tmp_path)
    assert matplotlib.get_backend() == backend
    after = dict(matplotlib.rcParams)
    assert {k for k in before if before[k] != after[k]} == set()


def test_ecdf_of_a_model_without_correct_samples(tmp_path: Path) -> None:
    drawn = plot_ecdf(table([("z", 0, 1, 0, 0.0, 0.0, "misclassified")]), tmp_path)
    assert drawn["z"]["lo_x"].size == 0 and drawn["z"]["hi_x"].size == 0


def test_figures_ignore_a_global_theme_set_by_another_library(tmp_path):
    """ada_verona calls ``sns.set_theme`` when imported: robverify's figures must not change with it."""
    import matplotlib
    import seaborn as sns

    from robverify.analysis.plots import draw_run_figures

    table = pd.DataFrame({"run_id": "r", "model": "m", "backend": "native", "method": "crown", "task": "t",
                          "sample_id": range(6), "label": 0, "pred": 0, "time_s": 0.1,
                          "eps_lo": [0.01, 0.02, 0.02, 0.03, 0.05, 0.0], "eps_hi": [0.02, 0.03, 0.04, float("inf"),
                                                                                  0.06, 0.01],
                          "status": "gap", "n_calls": 3})
    draw_run_figures(table, tmp_path / "plain")
    saved = dict(matplotlib.rcParams)
    try:
        sns.set_theme(rc={"figure.figsize": (11.7, 8.27)}, context="talk")
        draw_run_figures(table, tmp_path / "themed")
        assert matplotlib.rcParams["font.size"] != 10.0  # the global theme is left as the other library set it
    finally:
        matplotlib.rcParams.update(saved)
    for name in ("ecdf.png", "ecdf.svg", "certified_accuracy.png", "certified_accuracy.svg"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "themed" / name).read_bytes(), name
