"""Run directories (atomic, resumable chunks; run.json), the tidy table and VERONA's result_df.csv."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from robverify.errors import RobverifyError
from robverify.runs.schema import CERTIFY_COLUMNS, SWEEP_COLUMNS, load_results, validate_table
from robverify.runs.verona_csv import VERONA_COLUMNS, read_verona_result_df, write_verona_result_df
from robverify.app.commands import finalize_run
from robverify.runs.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
KEY = ["model", "backend", "method", "sample_id"]
ARGS = {"model": Path("/models/m.onnx"), "n": 12, "seed": 3, "out": Path("/tmp/x")}
FINGERPRINT = {"model_sha256": "ab" * 32, "task": "mnist5k[0-4]", "method": "crown", "seed": 3, "eps": [0.01, 0.02]}


def sweep_rows(ids: range | list[int], model: str = "m") -> pd.DataFrame:
    """A sweep table; every third sample is never falsified (eps_hi = inf), sample 0 is misclassified."""
    ids = list(ids)
    lo = np.array([0.001 * i for i in ids])
    hi = np.where(np.array(ids) % 3 == 0, np.inf, lo + 0.0005)
    return pd.DataFrame(
        {
            "run_id": "r1",
            "model": model,
            "backend": "native",
            "method": "crown",
            "task": "mnist5k[0-4]",
            "sample_id": ids,
            "label": [i % 5 for i in ids],
            "pred": [(i % 5) if i else 4 for i in ids],
            "time_s": [0.01 * (i + 1) for i in ids],
            "eps_lo": [0.0 if i == 0 else v for i, v in zip(ids, lo)],
            "eps_hi": [0.0 if i == 0 else v for i, v in zip(ids, hi)],
            "status": ["misclassified" if i == 0 else "tol" for i in ids],
            "n_calls": [7] * len(ids),
        },
        columns=SWEEP_COLUMNS,
    )


def open_run(path: Path, **overrides) -> RunDir:
    fingerprint = {**FINGERPRINT, **overrides}
    return RunDir.open(path, "sweep-epsilon", ARGS, fingerprint, KEY)


# ---------------------------------------------------------------------------------------------------------------
# RunDir


def test_create_commit_done_and_run_json(tmp_path: Path) -> None:
    run = open_run(tmp_path / "run")
    assert run.done().empty
    run.commit(sweep_rows(range(0, 5)))
    run.commit(sweep_rows(range(5, 9)))
    assert sorted(p.name for p in (tmp_path / "run" / "chunks").iterdir()) == [
        "part-000001.parquet",
        "part-000002.parquet",
    ]
    done = run.done()
    assert done["sample_id"].tolist() == list(range(9))
    assert run.done_keys() == {("m", "native", "crown", i) for i in range(9)}
    run.update(model_sha256="ab" * 32, data_sha256="cd" * 32, input_reshape=[1, 28, 28])

    meta = json.loads((tmp_path / "run" / "run.json").read_text())
    for key in ("run_id", "command", "arguments", "fingerprint", "versions", "seed", "start", "end", "status",
                "host", "model_sha256", "data_sha256", "input_reshape"):
        assert key in meta, key
    assert meta["status"] == "running" and meta["end"] is None
    assert meta["command"] == "sweep-epsilon" and meta["seed"] == 3
    assert meta["arguments"]["model"] == "/models/m.onnx"  # Paths stored as str
    assert set(meta["versions"]) == {"python", "robverify", "torch", "onnx", "onnxruntime", "numpy", "pandas"}
    assert meta["host"]["cpu_count"] == os.cpu_count()
    with pytest.raises(ValueError):
        run.update(status="complete")  # RunDir's own fields are not for update()


def test_crash_then_resume_no_duplicates_no_lost_rows(tmp_path: Path) -> None:
    path = tmp_path / "run"
    first = open_run(path)
    first.commit(sweep_rows(range(0, 4)))
    first.commit(sweep_rows(range(4, 8)))
    run_id, start = first.run_id, first.meta["start"]
    # What a SIGKILL during the third commit and during a run.json write leaves behind.
    (path / "chunks" / ".part-000003.parquet.abc123.tmp").write_bytes(b"PAR1 half a parquet file")
    (path / ".run.json.xyz.tmp").write_text('{"run_id": "trunc')
    assert json.loads((path / "run.json").read_text())["status"] == "running"

    resumed = open_run(path)
    assert resumed.run_id == run_id and resumed.meta["start"] == start and resumed.meta["resumed"] == 1
    assert not list(path.rglob("*.tmp"))  # stale temp files are cleaned
    assert resumed.done()["sample_id"].tolist() == list(range(8))
    todo = [i for i in range(12) if ("m", "native", "crown", i) not in resumed.done_keys()]
    assert todo == [8, 9, 10, 11]
    # Recompute the chunk that was in flight, overlapping one already committed row (changed): last one wins.
    again = sweep_rows([7] + todo)
    again.loc[again["sample_id"] == 7, "time_s"] = 99.0
    resumed.commit(again)
    table = resumed.finalize()

    assert table["sample_id"].tolist() == list(range(12))
    assert not table.duplicated(KEY).any()
    assert table.loc[table["sample_id"] == 7, "time_s"].item() == 99.0
    meta = json.loads((path / "run.json").read_text())
    assert meta["status"] == "complete" and meta["end"] is not None and meta["n_rows"] == 12


def test_reopen_complete_run_resumes_and_finalize_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "run"
    run = open_run(path)
    run.commit(sweep_rows(range(6)))
    once = run.finalize()
    twice = open_run(path).finalize()
    pd.testing.assert_frame_equal(once, twice)
    assert json.loads((path / "run.json").read_text())["resumed"] == 1


def test_different_run_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "run"
    open_run(path).commit(sweep_rows(range(3)))
    with pytest.raises(RobverifyError, match="different run.*differs in: eps, method.*choose another --out"):
        open_run(path, method="ibp", eps=[0.05])
    with pytest.raises(RobverifyError, match="different run.*differs in: command"):
        RunDir.open(path, "certify", ARGS, FINGERPRINT, KEY)
    # The refused attempts left the run untouched.
    assert open_run(path).done()["sample_id"].tolist() == [0, 1, 2]


def _open_in_subprocess(path: Path) -> str:
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO / 'tests')!r})
        from pathlib import Path
        from test_results import open_run
        from robverify.errors import RobverifyError
        try:
            open_run(Path({str(path)!r}))
            print("opened")
        except RobverifyError as err:
            print("refused:", err)
    """)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                          timeout=120).stdout


def test_a_second_process_on_the_same_run_directory_is_refused(tmp_path: Path) -> None:
    """The lock lives as long as the process that opened the run: another process is refused meanwhile; a run
    whose process has exited can be resumed."""
    open_run(tmp_path / "ours")
    open_run(tmp_path / "ours")  # the same process may reopen it
    out = _open_in_subprocess(tmp_path / "ours")
    assert out.startswith("refused:") and "in use by another robverify process" in out, out
    assert _open_in_subprocess(tmp_path / "theirs").startswith("opened")
    open_run(tmp_path / "theirs")  # their process has exited: free to resume


def test_non_empty_directory_without_run_json_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RobverifyError, match="not empty and holds no run.json"):
        open_run(tmp_path)


@pytest.mark.parametrize("below", [True, False])
def test_unwritable_location(tmp_path: Path, below: bool) -> None:
    regular = tmp_path / "a_file"
    regular.write_text("x")  # a path below a regular file cannot be created, even by root
    with pytest.raises(RobverifyError, match="cannot write to"):
        open_run(regular / "run" if below else regular)


def test_fail_then_resume(tmp_path: Path) -> None:
    path = tmp_path / "run"
    run = open_run(path)
    run.fail("backend crashed: out of memory")
    meta = json.loads((path / "run.json").read_text())
    assert meta["status"] == "failed" and meta["error"] == "backend crashed: out of memory" and meta["end"]
    meta = open_run(path).meta
    assert meta["status"] == "running" and "error" not in meta and meta["end"] is None


def test_parquet_and_csv_agree_and_inf_survives(tmp_path: Path) -> None:
    run = open_run(tmp_path / "run")
    run.commit(sweep_rows(range(7, 0, -1)))  # committed out of order: finalize sorts by the key
    table = run.finalize()
    assert table["sample_id"].tolist() == list(range(1, 8))
    validate_table(table, "sweep")

    parquet = pd.read_parquet(tmp_path / "run" / "results.parquet")
    csv = pd.read_csv(tmp_path / "run" / "results.csv")
    assert list(parquet.columns) == list(csv.columns) == SWEEP_COLUMNS
    pd.testing.assert_frame_equal(parquet, table)
    pd.testing.assert_frame_equal(csv, parquet, check_dtype=False)
    assert np.isinf(parquet["eps_hi"]).sum() == 2 and parquet["eps_hi"].dtype == np.float64
    assert ",inf," in (tmp_path / "run" / "results.csv").read_text()
    for col in ("sample_id", "label", "pred", "time_s", "eps_lo", "eps_hi", "n_calls"):
        assert pd.api.types.is_numeric_dtype(csv[col]), col


def test_finalize_draws_figures(tmp_path: Path) -> None:
    run = open_run(tmp_path / "run")
    run.commit(sweep_rows(range(10)))
    finalize_run(run)
    names = sorted(p.name for p in run.figures_dir.iterdir())
    assert names == ["certified_accuracy.png", "certified_accuracy.svg", "ecdf.png", "ecdf.svg"]
    assert json.loads((tmp_path / "run" / "run.json").read_text())["figures"] == [
        "figures/ecdf.png", "figures/ecdf.svg", "figures/certified_accuracy.png", "figures/certified_accuracy.svg",
    ]


KILL_CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import numpy as np, pandas as pd
    from robverify.runs.rundir import RunDir

    rows = int(sys.argv[2])
    run = RunDir.open(Path(sys.argv[1]), "sweep-epsilon", {}, {"model_sha256": "k"}, ["sample_id"])
    i = 0
    while True:
        ids = np.arange(i * rows, (i + 1) * rows)
        run.commit(pd.DataFrame({"sample_id": ids, "eps_lo": ids * 1e-6, "eps_hi": np.inf, "pad": "x" * 64}))
        print(i, flush=True)
        i += 1
    """
)


def test_sigkill_mid_commit_loses_no_committed_chunk(tmp_path: Path) -> None:
    path, rows = tmp_path / "run", 20_000
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_CHILD, str(path), str(rows)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )
    try:
        reported = []
        deadline = time.monotonic() + 60
        while len(reported) < 4 and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            reported.append(int(line))
        assert len(reported) == 4, child.stderr.read()
        time.sleep(np.random.default_rng(0).uniform(0.0, 0.01))  # land somewhere inside a later commit
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        reported += [int(line) for line in child.stdout.read().split()]
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    parts = sorted((path / "chunks").glob("part-*.parquet"))
    # Every commit the child reported is on disk; at most one more finished between its rename and its print.
    assert len(reported) <= len(parts) <= len(reported) + 1
    for n, part in enumerate(parts):
        chunk = pd.read_parquet(part)
        assert chunk["sample_id"].tolist() == list(range(n * rows, (n + 1) * rows)), part.name

    run = RunDir.open(path, "sweep-epsilon", {}, {"model_sha256": "k"}, ["sample_id"])
    assert not list((path / "chunks").glob("*.tmp"))
    done = run.done()
    assert len(done) == len(parts) * rows
    assert done["sample_id"].tolist() == list(range(len(parts) * rows))
    assert not done.isna().any().any()
    assert run.meta["resumed"] == 1


# ---------------------------------------------------------------------------------------------------------------
# The tidy table


def test_validate_table() -> None:
    table = sweep_rows(range(5))
    assert validate_table(table, "sweep") is table
    with pytest.raises(RobverifyError, match="missing column.*eps_hi"):
        validate_table(table.drop(columns=["eps_hi"]), "sweep")
    as_text = table.assign(eps_lo=table["eps_lo"].astype(str))
    with pytest.raises(RobverifyError, match="numbers must be stored as numbers.*eps_lo"):
        validate_table(as_text, "sweep")
    with pytest.raises(RobverifyError, match="eps_lo > eps_hi"):
        validate_table(table.assign(eps_lo=table["eps_hi"].where(np.isfinite(table["eps_hi"]), 0) + 1), "sweep")
    with pytest.raises(RobverifyError, match="kind"):
        validate_table(table, "sweeps")

    certify = pd.DataFrame(
        {**{c: table[c] for c in SWEEP_COLUMNS[:9]}, "eps": 0.01, "verdict": "verified", "margin_lb": 0.3}
    )[CERTIFY_COLUMNS]
    validate_table(certify, "certify")
    with pytest.raises(RobverifyError, match="verdicts"):
        validate_table(certify.assign(verdict="safe"), "certify")
    with pytest.raises(RobverifyError, match="eps"):
        validate_table(certify.assign(eps="8/255"), "certify")


def test_load_results_concatenates_runs(tmp_path: Path) -> None:
    for name in ("a", "b"):
        run = open_run(tmp_path / name)
        run.commit(sweep_rows(range(4), model=name))
        run.finalize()
    table = load_results([tmp_path / "a", tmp_path / "b"])
    assert len(table) == 8 and table["model"].tolist() == ["a"] * 4 + ["b"] * 4
    validate_table(table, "sweep")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RobverifyError, match="empty has no results.parquet"):
        load_results([tmp_path / "a", tmp_path / "empty"])


# ---------------------------------------------------------------------------------------------------------------
# VERONA


def test_verona_result_df_round_trip(tmp_path: Path) -> None:
    table = sweep_rows(range(8))
    path = tmp_path / "results" / "result_df.csv"
    written = write_verona_result_df(table, path)
    assert list(written.columns) == VERONA_COLUMNS
    # VERONA reads its file with index_col=0.
    as_verona = pd.read_csv(path, index_col=0)
    assert list(as_verona.columns) == VERONA_COLUMNS
    assert as_verona["verifier"].unique().tolist() == ["native-crown"]

    back = read_verona_result_df(path)
    assert list(back.columns) == SWEEP_COLUMNS
    validate_table(back, "sweep")
    correct = table[table["status"] != "misclassified"].reset_index(drop=True)  # VERONA lists correct samples only
    for ours, theirs in [("model", "model"), ("sample_id", "sample_id"), ("label", "label"), ("eps_lo", "eps_lo"),
                         ("eps_hi", "eps_hi"), ("time_s", "time_s")]:
        np.testing.assert_array_equal(back[theirs].to_numpy(), correct[ours].to_numpy(), err_msg=ours)
    assert np.isinf(back["eps_hi"]).sum() == 2
    assert set(back["backend"]) == {"verona"} and set(back["method"]) == {"native-crown"}
    assert set(back["status"]) == {"grid"} and back["n_calls"].isna().all()


def test_read_verona_own_file(tmp_path: Path) -> None:
    """A file as VERONA writes it: index column, tmp_path, and the grid maximum where nothing was SAT."""
    path = tmp_path / "result_df.csv"
    path.write_text(
        ",network,image_id,original_label,tmp_path,epsilon_value,smallest_sat_value,total_time,verifier\n"
        "0,mnist-net,3,7,/tmp/a,0.02,0.03,1.5,pgd\n"
        "1,mnist-net,5,1,/tmp/b,0.05,0.05,2.5,pgd\n"
    )
    back = read_verona_result_df(path)
    assert back["sample_id"].tolist() == [3, 5] and back["label"].tolist() == [7, 1]
    assert back["eps_lo"].tolist() == [0.02, 0.05]
    assert back["eps_hi"].tolist() == [0.03, np.inf]  # smallest_sat_value == epsilon_value: nothing SAT
    assert "tmp_path" not in back.columns
    bad = tmp_path / "other.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(RobverifyError, match="not a VERONA result_df.csv"):
        read_verona_result_df(bad)
