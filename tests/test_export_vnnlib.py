"""robverify export-vnnlib: the VNN-COMP layout, boxes read back that contain the intended ones, and verdicts
of robverify and of Marabou's command line that never contradict each other on the exported instances."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from robverify.engine.answer import answer_instance
from properties.benchmark import export_benchmark, read_instances
from properties.onnx_export import export_onnx
from robverify.formats.vnnlib_read import read_vnnlib
from robverify.cli import app
from robverify.errors import RobverifyError
from robverify.ir.model import load_model
from robverify.formats.vnncomp_result import Result
from trainers.tasks import load_task, sample_test
from trainers.training import train_standard

TASK = "digits[0-3]"
MARABOU = Path(sys.executable).parent / "Marabou"


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory) -> Path:
    """A small MLP (64-16-8-4) trained briefly on digits[0-3], with only operators Marabou reads (the zoo's
    Normalize exports Sub/Div, which Marabou 2.0 rejects)."""
    torch.manual_seed(0)
    data = load_task(TASK)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    train_standard(model, data.x_train, data.y_train, epochs=15, lr=3e-3, seed=0)
    out = tmp_path_factory.mktemp("model") / "digits.onnx"
    export_onnx(model.eval(), out, data.input_shape)
    return out


@pytest.fixture(scope="module")
def zoo_digits_model(tmp_path_factory) -> Path:
    """A zoo MLP (Normalize first: broadcasting Sub/Div in ONNX) of the same size, trained the same way."""
    from trainers.zoo import build_model

    data = load_task(TASK)
    model = build_model("mlp", data.input_shape, 4, mean=[0.3], std=[0.4], seed=0, widths=(16, 8))
    train_standard(model, data.x_train, data.y_train, epochs=15, lr=3e-3, seed=0)
    out = tmp_path_factory.mktemp("zoo") / "zoo_digits.onnx"
    export_onnx(model.eval(), out, data.input_shape)
    return out


def _export(model: Path, out: Path, *extra: str) -> None:
    result = CliRunner().invoke(app, ["export-vnnlib", str(model), "--task", TASK, "--out", str(out), *extra])
    assert result.exception is None, result.exception
    assert result.exit_code == 0, result.stdout


def test_layout_instances_and_readme(digits_model, tmp_path):
    out = tmp_path / "bench"
    _export(digits_model, out, "-n", "3", "--eps", "0.02", "--eps", "0.1", "--timeout", "30", "--seed", "2")
    assert (out / "onnx" / "digits.onnx").read_bytes() == digits_model.read_bytes()
    lines = (out / "instances.csv").read_text().splitlines()
    assert len(lines) == 6
    for line in lines:
        onnx, vnnlib, timeout = line.split(",")
        assert onnx == "onnx/digits.onnx" and vnnlib.startswith("vnnlib/") and timeout == "30"
        assert (out / vnnlib).is_file()
    readme = (out / "README.md").read_text()
    assert "seed 2" in readme and TASK in readme and "correctly" in readme
    ids = [int(m) for m in re.findall(r"^\| (\d+) \|", readme, flags=re.M)]
    assert len(ids) == 3
    # the samples are the first correctly classified ones of the seeded order, and their boxes contain x +- eps
    model = load_model(digits_model)
    data = load_task(TASK, seed=2)
    x, y, sid = sample_test(data, 60, seed=2)
    correct = model.predict(x.reshape(60, -1).reshape(60, *model.graph.input_shape)) == y
    assert ids == sid[correct][:3].tolist()
    for (onnx, vnnlib, timeout) in read_instances(out):
        sample = int(re.search(r"_s(\d+)_", vnnlib.name).group(1))
        eps = 0.02 if "eps0p02" in vnnlib.name else 0.1
        xi = data.x_test[sample].reshape(-1).double()
        (prop,) = read_vnnlib(vnnlib, n_inputs=64, n_outputs=4)
        assert bool((prop.x_lo <= (xi - eps).clamp(0, 1)).all()) and bool((prop.x_hi >= (xi + eps).clamp(0, 1)).all())
        assert prop.n_groups == 3 and timeout == 30.0


def test_targeted_export_has_one_property_per_other_class(digits_model, tmp_path):
    out = tmp_path / "bench"
    _export(digits_model, out, "-n", "2", "--eps", "0.05", "--targeted")
    rows = read_instances(out)
    assert len(rows) == 2 * 3
    for _, vnnlib, _ in rows:
        (prop,) = read_vnnlib(vnnlib)
        assert prop.n_groups == 1 and prop.C.shape[0] == 1
        target = int(re.search(r"_t(\d+)\.vnnlib", vnnlib.name).group(1))
        assert prop.C[0, target] == -1.0


def test_export_rejects_bad_arguments(digits_model, tmp_path):
    model = load_model(digits_model)
    x = torch.rand(2, *model.graph.input_shape)
    label = torch.zeros(2, dtype=torch.long)
    for kwargs in [dict(eps=[]), dict(eps=[-0.1]), dict(eps=[math.inf]), dict(eps=[0.1], timeout=0.0)]:
        eps = kwargs.pop("eps")
        with pytest.raises(RobverifyError):
            export_benchmark(model, x, label, torch.arange(2), eps, tmp_path / "b", n=1, n_classes=4, **kwargs)


def _marabou_cli(onnx: Path, vnnlib: Path, timeout: int = 60) -> str:
    done = subprocess.run([str(MARABOU), str(onnx), str(vnnlib), "--verbosity", "0", "--timeout", str(timeout)],
                          capture_output=True, text=True, timeout=timeout + 60)
    words = [ln.strip().lower() for ln in done.stdout.splitlines() if ln.strip().lower() in ("sat", "unsat", "timeout")]
    return words[0] if words else "unknown"


def _consistency(digits_model: Path, tmp_path: Path, n: int, eps: list[str]) -> None:
    if not MARABOU.is_file() or shutil.which(str(MARABOU)) is None:
        pytest.skip("the Marabou command (maraboupy's wheel) is not installed")
    targeted, untargeted = tmp_path / "t", tmp_path / "u"
    args = ["-n", str(n)] + [a for e in eps for a in ("--eps", e)]
    _export(digits_model, targeted, *args, "--targeted")
    _export(digits_model, untargeted, *args)
    model = load_model(digits_model)
    # Marabou answers the single-constraint (targeted) files; the one2any answer is sat if any target is
    marabou: dict[str, list[str]] = {}
    ours: dict[str, list[str]] = {}
    for onnx, vnnlib, _ in read_instances(targeted):
        key = vnnlib.name.rsplit("_t", 1)[0]
        answer = _marabou_cli(onnx, vnnlib)
        mine = answer_instance(model, vnnlib, timeout=10).result.value
        assert not {answer, mine} == {"sat", "unsat"}, f"{vnnlib.name}: Marabou {answer}, robverify {mine}"
        marabou.setdefault(key, []).append(answer)
        ours.setdefault(key, []).append(mine)
    decided = 0
    for _, vnnlib, _ in read_instances(untargeted):
        key = vnnlib.name[: -len(".vnnlib")]
        answers = marabou[key]
        combined = "sat" if "sat" in answers else "unsat" if all(a == "unsat" for a in answers) else "unknown"
        mine = answer_instance(model, vnnlib, timeout=10).result
        assert not (mine is Result.UNSAT and combined == "sat"), vnnlib.name
        assert not (mine is Result.SAT and combined == "unsat"), vnnlib.name
        decided += mine in (Result.SAT, Result.UNSAT)
    assert decided > 0 and any(a in ("sat", "unsat") for v in marabou.values() for a in v)


def test_exported_instances_agree_with_marabous_cli(digits_model, tmp_path):
    _consistency(digits_model, tmp_path, 1, ["0.02", "0.1"])


def test_exported_zoo_model_is_read_by_marabous_cli(zoo_digits_model, tmp_path):
    """The export rewrites the zoo's Normalize (which Marabou's parser rejects) into a 1x1 Conv it reads."""
    _consistency(zoo_digits_model, tmp_path, 1, ["0.02", "0.1"])
    readme = (tmp_path / "u" / "README.md").read_text()
    assert "1x1 Conv" in readme and load_model(zoo_digits_model).sha256 in readme


@pytest.mark.slow
def test_exported_instances_agree_with_marabous_cli_many(digits_model, tmp_path):
    _consistency(digits_model, tmp_path, 6, ["0.01", "0.03", "0.06", "0.12"])
