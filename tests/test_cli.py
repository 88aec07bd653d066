"""The command line: help, exit codes and one-line errors, and end-to-end certify / sweep-epsilon runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import digits_mlp

ROBVERIFY = [sys.executable, "-m", "robverify.cli"]


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*ROBVERIFY, *map(str, args)], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    """A small MLP trained on digits[0-4], exported with its model card."""
    return digits_mlp(tmp_path_factory.mktemp("model") / "digits.onnx")


def test_help_lists_the_commands():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ["train", "transfer", "export-vnnlib", "certify", "sweep-epsilon", "verify", "compare", "run",
                    "demo"]:
        assert command in result.stdout


def _one_line_error(result: subprocess.CompletedProcess, needle: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert needle in result.stderr
    assert len([line for line in result.stderr.strip().splitlines() if line.strip()]) <= 2


def test_bad_inputs_exit_2_with_one_line(digits_model, tmp_path):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(os.urandom(300))
    _one_line_error(run_cli("certify", garbage, "--eps", "0.01", "--task", "digits"), "not a valid ONNX model")
    _one_line_error(run_cli("certify", tmp_path / "missing.onnx", "--eps", "0.01"), "no such model file")
    _one_line_error(run_cli("certify", digits_model, "--eps", "-0.1", "-n", "2"), "--eps")
    _one_line_error(run_cli("certify", digits_model, "--eps", "nan", "-n", "2"), "--eps")
    _one_line_error(run_cli("sweep-epsilon", digits_model, "--tol", "0", "-n", "2"), "--tol")
    _one_line_error(run_cli("certify", digits_model, "--eps", "0.01", "--task", "mnsit[0-4]", "-n", "2"),
                    "unknown dataset")
    _one_line_error(run_cli("certify", digits_model, "--eps", "0.01", "--task", "digits[0-12]", "-n", "2"),
                    "out of range")
    _one_line_error(run_cli("certify", digits_model, "--eps", "0.01", "--task", "mnist5k[0-4]", "-n", "2"),
                    "do not fit the model input")
    _one_line_error(run_cli("certify", digits_model, "--eps", "0.01", "--task", "cifar10", "-n", "2"),
                    "--data-root")
    _one_line_error(run_cli("certify", digits_model, "--eps", "0.01", "--method", "magic", "-n", "2"),
                    "unknown method")
    ghost = tmp_path / "ghost-run"  # the backend is built before the run directory: a bad one leaves nothing
    _one_line_error(run_cli("certify", digits_model, "--eps", "0.01", "-n", "2", "--backend", "external",
                            "--verifier-cmd", tmp_path / "no-such-tool.sh", "--out", ghost), "unknown verifier command")
    assert not ghost.exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _one_line_error(run_cli("certify", digits_model, "--eps", "0.01", "-n", "2", "--out", blocker / "sub"),
                    "cannot write")


def test_certify_end_to_end(digits_model, tmp_path):
    out = tmp_path / "certify"
    result = run_cli("certify", digits_model, "--eps", "0.001", "--eps", "0.2", "-n", "12", "--out", out)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 24 and set(table["eps"]) == {0.001, 0.2}
    for column in ["run_id", "model", "backend", "method", "task", "sample_id", "label", "pred", "time_s",
                   "eps", "verdict", "margin_lb"]:
        assert column in table.columns
    assert table["task"].iloc[0] == "digits[0-4]"  # taken from the model card
    correct = table[table["verdict"] != "misclassified"]
    assert ((correct["verdict"] == "verified") == (correct["margin_lb"] > 0)).all()
    # the same run again is a resume of a finished run: nothing recomputed, nothing duplicated
    again = run_cli("certify", digits_model, "--eps", "0.001", "--eps", "0.2", "-n", "12", "--out", out)
    assert again.returncode == 0
    assert len(pd.read_parquet(out / "results.parquet")) == 24
    other = run_cli("certify", digits_model, "--eps", "0.3", "-n", "12", "--out", out)
    _one_line_error(other, "holds a different run")


def test_sweep_end_to_end_and_grid(digits_model, tmp_path):
    out = tmp_path / "sweep"
    result = run_cli("sweep-epsilon", digits_model, "-n", "10", "--tol", "1e-3", "--out", out)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 10
    correct = table[table["status"] != "misclassified"]
    assert (correct["eps_lo"] < correct["eps_hi"]).all()
    assert (correct["n_calls"] >= 1).all()
    assert (out / "result_df.csv").is_file()
    assert list((out / "figures").glob("*.png"))
    grid_out = tmp_path / "grid"
    result = run_cli("sweep-epsilon", digits_model, "-n", "10", "--grid", "0.01:0.2:0.01", "--out", grid_out)
    assert result.returncode == 0, result.stderr
    grid_table = pd.read_parquet(grid_out / "results.parquet")
    grid = {round(0.01 * k, 12) for k in range(1, 21)} | {0.0}
    ok = grid_table[grid_table["status"] != "misclassified"]
    assert all(round(v, 12) in grid for v in ok["eps_lo"])
    assert all(v == float("inf") or round(v, 12) in grid for v in ok["eps_hi"])
    # the grid bracket contains the continuous one's endpoints' order
    merged = correct.merge(ok, on="sample_id", suffixes=("", "_grid"))
    assert (merged["eps_lo_grid"] < merged["eps_hi"] + 1e-9).all()


@pytest.mark.slow
def test_killed_sweep_resumes_without_loss_or_duplicates(digits_model, tmp_path):
    out = tmp_path / "killed"
    args = [*ROBVERIFY, "sweep-epsilon", str(digits_model), "-n", "150", "--tol", "1e-4", "--out", str(out)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    chunks = out / "chunks"
    while time.time() < deadline and not (chunks.is_dir() and list(chunks.glob("part-*.parquet"))):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "results.parquet").exists()
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    table = pd.read_parquet(out / "results.parquet")
    assert len(table) == 150 and table["sample_id"].is_unique
