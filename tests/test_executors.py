"""The Ray executor (robverify.runs.executors) against the local one: the same per-sample results with the same
seed, a worker killed mid-run yields every sample once, an interrupted driver resumes, and the CLI's options.

A local Ray instance of 2 CPUs serves the module (its start takes a few seconds)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import digits_mlp, single_thread  # noqa: F401 (single_thread: an autouse fixture)
from test_study import TINY
from robverify.errors import RobverifyError

ray = pytest.importorskip("ray")

N = 24        # samples
CHUNK = 4     # samples per chunk: six chunks, three per worker
COLUMNS = ["sample_id", "label", "pred", "eps_lo", "eps_hi", "status", "n_calls", "n_attacks"]


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return digits_mlp(tmp_path_factory.mktemp("model") / "digits.onnx")


def _prepare(model: Path, out: Path, executor: str, command: str = "sweep"):
    from robverify.app.commands import ExecutorConfig, backend_options, prepare_certify, prepare_sweep
    from robverify.runs.sweep import SweepSettings

    common = dict(task=None, n=N, method="crown", backend="native", out=out, seed=0, device="cpu", data_root=None,
                  batch_size=256, options=backend_options(), executor=ExecutorConfig(executor, 2))
    if command == "sweep":
        return prepare_sweep(model, settings=SweepSettings(tol=1e-3), **common)
    return prepare_certify(model, eps=[0.02, 0.05], **common)


def _sweep(model: Path, out: Path, executor: str, progress=None) -> pd.DataFrame:
    from robverify.runs.jobs import run_sweep
    from robverify.runs.sweep import SweepSettings

    prep = _prepare(model, out, executor)
    with prep.executing() as chunks_on:
        return run_sweep(prep.run, prep.engine, prep.samples, SweepSettings(tol=1e-3), chunk=CHUNK,
                         progress=progress, executor=chunks_on)


def _same(a: pd.DataFrame, b: pd.DataFrame, columns: list[str]) -> None:
    a, b = a.sort_values(columns[0]).reset_index(drop=True), b.sort_values(columns[0]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[columns], b[columns])


def test_ray_sweep_equals_the_local_sweep(cluster, model, tmp_path):
    local = _sweep(model, tmp_path / "local", "local")
    remote = _sweep(model, tmp_path / "ray", "ray")
    assert len(remote) == N and remote["sample_id"].is_unique
    assert (remote["status"] != "misclassified").sum() >= N // 2  # a real distribution, not all misclassified
    _same(local, remote, COLUMNS)


def test_ray_certify_equals_the_local_certify(cluster, model, tmp_path):
    from robverify.runs.jobs import run_certify

    tables = {}
    for name in ("local", "ray"):
        prep = _prepare(model, tmp_path / name, name, command="certify")
        with prep.executing() as chunks_on:
            tables[name] = run_certify(prep.run, prep.engine, prep.samples, [0.02, 0.05], chunk=CHUNK,
                                       executor=chunks_on)
    key = ["sample_id", "eps"]
    a, b = (t.sort_values(key).reset_index(drop=True) for t in tables.values())
    pd.testing.assert_frame_equal(a[key + ["verdict", "margin_lb"]], b[key + ["verdict", "margin_lb"]])
    assert set(b["verdict"]) >= {"verified"}


def test_a_killed_worker_loses_and_duplicates_nothing(cluster, model, tmp_path):
    from robverify.runs.jobs import run_sweep
    from robverify.runs.sweep import SweepSettings

    local = _sweep(model, tmp_path / "local", "local")
    prep = _prepare(model, tmp_path / "ray", "ray")
    killed = []
    with prep.executing() as chunks_on:
        victim = chunks_on.worker_pids()[0]

        def kill_once(_: int) -> None:  # after the first chunk is committed, the others in flight or queued
            if not killed:
                os.kill(victim, signal.SIGKILL)
                killed.append(victim)

        table = run_sweep(prep.run, prep.engine, prep.samples, SweepSettings(tol=1e-3), chunk=CHUNK,
                          progress=kill_once, executor=chunks_on)
        assert victim not in chunks_on.worker_pids()  # Ray restarted that worker
    assert killed and len(table) == N and table["sample_id"].is_unique
    _same(local, table, COLUMNS)


def test_an_interrupted_driver_resumes(cluster, model, tmp_path):
    out = tmp_path / "ray"
    seen = []

    def stop_after_two(k: int) -> None:
        seen.append(k)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _sweep(model, out, "ray", progress=stop_after_two)
    committed = pd.concat([pd.read_parquet(p) for p in (out / "chunks").glob("part-*.parquet")])
    assert len(committed) == 2 * CHUNK
    again = []
    table = _sweep(model, out, "ray", progress=again.append)
    assert sum(again) == N - 2 * CHUNK  # only what was missing was computed
    assert len(table) == N and table["sample_id"].is_unique
    _same(_sweep(model, tmp_path / "local", "local"), table, COLUMNS)


def _failing_chunk(backend, chunk) -> pd.DataFrame:
    raise RobverifyError(f"no rows for chunk {chunk} on {backend.model.name}")


def test_an_error_in_a_chunk_comes_back_as_one_line(cluster, model):
    from robverify.backends import BackendOptions
    from robverify.runs.executors import BackendRecipe, RayExecutor

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this test module
    executor = RayExecutor(BackendRecipe(str(model), "cpu", "native", "crown", 16, 0, BackendOptions()), workers=1)
    try:
        with pytest.raises(RobverifyError, match=r"a chunk failed on a Ray worker .*no rows for chunk 7 on digits"):
            list(executor.map(_failing_chunk, [7]))
    finally:
        executor.close()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def test_executor_settings_are_checked():
    from robverify.app.commands import ExecutorConfig

    with pytest.raises(RobverifyError, match="unknown executor"):
        ExecutorConfig("slurm")
    with pytest.raises(RobverifyError, match="--workers must be >= 1"):
        ExecutorConfig("ray", 0)


@pytest.mark.slow  # starts its own Ray instance (~15 s)
def test_cli_sweep_on_ray_and_bad_options(model, tmp_path):
    cli = [sys.executable, "-m", "robverify.cli", "sweep-epsilon", str(model), "-n", "8", "--tol", "1e-2"]
    out = tmp_path / "cli"
    result = subprocess.run([*cli, "--out", str(out), "--executor", "ray", "--workers", "2"], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 8 and table["sample_id"].is_unique
    for bad, message in ((["--executor", "slurm"], "unknown executor"), (["--workers", "0"], "--workers")):
        result = subprocess.run([*cli, "--out", str(tmp_path / "bad"), *bad], capture_output=True, text=True,
                                timeout=300)
        assert result.returncode == 2 and message in result.stderr
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def _study(line: str) -> str:
    """test_study's tiny study (digits MLPs, one source, two transfers, n = 6) with ``line`` added to [study]."""
    return TINY.format(n=6).replace("[study]\n", "[study]\n" + line, 1)


@pytest.mark.slow  # trains and sweeps six small models (~20 s)
def test_study_on_ray_equals_the_local_study_and_caches(cluster, tmp_path):
    from robverify.app.study import load_study, run_study

    tables = {}
    for name, line in (("local", ""), ("ray", 'executor = "ray"\n')):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "study.toml").write_text(_study(line))
        result = run_study(load_study(folder / "study.toml"))
        assert len(result.ran) == len(result.steps) == 7  # source, 2 transfers, 3 sweeps, compare
        tables[name] = {s.label: pd.read_parquet(s.folder / "results.parquet")
                        for s in result.steps if s.kind == "sweep"}
    assert tables["local"].keys() == tables["ray"].keys()
    for label, local in tables["local"].items():
        _same(local, tables["ray"][label], COLUMNS)
    again = run_study(load_study(tmp_path / "ray" / "study.toml"))
    assert again.ran == []  # every step cached


def test_study_executor_key_is_checked(tmp_path):
    from robverify.app.study import parse_study

    with pytest.raises(RobverifyError, match=r"study.toml:2: \[study\] executor must be one of local, ray"):
        parse_study(_study('executor = "slurm"\n'), tmp_path / "study.toml")
    with pytest.raises(RobverifyError, match=r"workers must be >= 1"):
        parse_study(_study("workers = 0\n"), tmp_path / "study.toml")
