"""What the command line hands to the library: each command is invoked with typer's ``CliRunner`` while the
library function it calls is replaced by a recorder, and the arguments the recorder received are compared
(types and values) with what was typed. Bad input is refused before the library runs: the library error that
escapes ``app`` is a :class:`RobverifyError`, and the console entry point :func:`robverify.cli.main` turns it into
exit code 2 with one line on stderr and no traceback.

The recorders are patched where the commands look them up at call time (each command imports its library
function inside its body, e.g. ``from robverify.app.commands import certify``).
"""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import robverify.cli as cli
from robverify.app.commands import ExecutorConfig
from robverify.backends import BackendOptions
from robverify.errors import RobverifyError
from robverify.runs.sweep import SweepSettings

REPO = Path(__file__).resolve().parents[1]


class Recorder:
    """Stands in for a library function: keeps ``(args, kwargs)`` of every call, returns ``result(*args, **kw)``."""

    def __init__(self, result=None) -> None:
        self.calls: list[tuple[tuple, dict]] = []
        self.result = result

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.result(*args, **kwargs) if callable(self.result) else self.result

    @property
    def only(self) -> tuple[tuple, dict]:
        assert len(self.calls) == 1, f"expected one call, got {len(self.calls)}"
        return self.calls[0]


def _refuse(*args, **kwargs):
    raise AssertionError(f"the library was called with bad input: {args} {kwargs}")


class _Prep:
    def __init__(self, out: Path | None) -> None:
        self.out = out or Path("runs/x")


def _certify_table() -> pd.DataFrame:
    # eps 0.01: 3 of 4 correct, 1 falsified, 2 verified; eps 0.03: 3 correct, 2 falsified, 1 verified
    return pd.DataFrame({"eps": [0.01] * 4 + [0.03] * 4,
                         "verdict": ["verified", "falsified", "misclassified", "verified",
                                     "falsified", "misclassified", "verified", "falsified"]})


def _sweep_table() -> pd.DataFrame:
    return pd.DataFrame({"status": ["exact", "misclassified", "gap"], "eps_lo": [0.01, 0.0, 0.03],
                         "eps_hi": [0.02, 0.0, 0.05], "n_calls": [4, 0, 6]})


@pytest.fixture(autouse=True)
def wide_consoles(monkeypatch):
    """The CLI's rich consoles, wide enough that no printed line is wrapped (CliRunner is no terminal: 80 columns)."""
    from rich.console import Console

    monkeypatch.setattr(cli, "console", Console(width=1000))
    monkeypatch.setattr(cli, "err_console", Console(stderr=True, width=1000))


def invoke(*args: str):
    return CliRunner().invoke(cli.app, [str(a) for a in args])


@pytest.fixture
def certify_rec(monkeypatch) -> Recorder:
    rec = Recorder(lambda model, **kw: (_Prep(kw["out"]), _certify_table()))
    monkeypatch.setattr("robverify.app.commands.certify", rec)
    return rec


@pytest.fixture
def sweep_rec(monkeypatch) -> Recorder:
    rec = Recorder(lambda model, **kw: (_Prep(kw["out"]), _sweep_table()))
    monkeypatch.setattr("robverify.app.commands.sweep_epsilon", rec)
    return rec


# -- certify and sweep-epsilon -----------------------------------------------------------------------------------


def test_certify_hands_every_option_to_the_library(certify_rec, tmp_path):
    result = invoke("certify", "m.onnx", "--eps", "0.01", "--eps", "0.03", "--task", "digits[0-4]", "-n", "7",
                    "--method", "crown-ibp", "--backend", "marabou", "--out", tmp_path / "run", "--seed", "3",
                    "--device", "cpu", "--data-root", tmp_path / "data", "--batch-size", "16", "--timeout", "2.5",
                    "--data", tmp_path / "x.npz", "--input-range", "0,255", "--mean", "0.5,0.4,0.3", "--std", "0.2",
                    "--executor", "ray", "--workers", "3", "--ray-address", "auto")
    assert result.exit_code == 0, result.output
    args, kw = certify_rec.only
    assert kw.pop("executor") == ExecutorConfig("ray", 3, "auto")
    assert args == (Path("m.onnx"),) and isinstance(args[0], Path)
    assert kw["eps"] == [0.01, 0.03] and all(type(e) is float for e in kw["eps"])
    assert kw["options"] == BackendOptions(verifier=None, verifier_cmd=None, timeout=2.5)
    assert isinstance(kw.pop("options"), BackendOptions) and kw.pop("console") is cli.err_console
    assert kw == dict(eps=[0.01, 0.03], task="digits[0-4]", n=7, method="crown-ibp", backend="marabou",
                      out=tmp_path / "run", seed=3, device="cpu", data_root=tmp_path / "data", batch_size=16,
                      data=tmp_path / "x.npz", input_range="0,255", mean="0.5,0.4,0.3", std="0.2")
    assert type(kw["n"]) is int and type(kw["batch_size"]) is int and isinstance(kw["data_root"], Path)
    # the summary printed is the table's: clean, PGD and certified accuracy per eps
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.startswith("0.0")}
    assert lines == {"0.01": ["0.750", "0.500", "0.500"], "0.03": ["0.750", "0.250", "0.250"]}
    assert str(tmp_path / "run" / "results.parquet") in result.stdout


def test_certify_defaults(certify_rec):
    assert invoke("certify", "m.onnx", "--eps", "0.02").exit_code == 0
    _, kw = certify_rec.only
    assert kw["options"] == BackendOptions() and kw["executor"] == ExecutorConfig("local", None, None)
    assert {k: kw[k] for k in ("eps", "task", "n", "method", "backend", "out", "seed", "device", "data_root",
                               "batch_size")} == dict(eps=[0.02], task=None, n=100, method="crown", backend="native",
                                                      out=None, seed=0, device="cpu", data_root=None, batch_size=256)


@pytest.mark.parametrize("grid,expected", [
    ("0.01:0.03:0.01", (0.01, 0.02, 0.03)),
    ("0:0.1:0.05", (0.0, 0.05, 0.1)),
    ("0:0.1:0.03", (0.0, 0.03, 0.06, 0.09)),  # STOP not reached: not added
    ("0.2,0.05, 0.1", (0.2, 0.05, 0.1)),       # a list keeps its order
    (None, None),
])
def test_sweep_settings_reach_the_library_parsed(sweep_rec, grid, expected):
    extra = [] if grid is None else ["--grid", grid]
    result = invoke("sweep-epsilon", "m.onnx", "--tol", "0.001", "--eps-max", "0.5", *extra)
    assert result.exit_code == 0, result.output
    args, kw = sweep_rec.only
    assert args == (Path("m.onnx"),)
    settings = kw["settings"]
    assert isinstance(settings, SweepSettings)
    assert settings == SweepSettings(tol=0.001, grid=expected, eps_max=0.5)
    assert settings.grid is None or all(type(g) is float for g in settings.grid)
    # printed: the medians and mean calls of the correctly classified rows (eps_lo 0.01, 0.03; calls 4, 6)
    assert "3 samples, 2 correctly classified; median eps_lo 0.02, median eps_hi 0.035" in result.stdout
    assert "mean bound calls 5.0" in result.stdout


def test_sweep_hands_backend_options_and_defaults(sweep_rec, tmp_path):
    result = invoke("sweep-epsilon", "m.onnx", "--backend", "verona", "--verifier", "native-crown",
                    "--verifier-cmd", "tool/run_instance.sh --fast", "--timeout", "7", "-n", "3", "--seed", "2")
    assert result.exit_code == 0, result.output
    _, kw = sweep_rec.only
    assert kw["options"] == BackendOptions(verifier="native-crown", verifier_cmd="tool/run_instance.sh --fast",
                                           timeout=7.0)
    assert kw["settings"] == SweepSettings() and kw["executor"] == ExecutorConfig()
    assert (kw["backend"], kw["n"], kw["seed"], kw["method"], kw["out"], kw["batch_size"]) == (
        "verona", 3, 2, "crown", None, 256)
    assert kw["console"] is cli.err_console


# -- bad input ---------------------------------------------------------------------------------------------------

#: (arguments, words of the one-line message): each refused before any model is read
BAD = [
    (["certify", "m.onnx", "--eps", "0.01", "--method", "magic"], "unknown method"),
    (["certify", "m.onnx", "--eps", "-0.1"], "--eps must be a finite number >= 0"),
    (["certify", "m.onnx", "--eps", "nan"], "--eps must be a finite number >= 0"),
    (["certify", "m.onnx", "--eps", "0.01", "--eps", "inf"], "--eps must be a finite number >= 0"),
    (["certify", "m.onnx", "--eps", "0.01", "--timeout", "0"], "--timeout must be a finite number > 0"),
    (["sweep-epsilon", "m.onnx", "--executor", "slurm"], "unknown executor: expected one of local, ray"),
    (["certify", "m.onnx", "--eps", "0.01", "--workers", "0"], "--workers must be >= 1"),
    (["sweep-epsilon", "m.onnx", "--tol", "0"], "--tol must be > 0"),
    (["sweep-epsilon", "m.onnx", "--tol", "-1e-3"], "--tol must be > 0"),
    (["sweep-epsilon", "m.onnx", "--tol", "nan"], "--tol must be > 0"),
    (["sweep-epsilon", "m.onnx", "--timeout", "nan"], "--timeout must be a finite number > 0"),
    (["sweep-epsilon", "m.onnx", "--grid", "garbage"], "--grid: expected START:STOP:STEP"),
    (["sweep-epsilon", "m.onnx", "--grid", "0.1:0.01:0.01"], "--grid: expected START:STOP:STEP"),
    (["sweep-epsilon", "m.onnx", "--grid", "0:0.1:0"], "--grid: expected START:STOP:STEP"),
    (["sweep-epsilon", "m.onnx", "--grid", "0.1,-0.2"], "--grid: expected non-negative finite eps values"),
    (["sweep-epsilon", "m.onnx", "--grid", "0.1,inf"], "--grid: expected non-negative finite eps values"),
    (["sweep-epsilon", "m.onnx", "--grid", "nan"], "--grid: expected non-negative finite eps values"),
    (["sweep-epsilon", "m.onnx", "--eps-max", "0"], "--eps-max must be a finite number > 0"),
    (["sweep-epsilon", "m.onnx", "--method", "magic"], "unknown method"),
    (["sweep-epsilon", "m.onnx", "--backend", "verona", "--verifier", "native-crown"], "needs --grid"),
    (["export-vnnlib", "m.onnx", "--eps", "-1", "--out", "bench"], "--eps must be a finite number >= 0"),
    (["verify", "m.onnx", "p.vnnlib", "--timeout", "0"], "--timeout must be a finite number > 0"),
    (["verify", "m.onnx", "p.vnnlib", "--timeout", "inf"], "--timeout must be a finite number > 0"),
    (["verify", "m.onnx", "p.vnnlib", "--method", "magic"], "unknown method"),
]


@pytest.fixture
def library_refuses(monkeypatch):
    """Every way into the library past the input checks fails the test: model loading, run preparation,
    training, benchmark export, answering, reports."""
    for target in ("robverify.app.commands.prepare", "robverify.ir.model.load_model",
                   "robverify.engine.answer.answer_instance", "properties.benchmark.export_benchmark",
                   "robverify.analysis.report.compare_runs", "trainers.pipeline.train_source",
                   "trainers.pipeline.transfer_model"):
        monkeypatch.setattr(target, _refuse)


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a[:1] + a[2:]) for a, _ in BAD])
def test_bad_input_stops_at_the_boundary(args, needle, library_refuses):
    result = invoke(*args)
    assert isinstance(result.exception, RobverifyError), (result.exception, result.output)
    assert needle in str(result.exception) and "\n" not in str(result.exception)


@pytest.fixture
def entry_point(monkeypatch, capsys):
    """Run :func:`robverify.cli.main` in this process: ``(exit code, stdout, stderr)``."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # typer installs its own

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["robverify", *map(str, args)])
        with pytest.raises(SystemExit) as done:
            cli.main()
        out, err = capsys.readouterr()
        return done.value.code, out, err

    yield run
    root.handlers[:], root.level = handlers, level


@pytest.mark.parametrize("args,needle", BAD, ids=[" ".join(a[:1] + a[2:]) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line(args, needle, library_refuses, entry_point):
    code, out, err = entry_point(*args)
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], err
    assert "Traceback" not in err + out
    if args[0] == "verify":  # a VNN-COMP tool answers `error` on standard output too
        assert out.splitlines()[0] == "error"


@pytest.mark.parametrize("args", [
    ["certify", "m.onnx", "--eps", "0.01", "-n", "0"],          # -n has min=1
    ["certify", "m.onnx", "--eps", "abc"],                      # not a number
    ["certify", "m.onnx"],                                      # --eps is required
    ["sweep-epsilon", "m.onnx", "--batch-size", "0"],
    ["certify", "m.onnx", "--eps", "0.01", "--no-such-option"],
])
def test_malformed_command_lines_are_usage_errors(args, library_refuses, certify_rec, sweep_rec):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and not certify_rec.calls and not sweep_rec.calls


def test_the_installed_entry_point_exits_2_on_a_bad_grid(tmp_path):
    """The real process (``python -m robverify.cli``), as a shell or a VNN-COMP harness sees it; the model need
    not exist because the grid is checked first."""
    done = subprocess.run([sys.executable, "-m", "robverify.cli", "sweep-epsilon", str(tmp_path / "m.onnx"),
                           "--grid", "0.1:x:0.1"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error: --grid") and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


# -- train, transfer ---------------------------------------------------------------------------------------------


def _card_writer(model_dir_arg: int | str):
    """A recorder result that writes a minimal model card beside ``<out>/model.onnx`` and returns that path."""
    from robverify.formats.model_card import ModelCard

    def write(*args, **kw):
        out = Path(args[model_dir_arg] if isinstance(model_dir_arg, int) else kw[model_dir_arg])
        out.mkdir(parents=True, exist_ok=True)
        card = ModelCard(architecture={"arch": "mlp"}, task="digits[0-4]", training={"method": "standard"},
                         clean_acc=0.9, pgd_acc=0.5, certified_acc=0.25, eps=0.1, train_time_s=1.0)
        card.to_json(out / "model.json")
        return out / "model.onnx"

    return write


def test_train_hands_its_options_to_train_source(monkeypatch, tmp_path):
    rec = Recorder(_card_writer(5))
    monkeypatch.setattr("trainers.pipeline.train_source", rec)
    result = invoke("train", "--task", "digits[0-4]", "--arch", "mlp", "--method", "trades", "--eps", "0.1",
                    "--epochs", "4", "--out", tmp_path / "src", "--lr", "0.002", "--batch-size", "32",
                    "--trades-beta", "3", "--seed", "5", "--data-root", tmp_path / "data", "--device", "cpu",
                    "--schedule", "cosine")
    assert result.exit_code == 0, result.output
    args, kw = rec.only
    assert args == ("digits[0-4]", "mlp", "trades", 0.1, 4, tmp_path / "src")
    assert type(args[3]) is float and type(args[4]) is int and isinstance(args[5], Path)
    assert kw == dict(seed=5, data_root=tmp_path / "data", device="cpu", progress=True, lr=0.002, batch_size=32,
                      trades_beta=3.0, schedule="cosine")
    assert "clean 0.900, PGD 0.500, certified 0.250 at eps 0.1" in result.stdout


def test_train_defaults(monkeypatch, tmp_path):
    rec = Recorder(_card_writer(5))
    monkeypatch.setattr("trainers.pipeline.train_source", rec)
    monkeypatch.chdir(tmp_path)
    assert invoke("train", "--task", "digits[0-4]").exit_code == 0
    args, kw = rec.only
    assert args == ("digits[0-4]", "cnn-small", "standard", 0.0, 3, Path("runs/model"))
    assert kw == dict(seed=0, data_root=None, device="cpu", progress=True, lr=1e-3, batch_size=128,
                      trades_beta=6.0, schedule="constant")


def test_transfer_hands_its_options_to_transfer_model(monkeypatch, tmp_path):
    rec = Recorder(_card_writer(3))
    monkeypatch.setattr("trainers.pipeline.transfer_model", rec)
    result = invoke("transfer", tmp_path / "src", "--task", "digits[5-9]", "--strategy", "partial-ft",
                    "--out", tmp_path / "dst", "--blocks", "2", "--epochs", "3", "--eps", "0.05", "--adv", "trades",
                    "--certified", "ibp", "--rank", "8", "--lr", "0.01", "--batch-size", "64", "--seed", "4")
    assert result.exit_code == 0, result.output
    args, kw = rec.only
    assert args == (tmp_path / "src", "digits[5-9]", "partial-ft", tmp_path / "dst")
    assert kw == dict(blocks=2, epochs=3, seed=4, data_root=None, device="cpu", eps=0.05, progress=True,
                      adv="trades", certified="ibp", rank=8, lr=0.01, batch_size=64, schedule="constant")
    assert type(kw["blocks"]) is int and type(kw["eps"]) is float
    rec.calls.clear()
    assert invoke("transfer", tmp_path / "src", "--task", "t", "--strategy", "full-ft", "--out",
                  tmp_path / "dst").exit_code == 0
    _, kw = rec.only
    assert (kw["blocks"], kw["eps"], kw["epochs"]) == (None, None, 2)
    # options not given are not passed: the strategy's defaults apply, and a given one that does not apply is an
    # error of transfer_model (never silently ignored)
    assert not {"adv", "certified", "rank", "objective"} & set(kw)


# -- export-vnnlib, verify -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_onnx(tmp_path_factory) -> Path:
    """An untrained linear classifier of digits[0-4] (1x8x8 -> 5), exported."""
    import torch

    from helpers import to_onnx

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5)).eval()
    return to_onnx(net, tmp_path_factory.mktemp("cli") / "digits.onnx", (1, 8, 8))


def test_export_vnnlib_hands_samples_and_settings_to_export_benchmark(monkeypatch, tmp_path, digits_onnx):
    from properties.benchmark import BenchmarkInstance

    def instances(model, x, label, sample_id, eps, out, **kw):  # two samples' worth: fewer than -n asks
        return [BenchmarkInstance("onnx/m.onnx", f"vnnlib/{s}.vnnlib", 30.0, s, 0, 0.01, None) for s in (1, 2)]

    rec = Recorder(instances)
    monkeypatch.setattr("properties.benchmark.export_benchmark", rec)
    result = invoke("export-vnnlib", digits_onnx, "--eps", "0.01", "--eps", "0.02", "--out", tmp_path / "bench",
                    "--task", "digits[0-4]", "-n", "3", "--targeted", "--timeout", "30", "--seed", "1")
    assert result.exit_code == 0, result.output
    (model, x, label, sample_id, eps, out), kw = rec.only
    assert model.path == digits_onnx and tuple(model.graph.input_shape) == (1, 8, 8)
    pool = 53  # min(total, max(4 n, n + 50)) candidates, so that n correctly classified ones are found
    assert tuple(x.shape) == (pool, 1, 8, 8) and label.shape == (pool,) and sample_id.shape == (pool,)
    assert sample_id.unique().numel() == pool
    assert eps == [0.01, 0.02] and out == tmp_path / "bench"
    assert kw == dict(n=3, n_classes=5, targeted=True, timeout=30.0, domain=(0.0, 1.0), task="digits[0-4]", seed=1)
    assert "warning: only 2 of the 53 samples" in result.stderr
    assert f"2 instances of 2 samples: {tmp_path / 'bench' / 'instances.csv'}" in result.stdout


def test_verify_hands_the_instance_to_answer_instance(monkeypatch, tmp_path):
    from robverify.engine.answer import Answer
    from robverify.formats.vnncomp_result import Result
    from robverify.spec import Method

    loaded = object()
    load = Recorder(loaded)
    answer = Recorder(Answer(Result.UNSAT, stage="crown", reason="proved", seconds=0.25))
    monkeypatch.setattr("robverify.ir.model.load_model", load)
    monkeypatch.setattr("robverify.engine.answer.answer_instance", answer)
    out = tmp_path / "res" / "result.txt"
    result = invoke("verify", "m.onnx", "p.vnnlib", "--timeout", "12", "--method", "CROWN", "--seed", "9",
                    "--out", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert load.only == ((Path("m.onnx"), "cpu"), {})
    args, kw = answer.only
    assert args == (loaded, Path("p.vnnlib"))
    assert kw["method"] is Method.CROWN and kw["timeout"] == 12.0 and kw["seed"] == 9
    assert isinstance(kw["start"], float) and math.isfinite(kw["start"])
    assert result.stdout == "unsat\n" and out.read_text() == "unsat\n"
    assert "unsat after 0.25 s (crown): proved" in result.stderr


# -- compare, run, demo, import-verona ---------------------------------------------------------------------------


class _Report:
    def __init__(self, out: Path) -> None:
        self.headline = pd.DataFrame({"strategy": ["full-ft"], "median": [0.02]})
        self.html = out / "report.html"


def test_compare_hands_runs_and_grid_to_compare_runs(monkeypatch, tmp_path):
    rec = Recorder(lambda runs, out, **kw: _Report(out))
    monkeypatch.setattr("robverify.analysis.report.compare_runs", rec)
    result = invoke("compare", tmp_path / "a", tmp_path / "b", "--out", tmp_path / "rep", "--eps", "0", "--eps",
                    "0.05", "--eps-ref", "0.1", "--seed", "3", "--allow-mixed")
    assert result.exit_code == 0, result.output
    args, kw = rec.only
    assert args == ([tmp_path / "a", tmp_path / "b"], tmp_path / "rep") and all(isinstance(p, Path) for p in args[0])
    assert kw == dict(eps=[0.0, 0.05], eps_ref=0.1, seed=3, allow_mixed=True)
    assert "full-ft" in result.stdout and "report.html" in result.stdout
    rec.calls.clear()
    assert invoke("compare", tmp_path / "a").exit_code == 0
    assert rec.only == (([tmp_path / "a"], Path("report")), dict(eps=None, eps_ref=None, seed=0, allow_mixed=False))


class _StudyResult:
    def outcome(self) -> list[str]:
        return ["3 of 3 steps ran", "report: here"]


def test_run_hands_the_parsed_study_to_run_study(monkeypatch, tmp_path):
    rec = Recorder(_StudyResult())
    monkeypatch.setattr("robverify.app.study.run_study", rec)
    study_file = REPO / "examples" / "demo_study.toml"
    result = invoke("run", study_file, "--out", tmp_path / "study")
    assert result.exit_code == 0, result.output
    (study, out), kw = rec.only
    assert study.path == study_file and study["source"]["task"] == "mnist5k[0-4]" and study["sweep"]["n"] == 40
    assert out == tmp_path / "study" and kw == {"console": cli.err_console}
    assert result.stdout.splitlines() == ["3 of 3 steps ran", "report: here"]
    rec.calls.clear()
    assert invoke("run", study_file).exit_code == 0
    assert rec.only[0][1] is None  # the study's own [study] out


def test_run_refuses_a_missing_study_file(monkeypatch, tmp_path, entry_point):
    monkeypatch.setattr("robverify.app.study.run_study", _refuse)
    code, _, err = entry_point("run", tmp_path / "nope.toml")
    assert code == 2 and err.strip() == f"error: study file not found: {tmp_path / 'nope.toml'}"


def test_demo_runs_the_embedded_study(monkeypatch, tmp_path):
    from robverify.app.study import DEMO_STUDY, parse_study

    rec = Recorder(_StudyResult())
    monkeypatch.setattr("robverify.app.study.run_study", rec)
    assert invoke("demo", "--out", tmp_path / "d").exit_code == 0
    (study, out), kw = rec.only
    assert study.settings == parse_study(DEMO_STUDY, Path("x")).settings and study.path == Path("<embedded demo study>")
    assert out == tmp_path / "d" and kw == {"console": cli.err_console}
    rec.calls.clear()
    assert invoke("demo").exit_code == 0
    assert rec.only[0][1] == Path("demo-out")


def test_import_verona_hands_its_arguments_to_the_library(monkeypatch, tmp_path):
    rec = Recorder(pd.DataFrame({"sample_id": [1, 2, 3]}))
    monkeypatch.setattr("robverify.app.commands.import_verona", rec)
    result = invoke("import-verona", tmp_path / "result_df.csv", "--out", tmp_path / "run", "--model", "net",
                    "--task", "mnist5k[0-4]")
    assert result.exit_code == 0, result.output
    assert rec.only == ((tmp_path / "result_df.csv", tmp_path / "run"), dict(model="net", task="mnist5k[0-4]"))
    assert f"3 samples from {tmp_path / 'result_df.csv'}" in result.stdout
    rec.calls.clear()
    assert invoke("import-verona", tmp_path / "r.csv", "--out", tmp_path / "o").exit_code == 0
    assert rec.only[1] == dict(model=None, task=None)


def test_every_command_is_covered_here():
    """A new command needs a test in this file that asserts what it hands to the library."""
    names = {c.name or c.callback.__name__.replace("_", "-") for c in cli.app.registered_commands}
    assert names == {"certify", "sweep-epsilon", "train", "transfer", "export-vnnlib", "verify", "compare", "run",
                     "demo", "import-verona"}
