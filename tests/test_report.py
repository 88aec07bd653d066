"""The strategies report: data behind the figures, numbers recomputable from summary.csv, replicate runs,
retention, correlations and the regression against independent computations, HTML in Chromium, and bad inputs of
`robverify compare`."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from typer.testing import CliRunner

from robverify.analysis.distribution import correctly_classified
from robverify.analysis.report import (
    compare_runs,
    fmt,
    read_summary,
    render_markdown,
    report_blocks,
    task_slug,
)
from robverify.analysis.statistics import holm
from robverify.analysis.strategy_plots import pareto_front
from robverify.cli import app
from robverify.errors import RobverifyError
from robverify.formats.model_card import ModelCard
from robverify.runs.schema import SWEEP_COLUMNS
from robverify.runs.rundir import RunDir

TASKS = {"mnist5k[5-9]": 1.0, "mnist5k[5-9]+rot90": 0.5}  # target task -> similarity (logme)
STRATEGIES = {"adv-ft": 0.04, "full-ft": 0.01, "linear-probe": 0.02}  # strategy -> median certified radius
SOURCE_RADIUS = 0.05  # the source model's median certified radius
N = 40


def sweep_table(strategy: str, task: str, ids: list[int], seed: int) -> pd.DataFrame:
    """Log-normal eps_lo around the strategy's median scaled by task similarity; eps_hi = 1.5 eps_lo, every
    fourth sample never falsified; samples with id % 7 == 3 misclassified."""
    rng = np.random.default_rng(seed)
    ids = np.asarray(ids)
    lo = STRATEGIES.get(strategy, SOURCE_RADIUS) * TASKS[task] * rng.lognormal(0.0, 0.4, size=ids.size)
    hi = np.where(ids % 4 == 0, np.inf, lo * 1.5)
    wrong = ids % 7 == 3
    return pd.DataFrame({
        "run_id": f"r-{strategy}", "model": "model", "backend": "native", "method": "crown", "task": task,
        "sample_id": ids, "label": ids % 5, "pred": np.where(wrong, (ids + 1) % 5, ids % 5), "time_s": 0.1,
        "eps_lo": np.where(wrong, 0.0, lo), "eps_hi": np.where(wrong, 0.0, hi),
        "status": np.where(wrong, "misclassified", "tol"), "n_calls": 6,
    }, columns=SWEEP_COLUMNS)


def make_run(root: Path, strategy: str, task: str, ids: list[int], seed: int, train_time: float = 10.0,
             search: dict | None = None, card_seed: int | None = None) -> Path:
    """A finished sweep run of a model with its card. ``card_seed``: the training seed of a replicate (the run
    directory is suffixed with it); strategy ``source``: the source model (a card without strategy)."""
    name = f"{strategy}-{task_slug(task)}" + ("" if card_seed is None else f"-s{card_seed}")
    model_dir = root / "models" / name
    model_dir.mkdir(parents=True)
    (model_dir / "model.onnx").write_bytes(b"not read by compare")
    transferred = strategy != "source"
    ModelCard(architecture={"arch": "cnn-small"}, task=task, source_task="mnist5k[0-4]" if transferred else None,
              strategy=strategy if transferred else None, seed=card_seed or 0,
              training={"method": "pgd", "eps": 0.02}, eps=0.02, train_time_s=train_time,
              # "cka": the representation-change CKA as older cards name it
              similarity={"logme": TASKS[task], "label_overlap": 0.0, "cka": 0.5 + seed / 100} if transferred else {}
              ).to_json(model_dir / "model.json")
    run_dir = root / "runs" / name
    run = RunDir.open(run_dir, "sweep-epsilon", {"model": str(model_dir / "model.onnx"), "task": task},
                      {"task": task, "strategy": strategy, **(search or {})}, key=["sample_id"])
    run.commit(sweep_table(strategy, task, ids, seed))
    run.finalize()
    return run_dir


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    root = tmp_path_factory.mktemp("study")
    runs = [make_run(root, s, t, list(range(N)), seed=i * 10 + j, train_time=5.0 * (i + 1))
            for i, s in enumerate(STRATEGIES) for j, t in enumerate(TASKS)]
    return runs, root


@pytest.fixture(scope="module")
def report(study):
    runs, root = study
    return compare_runs(runs, root / "report", seed=0)


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory):
    """adv-ft trained with two seeds on both tasks, full-ft once, and the source model swept on mnist5k[5-9]."""
    root = tmp_path_factory.mktemp("replicated")
    runs = [make_run(root, "adv-ft", t, list(range(N)), seed=10 * j + k, card_seed=k, train_time=20.0 + k)
            for j, t in enumerate(TASKS) for k in (0, 1)]
    runs += [make_run(root, "full-ft", t, list(range(N)), seed=50 + j, train_time=8.0) for j, t in enumerate(TASKS)]
    runs.append(make_run(root, "source", "mnist5k[5-9]", list(range(N)), seed=70, train_time=30.0))
    return runs, compare_runs(runs, root / "report", seed=0)


@pytest.fixture(params=["study", "replicated"])
def any_report(request, report, replicated):
    return report if request.param == "study" else replicated[1]


def rows(summary: pd.DataFrame, section: str, measure: str, **keys: str) -> pd.DataFrame:
    mask = (summary["section"] == section) & (summary["measure"] == measure)
    for column, wanted in keys.items():
        mask &= summary[column] == wanted
    return summary[mask]


def one(summary: pd.DataFrame, section: str, measure: str, **keys: str) -> pd.Series:
    found = rows(summary, section, measure, **keys)
    assert len(found) == 1, (section, measure, keys, len(found))
    return found.iloc[0]


def certified_radius(table: pd.DataFrame) -> pd.Series:
    """Per sample_id: eps_lo if correctly classified, else 0."""
    return pd.Series(np.where(table["pred"] == table["label"], table["eps_lo"], 0.0), index=table["sample_id"])


def correct_median(table: pd.DataFrame) -> float:
    return float(np.median(table.loc[table["pred"] == table["label"], "eps_lo"]))


def robverify_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robverify.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def run_table(run_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "results.parquet")


# ---------------------------------------------------------------------------------------------------------------
# data behind the figures


def test_each_ecdf_line_is_its_own_models_sorted_values(study, report) -> None:
    runs, _ = study
    for task in TASKS:
        drawn = report.figures[f"ecdf_{task_slug(task)}"]
        assert sorted(drawn) == sorted(STRATEGIES)
        for strategy, data in drawn.items():
            table = run_table(next(r for r in runs if r.name == f"{strategy}-{task_slug(task)}"))
            correct = table[correctly_classified(table).to_numpy()]
            np.testing.assert_array_equal(data["lo_x"], np.sort(correct["eps_lo"].to_numpy()))
            hi = np.sort(correct["eps_hi"].to_numpy())
            np.testing.assert_array_equal(data["hi_x"], hi[np.isfinite(hi)])
            np.testing.assert_allclose(data["lo_y"], np.arange(1, len(correct) + 1) / len(correct))


def test_certified_accuracy_is_the_fraction_with_eps_lo_at_least_eps(study, report) -> None:
    runs, _ = study
    summary = report.summary
    acc = summary[(summary["section"] == "accuracy") & (summary["measure"] == "certified_acc")]
    assert len(acc) > 0
    for _, row in acc.iterrows():
        table = run_table(next(r for r in runs if r.name == f"{row['strategy']}-{task_slug(row['task'])}"))
        correct = table["pred"] == table["label"]
        assert row["value"] == pytest.approx(float((correct & (table["eps_lo"] >= row["eps"])).mean()))
    for task in TASKS:  # and the drawn curve says the same at every drawn eps
        for strategy, data in report.figures[f"certified_accuracy_{task_slug(task)}"].items():
            table = run_table(next(r for r in runs if r.name == f"{strategy}-{task_slug(task)}"))
            correct = (table["pred"] == table["label"]).to_numpy()
            expected = [(correct & (table["eps_lo"].to_numpy() >= e)).mean() for e in data["lo_x"]]
            np.testing.assert_allclose(data["lo_y"], expected)


def test_radius_boxes_and_similarity_points(study, report) -> None:
    runs, _ = study
    boxes = report.figures["radius_by_strategy"]
    assert len(boxes) == len(STRATEGIES) * len(TASKS)
    for label, data in boxes.items():
        strategy, task = label.split(" | ")
        table = run_table(next(r for r in runs if r.name == f"{strategy}-{task_slug(task)}"))
        own = np.sort(table.loc[table["pred"] == table["label"], "eps_lo"].to_numpy())
        np.testing.assert_array_equal(data["values"], own)
        assert data["median"] == pytest.approx(np.median(own))
    points = report.figures["radius_vs_similarity"]["logme"]
    for strategy, data in points.items():
        assert sorted(data["x"]) == sorted(TASKS.values())
        medians = [np.median(run_table(next(r for r in runs if r.name == f"{strategy}-{task_slug(t)}"))
                             .query("pred == label")["eps_lo"]) for t in TASKS]
        assert sorted(data["y"]) == pytest.approx(sorted(medians))
        assert data["fit_x"].tolist() == [0.5, 1.0]
    assert report.figures["training_cost"]["full-ft | mnist5k[5-9]"] == 10.0


def test_pareto_front() -> None:
    x = np.array([0.9, 0.8, 0.7, 0.85, 0.6])
    y = np.array([0.1, 0.3, 0.3, 0.05, 0.5])
    assert pareto_front(x, y).tolist() == [True, True, False, False, True]


def test_figures_are_written_as_png_and_svg(report) -> None:
    for name in report.figures:
        assert (report.out / "figures" / f"{name}.png").read_bytes().startswith(b"\x89PNG")
        assert (report.out / "figures" / f"{name}.svg").is_file()


# ---------------------------------------------------------------------------------------------------------------
# numbers: summary.csv is the source of every number in report.md


def test_report_md_is_recomputable_from_summary_csv(any_report) -> None:
    report = any_report
    summary = read_summary(report.out / "summary.csv")
    assert render_markdown(report_blocks(summary)) == (report.out / "report.md").read_text()
    assert {"regression", "cost", "strategy", "replicate", "representation"} <= set(summary["section"])


def test_every_decimal_in_report_md_is_a_summary_number(any_report) -> None:
    report = any_report
    summary = read_summary(report.out / "summary.csv")
    known = {fmt(v) for column in ("value", "ci_low", "ci_high", "eps") for v in summary[column].tolist()}
    known |= set(summary.loc[summary["section"] == "search", "versus"])  # how the runs were swept, as recorded
    text = (report.out / "report.md").read_text()
    text = re.sub(r"\]\(figures/[^)]*\)", "]", text)  # figure file names
    for task in TASKS:
        text = text.replace(task, "TASK")
    numbers = re.findall(r"(?<![\w.])-?\d+\.\d+(?:e[-+]\d+)?", text)
    assert numbers, "the report quotes numbers"
    missing = sorted(set(numbers) - known)
    assert not missing, f"numbers in report.md that are not in summary.csv: {missing}"


def test_summary_values_match_independent_computation(study, report) -> None:
    runs, _ = study
    summary = report.summary
    a = run_table(next(r for r in runs if r.name == "adv-ft-mnist5k-5-9"))
    b = run_table(next(r for r in runs if r.name == "full-ft-mnist5k-5-9"))
    ra = np.where(a["pred"] == a["label"], a["eps_lo"], 0.0)
    rb = np.where(b["pred"] == b["label"], b["eps_lo"], 0.0)
    row = summary[(summary["section"] == "pairwise") & (summary["measure"] == "ratio") & (summary["strategy"] == "adv-ft")
                  & (summary["versus"] == "full-ft") & (summary["task"] == "mnist5k[5-9]")].iloc[0]
    assert row["value"] == pytest.approx(np.median(ra) / np.median(rb))
    assert row["ci_low"] <= row["value"] <= row["ci_high"] and row["n"] == N
    med = summary[(summary["section"] == "radius") & (summary["measure"] == "eps_lo_q50")
                  & (summary["strategy"] == "adv-ft") & (summary["task"] == "mnist5k[5-9]")].iloc[0]
    assert med["value"] == pytest.approx(np.median(a.loc[a["pred"] == a["label"], "eps_lo"]))
    text = (report.out / "report.md").read_text()
    assert f"On mnist5k[5-9], adv-ft keeps {fmt(row['value'])}x the median certified radius of full-ft" in text


# ---------------------------------------------------------------------------------------------------------------
# similarity, correlations, regression, cost


def test_representation_change_is_apart_from_task_similarity(report) -> None:
    """Old cards' ``cka`` is read as representation_change_cka, shown in its own section with its label, and
    takes no part in the correlations or the regression."""
    summary = report.summary
    cka = summary[summary["section"] == "representation"]
    assert set(cka["measure"]) == {"representation_change_cka"} and len(cka) == len(STRATEGIES) * len(TASKS)
    expected = {(s, t): 0.5 + (i * 10 + j) / 100 for i, s in enumerate(STRATEGIES) for j, t in enumerate(TASKS)}
    for _, r in cka.iterrows():
        assert r["value"] == pytest.approx(expected[(r["strategy"], r["task"])])
    assert "cka" not in set(summary.loc[summary["section"] == "similarity", "measure"])
    assert not summary["versus"].isin(["cka", "representation_change_cka"]).any()
    assert "representation_change_cka" not in report.figures["radius_vs_similarity"]
    text = (report.out / "report.md").read_text()
    assert "representation change (CKA between source and transferred features), not task similarity" in text


def test_correlations_pool_per_task_and_are_holm_adjusted(study, report) -> None:
    runs, _ = study
    summary = report.summary
    medians = {(s, t): correct_median(run_table(next(r for r in runs if r.name == f"{s}-{task_slug(t)}")))
               for s in STRATEGIES for t in TASKS}
    for strategy in STRATEGIES:
        rho = one(summary, "correlation", "spearman_rho", strategy=strategy, versus="logme")
        assert rho["n"] == len(TASKS) and math.isnan(rho["ci_low"])  # 2 points: no interval
        assert rho["value"] == pytest.approx(
            sps.spearmanr(list(TASKS.values()), [medians[(strategy, t)] for t in TASKS]).statistic)
    pooled = one(summary, "correlation", "spearman_rho", strategy="all", versus="logme")
    assert pooled["n"] == len(TASKS)  # one point per target task, not one per (strategy, task)
    family = summary[summary["section"].isin(["correlation", "cost"]) & (summary["measure"] == "spearman_p")]
    adjusted = summary[summary["section"].isin(["correlation", "cost"]) & (summary["measure"] == "spearman_p_holm")]
    np.testing.assert_array_equal(adjusted[["section", "strategy", "versus"]].to_numpy(),
                                  family[["section", "strategy", "versus"]].to_numpy())
    np.testing.assert_allclose(adjusted["value"].to_numpy(), holm(family["value"].to_numpy()), equal_nan=True)
    assert "too few points for an interval" in (report.out / "report.md").read_text()


def test_pooled_correlation_averages_strategies_per_task() -> None:
    from robverify.analysis.summary import _correlation_rows

    tasks = [f"t{i}" for i in range(5)]
    x = np.array([0.1, 0.4, 0.2, 0.9, 0.5])
    radius = {"a": [1.0, 4.0, 3.0, 5.0, 2.0], "b": [2.0, 1.0, 0.5, 3.0, 4.0]}
    summary = pd.DataFrame(
        [{"section": "radius", "strategy": s, "task": t, "measure": "eps_lo_q50", "value": radius[s][i]}
         for s in radius for i, t in enumerate(tasks)]
        + [{"section": "similarity", "strategy": s, "task": t, "measure": "m", "value": x[i]}
           for s in radius for i, t in enumerate(tasks)])
    got = {(r["strategy"], r["measure"]): r for r in _correlation_rows(summary)}
    means = (np.array(radius["a"]) + np.array(radius["b"])) / 2
    assert got[("all", "spearman_rho")]["n"] == 5
    assert got[("all", "spearman_rho")]["value"] == pytest.approx(sps.spearmanr(x, means).statistic)
    assert got[("all", "spearman_p")]["value"] == pytest.approx(sps.spearmanr(x, means).pvalue)


def test_regression_of_log_radius_on_similarity_and_strategy(study, report) -> None:
    """Three strategies on two tasks: the fit is saturated, so each strategy's slope is the line through its two
    points and its intercept that line at x = 0; no residual degrees of freedom, no interval."""
    runs, _ = study
    summary = report.summary
    log_median = {(s, t): math.log(correct_median(run_table(next(r for r in runs if r.name == f"{s}-{task_slug(t)}"))))
                  for s in STRATEGIES for t in TASKS}
    (t1, x1), (t2, x2) = TASKS.items()
    slope = {s: (log_median[(s, t1)] - log_median[(s, t2)]) / (x1 - x2) for s in STRATEGIES}
    for s in STRATEGIES:
        row = one(summary, "regression", f"slope_of[{s}]", strategy=s, versus="logme")
        assert row["value"] == pytest.approx(slope[s]) and math.isnan(row["ci_low"]) and row["n"] == 6
    reference = sorted(STRATEGIES)[0]
    assert one(summary, "regression", "intercept")["value"] == pytest.approx(log_median[(reference, t1)]
                                                                             - slope[reference] * x1)
    assert one(summary, "regression", "slope:strategy[full-ft]")["value"] == pytest.approx(
        slope["full-ft"] - slope[reference])
    assert one(summary, "regression", "n_tasks")["value"] == 2
    assert one(summary, "regression", "ci_cluster_bootstrap")["value"] == 0
    text = (report.out / "report.md").read_text()
    assert "OLS t-intervals (fewer than 8 target tasks" in text and "slope_of[adv-ft]" in text


def test_cost_correlation_and_its_figure(study, report) -> None:
    runs, _ = study
    summary = report.summary
    time = {s: 5.0 * (i + 1) for i, s in enumerate(STRATEGIES)}
    pairs = [(time[s], correct_median(run_table(next(r for r in runs if r.name == f"{s}-{task_slug(t)}"))))
             for s in STRATEGIES for t in TASKS]
    rho = one(summary, "cost", "spearman_rho", versus="train_time_s")
    expected = sps.spearmanr(*zip(*pairs))
    assert rho["value"] == pytest.approx(expected.statistic) and rho["n"] == len(pairs)
    assert one(summary, "cost", "spearman_p")["value"] == pytest.approx(expected.pvalue)
    drawn = report.figures["cost_vs_radius"]
    assert sorted(drawn) == sorted(STRATEGIES)
    for strategy, data in drawn.items():
        assert data["x"].tolist() == [time[strategy]] * len(TASKS)
        assert sorted(data["y"]) == pytest.approx(sorted(m for (t_, m) in pairs if t_ == time[strategy]))


# ---------------------------------------------------------------------------------------------------------------
# replicate runs (training seeds) and retention


def test_replicates_are_loaded_and_aggregated_over_tasks_as_clusters(replicated) -> None:
    runs, report = replicated
    summary = report.summary
    tables = {r.name: run_table(r) for r in runs}
    assert one(summary, "entry", "n_replicates", strategy="adv-ft", task="mnist5k[5-9]")["value"] == 2
    assert one(summary, "entry", "n", strategy="adv-ft", task="mnist5k[5-9]")["value"] == 2 * N  # pooled samples
    per_task = []
    for t in TASKS:
        replicate_medians = []
        for k in (0, 1):
            median = correct_median(tables[f"adv-ft-{task_slug(t)}-s{k}"])
            row = one(summary, "replicate", "eps_lo_q50", strategy="adv-ft", task=t, versus=str(k))
            assert row["value"] == pytest.approx(median)
            replicate_medians.append(median)
        per_task.append(np.mean(replicate_medians))
    aggregate = one(summary, "strategy", "eps_lo_q50_mean", strategy="adv-ft")
    assert aggregate["value"] == pytest.approx(np.mean(per_task)) and aggregate["n"] == len(TASKS)
    assert aggregate["ci_low"] <= aggregate["value"] <= aggregate["ci_high"]
    assert one(summary, "strategy", "n_runs", strategy="adv-ft")["value"] == 4
    train = one(summary, "entry", "train_time_s", strategy="adv-ft", task="mnist5k[5-9]")
    assert train["value"] == pytest.approx(20.5)  # the mean over the replicates


def test_pairwise_and_retention_use_the_per_sample_mean_over_replicates(replicated) -> None:
    runs, report = replicated
    summary = report.summary
    tables = {r.name: run_table(r) for r in runs}
    adv = (certified_radius(tables["adv-ft-mnist5k-5-9-s0"]) + certified_radius(tables["adv-ft-mnist5k-5-9-s1"])) / 2
    source = certified_radius(tables["source-mnist5k-5-9"])
    full = certified_radius(tables["full-ft-mnist5k-5-9"])
    pair = one(summary, "pairwise", "median_a", strategy="adv-ft", task="mnist5k[5-9]", versus="full-ft")
    assert pair["value"] == pytest.approx(np.median(adv))
    for strategy, radius in (("adv-ft", adv), ("full-ft", full)):
        kept = one(summary, "retention", "retention", strategy=strategy, task="mnist5k[5-9]", versus="source")
        assert kept["value"] == pytest.approx(np.median(radius) / np.median(source)) and kept["n"] == N
        assert kept["ci_low"] <= kept["value"] <= kept["ci_high"]
    assert rows(summary, "retention", "retention", task="mnist5k[5-9]+rot90").empty  # no source run there
    text = (report.out / "report.md").read_text()
    assert "Retention of the source model's certified radius" in text


def test_runs_of_one_entry_with_the_same_training_seed_are_refused(tmp_path: Path) -> None:
    a = make_run(tmp_path / "a", "adv-ft", "mnist5k[5-9]", list(range(N)), seed=1, card_seed=3)
    b = make_run(tmp_path / "b", "adv-ft", "mnist5k[5-9]", list(range(N)), seed=2, card_seed=3)
    with pytest.raises(RobverifyError, match="training seed 3"):
        compare_runs([a, b], tmp_path / "report")


def test_headline_table(report) -> None:
    head = report.headline
    assert list(head["task"].unique()) == sorted(TASKS)
    first = head[head["task"] == "mnist5k[5-9]"].iloc[0]
    assert first["strategy"] == "adv-ft"  # the largest median certified radius comes first
    assert "median eps_lo [95% CI]" in head.columns


# ---------------------------------------------------------------------------------------------------------------
# HTML in headless Chromium


def _chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def test_report_html_is_self_contained(report) -> None:
    text = report.html.read_text()
    assert "<script" not in text and "http://" not in text and "https://" not in text
    assert text.count("data:image/png;base64,") == len(report.figures)


def test_report_html_renders_in_headless_chromium(report, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("chromium is not installed (make test installs it where apt-get can)")
    shot = tmp_path / "report.png"
    args = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
            "--disable-dev-shm-usage", "--window-size=1200,2400", f"--screenshot={shot}"]
    done = subprocess.run(args + [report.html.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 10_000
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          report.html.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and "Transfer strategies: certified robustness report" in dom.stdout
    assert dom.stdout.count("<img") == len(report.figures)


# ---------------------------------------------------------------------------------------------------------------
# bad input: exit 2, one line


def test_compare_cli_writes_the_report(study, tmp_path: Path) -> None:
    runs, _ = study
    result = CliRunner().invoke(app, ["compare", *map(str, runs[:2]), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "r" / "report.html").is_file() and "report:" in result.output


def test_compare_runs_sharing_no_samples_is_exit_2(tmp_path: Path) -> None:
    a = make_run(tmp_path, "adv-ft", "mnist5k[5-9]", list(range(0, 10)), seed=1)
    b = make_run(tmp_path, "full-ft", "mnist5k[5-9]", list(range(10, 20)), seed=2)
    with pytest.raises(RobverifyError, match="share no samples"):
        compare_runs([a, b], tmp_path / "report")
    result = robverify_cli("compare", a, b, "--out", tmp_path / "report")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "share no samples" in lines[0]


def test_compare_refuses_unfinished_and_duplicate_runs(study, tmp_path: Path) -> None:
    runs, _ = study
    with pytest.raises(RobverifyError, match="one run per strategy and task"):
        compare_runs([runs[0], runs[0]], tmp_path / "r")
    with pytest.raises(RobverifyError, match="not a run directory"):
        compare_runs([tmp_path], tmp_path / "r")
    result = robverify_cli("compare", tmp_path / "nothing", "--out", tmp_path / "r")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_nan_and_inf_formatting() -> None:
    assert fmt(math.nan) == "n/a" and fmt(math.inf) == "inf" and fmt(0.012345) == "0.0123"


def test_compare_refuses_runs_swept_differently_unless_allowed(tmp_path: Path) -> None:
    """Runs whose method (or backend, budget, tolerance, grid) differ: exit 2 with one line naming the setting
    and both runs; with --allow-mixed the report says so and lists each way of sweeping."""
    a = make_run(tmp_path, "adv-ft", "mnist5k[5-9]", list(range(N)), seed=1,
                 search={"backend": "native", "method": "crown", "tol": 1e-3})
    b = make_run(tmp_path, "full-ft", "mnist5k[5-9]", list(range(N)), seed=2,
                 search={"backend": "bab", "method": "crown", "tol": 1e-3, "timeout": 10.0})
    refused = robverify_cli("compare", a, b, "--out", tmp_path / "report")
    assert refused.returncode == 2, refused.stderr
    line = refused.stderr.strip()
    assert len(line.splitlines()) == 1 and "backend native" in line and "bab" in line and "--allow-mixed" in line
    assert not (tmp_path / "report" / "report.md").exists()
    allowed = robverify_cli("compare", a, b, "--out", tmp_path / "report", "--allow-mixed")
    assert allowed.returncode == 0, allowed.stderr
    text = (tmp_path / "report" / "report.md").read_text()
    assert "swept in different ways" in text and "| bab " in text and "| native " in text
    same = make_run(tmp_path / "same", "linear-probe", "mnist5k[5-9]", list(range(N)), seed=3,
                    search={"backend": "native", "method": "crown", "tol": 1e-3})
    assert robverify_cli("compare", a, same, "--out", tmp_path / "same-report").returncode == 0
    assert "Every run was swept the same way" in (tmp_path / "same-report" / "report.md").read_text()
