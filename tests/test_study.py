"""`robverify run STUDY.toml`: cached steps (a second run changes nothing), one-line errors with file and line,
and the embedded demo study."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from robverify.errors import RobverifyError
from robverify.app.study import DEMO_STUDY, load_study, parse_study, plan_study, run_study

REPO = Path(__file__).resolve().parents[1]

TINY = """\
[study]
out = "out"
seed = 0

[source]
task = "digits[0-4]"
arch = "mlp"
method = "standard"
eps = 0.02
epochs = 1

[transfer]
targets = ["digits[5-9]"]
strategies = ["linear-probe", "full-ft"]
epochs = 1

[sweep]
n = {n}
method = "ibp"
tol = 0.005
eps_max = 0.2
"""


def robverify_cli(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "robverify.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=REPO)


def snapshot(folder: Path) -> dict[str, tuple[int, str]]:
    """Every file under ``folder``: (modification time in ns, sha256)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def write_study(folder: Path, n: int = 6) -> Path:
    path = folder / "study.toml"
    path.write_text(TINY.format(n=n))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("study")
    path = write_study(folder)
    first = run_study(load_study(path))
    return folder, path, first


@pytest.mark.slow  # trains three small models and sweeps them (about a minute on 2 idle cores)
def test_first_run_runs_every_step_and_writes_the_report(finished) -> None:
    folder, _, first = finished
    assert [s.kind for s in first.steps] == ["source", "transfer", "transfer", "sweep", "sweep", "sweep", "compare"]
    assert all(s.ran for s in first.steps)
    assert (folder / "out" / "report" / "report.html").is_file()
    head = first.report.headline
    assert set(head["strategy"]) == {"source", "linear-probe", "full-ft"}
    assert set(head["task"]) == {"digits[0-4]", "digits[5-9]"}


@pytest.mark.slow  # trains three small models and sweeps them (about a minute on 2 idle cores)
def test_second_run_changes_nothing_and_takes_seconds(finished) -> None:
    folder, path, _ = finished
    before = snapshot(folder / "out")
    started = time.perf_counter()
    second = run_study(load_study(path))
    seconds = time.perf_counter() - started
    assert second.ran == []
    assert snapshot(folder / "out") == before
    assert seconds < 10, f"a fully cached study took {seconds:.1f} s"


@pytest.mark.slow  # trains three small models and sweeps them (about a minute on 2 idle cores)
def test_changing_a_sweep_setting_redoes_only_its_dependents(finished, tmp_path: Path) -> None:
    folder, path, first = finished
    changed = parse_study(TINY.format(n=7), path)
    steps = plan_study(changed, folder / "out")
    stale = [s.kind for s in steps if not s.done()]
    assert stale == ["sweep", "sweep", "sweep", "compare"]  # source and transfers are reused
    original = {s.kind + s.label: s.key for s in plan_study(load_study(path), folder / "out")}
    assert [s.key == original[s.kind + s.label] for s in steps] == [True, True, True, False, False, False, False]


def test_unknown_key_names_the_key_and_line(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text(TINY.format(n=6).replace("epochs = 1\n\n[transfer]", "epoch = 1\n\n[transfer]"))
    with pytest.raises(RobverifyError, match=r"study.toml:10: unknown key 'epoch' in \[source\]"):
        load_study(path)
    result = robverify_cli("run", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "study.toml:10" in lines[0] and "'epoch'" in lines[0]


def test_unknown_table_and_wrong_type(tmp_path: Path) -> None:
    with pytest.raises(RobverifyError, match=r"s.toml:1: unknown table \[sweeps\]"):
        parse_study("[sweeps]\nn = 3\n", tmp_path / "s.toml")
    with pytest.raises(RobverifyError, match=r"s.toml:7: \[sweep\] n must be an integer, got 'many'"):
        parse_study('[transfer]\ntargets = ["digits"]\nstrategies = ["full-ft"]\n[source]\ntask = "digits"\n'
                    '[sweep]\nn = "many"\n', tmp_path / "s.toml")


def test_missing_source_model_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "study.toml"
    path.write_text('[source]\nmodel = "no/such/model"\n\n[transfer]\ntargets = ["digits[5-9]"]\n'
                    'strategies = ["full-ft"]\n')
    result = robverify_cli("run", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "study.toml:2" in lines[0] and "not found" in lines[0]


def test_bad_target_task_is_reported_before_any_training(tmp_path: Path) -> None:
    study = parse_study(TINY.format(n=6).replace('"digits[5-9]"', '"digits[5-12]"'), tmp_path / "s.toml")
    with pytest.raises(RobverifyError, match=r"s.toml:13: task 'digits\[5-12\]'"):
        plan_study(study, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_demo_study_ships_in_examples() -> None:
    assert (REPO / "examples" / "demo_study.toml").read_text() == DEMO_STUDY
    study = parse_study(DEMO_STUDY, REPO / "examples" / "demo_study.toml")
    steps = plan_study(study, Path("/nonexistent"))
    assert len([s for s in steps if s.kind == "transfer"]) == 20 and steps[-1].kind == "compare"


def test_unknown_key_on_the_command_line_names_its_table(tmp_path: Path) -> None:
    """The CLI prints the library's message as plain text: rich markup used to swallow "[source]"."""
    path = tmp_path / "study.toml"
    path.write_text(TINY.format(n=6).replace("epochs = 1\n\n[transfer]", "bogus = 1\n\n[transfer]"))
    result = robverify_cli("run", path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "study.toml:10: unknown key 'bogus' in [source]; expected one of task," in result.stderr


@pytest.mark.slow  # runs two sweeps of the finished study again on the user's data
def test_own_data_for_a_target_redoes_its_sweeps_with_the_same_samples(finished, tmp_path: Path) -> None:
    """[sweep] data names a target's own test file: only that target's sweeps (and the report) are redone, and on
    the same images as the task's test split they give the same brackets."""
    import numpy as np
    import pandas as pd

    from trainers.tasks import load_task

    import shutil

    folder, path, first = finished
    task = load_task("digits[5-9]")
    np.savez(tmp_path / "target.npz", x=task.x_test.numpy(), y=task.y_test.numpy())
    shutil.copytree(folder / "out", tmp_path / "out")
    text = TINY.format(n=6) + 'data = { "digits[5-9]" = "target.npz" }\n'
    study = parse_study(text, tmp_path / "study.toml")
    stale = [(s.kind, s.label) for s in plan_study(study, tmp_path / "out") if not s.done()]
    assert [k for k, _ in stale] == ["sweep", "sweep", "compare"]
    assert all("digits[5-9]" in label for k, label in stale if k == "sweep")
    result = run_study(study, tmp_path / "out")
    redone = [s for s in result.steps if s.kind == "sweep" and s.ran]
    assert len(redone) == 2
    before = {s.label: s.folder for s in first.steps if s.kind == "sweep"}
    for step in redone:
        own = pd.read_parquet(step.folder / "results.parquet").sort_values("sample_id")
        task_run = pd.read_parquet(before[step.label] / "results.parquet").sort_values("sample_id")
        assert own["sample_id"].tolist() == task_run["sample_id"].tolist()
        np.testing.assert_allclose(own["eps_lo"], task_run["eps_lo"], atol=1e-9)
        assert own["task"].iloc[0] == "data:target.npz"


def test_sweep_data_keys_are_checked_with_their_line(tmp_path: Path) -> None:
    path = write_study(tmp_path)
    for extra, message in (('data = { "digits[0-2]" = "x.npz" }', "not a target"),
                           ('data = { "digits[5-9]" = "missing.npz" }', "does not exist"),
                           ('data = { "digits[5-9]" = 3 }', "file or folder names")):
        study = parse_study(TINY.format(n=6) + extra + "\n", path)
        with pytest.raises(RobverifyError, match=message) as err:
            plan_study(study, tmp_path / "out")
        assert f"{path}:" in str(err.value)
