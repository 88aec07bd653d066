"""--backend external against small fake VNN-COMP tools written here: honest, garbage, crash, overrun, lies."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest
import torch

from helpers import relu_mlp, to_onnx
from robverify.backends import BackendOptions, get_backend
from robverify.backends.external import ExternalBackend
from robverify.errors import RobverifyError
from robverify.ir.model import load_model
from robverify.spec import Verdict, robustness_spec
from robverify.formats.vnncomp_result import Result, format_result, parse_result

WIDTHS = (4, 8, 8, 3)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = to_onnx(relu_mlp(1, WIDTHS), tmp_path_factory.mktemp("net") / "mlp.onnx", (WIDTHS[0],))
    return load_model(path)


def _cases(model):
    """Samples with their labels: eps 0.5 (PGD falsifies all) and eps 0.001 (bounds prove most)."""
    x = torch.rand((6, WIDTHS[0]), generator=torch.Generator().manual_seed(3))
    return x, model.predict(x)


def _tool(folder: Path, body: str, prepare: str | None = None) -> str:
    """A run_instance.sh: ``body`` is Python run with argv ``v1 benchmark onnx vnnlib results timeout``."""
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "run_instance.sh"
    (folder / "tool.py").write_text(body)
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{folder / "tool.py"}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    if prepare is not None:
        p = folder / "prepare_instance.sh"
        p.write_text(prepare)
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    return str(script)


# An honest tool: reads the VNN-LIB box and rows (``(<= Y_a Y_b)``: unsafe if y_a <= y_b), answers "sat" with
# the first point of a 5^n grid over the box that onnxruntime puts in the unsafe region, else "unknown".
HONEST_SAT = r'''
import sys, itertools, re
import numpy as np, onnxruntime as ort
_, v, bench, onnx, vnnlib, results, timeout = sys.argv
text = open(vnnlib).read()
n = len(re.findall(r"declare-const X_", text))
lo = np.zeros(n); hi = np.zeros(n)
for i in range(n):
    hi[i] = float(re.search(rf"\(<= X_{i} ([^)\s]+)\)", text).group(1))
    lo[i] = float(re.search(rf"\(>= X_{i} ([^)\s]+)\)", text).group(1))
sess = ort.InferenceSession(onnx)
name = sess.get_inputs()[0].name
rows = re.findall(r"\(<= Y_(\d+) Y_(\d+)\)", text)
answer = "unknown\n"
for u in itertools.product(*[np.linspace(0, 1, 5)] * n):
    x = (lo + np.array(u) * (hi - lo)).astype(np.float32)
    y = sess.run(None, {name: x.reshape(1, -1)})[0].reshape(-1)
    if any(y[int(a)] <= y[int(b)] for a, b in rows):
        xs = " ".join(f"(X_{i} {float(x[i])!r})" for i in range(n))
        ys = " ".join(f"(Y_{j} {float(y[j])!r})" for j in range(len(y)))
        answer = f"sat\n({xs} {ys})\n"
        break
open(results, "w").write(answer)
'''


def _backend(model, cmd: str, timeout: float = 20.0) -> ExternalBackend:
    return get_backend("external")(model, "crown", options=BackendOptions(verifier_cmd=cmd, timeout=timeout))


def test_honest_sat_answers_are_confirmed_and_offered_to_falsify(tmp_path, model):
    backend = _backend(model, _tool(tmp_path / "honest", HONEST_SAT))
    x, label = _cases(model)
    spec = robustness_spec(x, label, 0.5, WIDTHS[-1])
    result = backend.verify(spec)
    assert not bool(result.verified.any())
    sat = [r for r in backend.records if r.verdict is Verdict.FALSIFIED]
    assert sat, [r.reason for r in backend.records]
    assert backend.n_queries == spec.batch_size
    # with PGD switched off, falsify still returns the tool's confirmed counterexamples
    backend.attack = type(backend.attack)(steps=0, restarts=0)
    fals = backend.falsify(spec, x)
    assert int(fals.falsified.sum()) == len(sat)


def test_prepare_instance_runs_first_with_the_vnncomp_arguments(tmp_path, model):
    log = tmp_path / "prepare.log"
    prepare = f'#!/bin/sh\necho "$@" >> "{log}"\n'
    body = "import sys; open(sys.argv[5], 'w').write('unknown\\n')\n"
    backend = _backend(model, _tool(tmp_path / "tool", body, prepare=prepare))
    x, label = _cases(model)
    backend.verify(robustness_spec(x[:1], label[:1], 0.5, WIDTHS[-1]))
    words = log.read_text().split()
    assert words[:2] == ["v1", "robverify"] and words[2].endswith(".onnx") and words[3].endswith(".vnnlib")
    assert backend.records[-1].verdict is Verdict.UNKNOWN
    # started through an interpreter, prepare_instance.sh is started the same way
    via_sh = _backend(model, f"sh {tmp_path / 'tool' / 'run_instance.sh'}")
    assert via_sh.prepare is not None and via_sh.prepare[0].endswith("sh")
    assert via_sh.prepare[1].endswith("prepare_instance.sh")
    via_sh.verify(robustness_spec(x[:1], label[:1], 0.5, WIDTHS[-1]))
    assert len(log.read_text().splitlines()) == 2


@pytest.mark.parametrize("body,verdict,needle", [
    ("import sys; open(sys.argv[5], 'w').write('I think it holds, probably\\n')\n", Verdict.ERROR, "unrecognised"),
    ("import sys; sys.stderr.write('segfault\\n'); sys.exit(3)\n", Verdict.ERROR, "exited with 3"),
    ("import sys\n", Verdict.ERROR, "no result file"),
    ("import sys; open(sys.argv[5], 'w').write('sat\\n')\n", Verdict.ERROR, "counterexample"),
    ("import sys; open(sys.argv[5], 'w').write('timeout\\n')\n", Verdict.TIMEOUT, "timeout"),
    ("import time; time.sleep(60)\n", Verdict.TIMEOUT, "ran past"),
])
def test_bad_tools_never_verify(tmp_path, model, body, verdict, needle):
    backend = _backend(model, _tool(tmp_path / "tool", body), timeout=1.0)
    backend.grace_s = 1.0
    x, label = _cases(model)
    spec = robustness_spec(x[:2], label[:2], 0.5, WIDTHS[-1])
    open_ = ~get_backend("native")(model, "crown").verify(spec).verified
    assert bool(open_.any()), "the bound proves everything: the tool is never asked"
    result = backend.verify(spec)
    assert not bool(result.verified[open_].any())
    asked = [r for r in backend.records]
    assert asked and all(r.verdict is verdict for r in asked), [(r.verdict, r.reason) for r in asked]
    assert all(needle in r.reason for r in asked), [r.reason for r in asked]


def test_lying_unsat_is_flagged_and_lying_sat_does_not_count(tmp_path, model):
    x, label = _cases(model)
    spec = robustness_spec(x, label, 0.5, WIDTHS[-1])
    liar = _backend(model, _tool(tmp_path / "unsat", "import sys; open(sys.argv[5], 'w').write('unsat\\n')\n"))
    assert not bool(liar.verify(spec).verified.any())
    assert liar.contradictions == spec.batch_size
    assert all(r.verdict is Verdict.ERROR and "PGD" in r.reason for r in liar.records)
    # the lying tool answers sat with the box centre: the clean sample, correctly classified
    centre = ("x = (lo + hi) / 2\n"
              "pairs = ' '.join(f'(X_{i} {float(v)!r})' for i, v in enumerate(x))\n"
              "open(results, 'w').write('sat\\n((' + pairs + '))')\n")
    body = HONEST_SAT.split("sess = ort")[0] + centre
    fibber = _backend(model, _tool(tmp_path / "sat", body))
    small = robustness_spec(x, label, 0.02, WIDTHS[-1])
    verified = fibber.verify(small).verified
    asked = [r for r in fibber.records]
    assert asked and all(r.verdict is Verdict.UNKNOWN and "not confirm" in r.reason for r in asked)
    assert torch.equal(verified, get_backend("native")(model, "crown").verify(small).verified)
    fibber.attack = type(fibber.attack)(steps=0, restarts=0)
    assert not bool(fibber.falsify(small, x).falsified.any())


def test_unknown_or_missing_command_is_a_user_error(tmp_path, model):
    with pytest.raises(RobverifyError, match="needs --verifier-cmd"):
        get_backend("external")(model, "crown", options=BackendOptions())
    with pytest.raises(RobverifyError, match="unknown verifier command"):
        _backend(model, str(tmp_path / "nowhere" / "run_instance.sh"))
    script = tmp_path / "run_instance.sh"
    script.write_text("#!/bin/sh\n")
    os.chmod(script, 0o644)
    with pytest.raises(RobverifyError, match="not executable"):
        _backend(model, str(script))


def test_result_files_round_trip_and_garbage_is_an_error():
    x = torch.tensor([0.1, -2.5e-8, 1.0], dtype=torch.float32)
    y = torch.tensor([3.0, -1.25], dtype=torch.float64)
    parsed = parse_result(format_result(Result.SAT, x, y), 3, 2)
    assert parsed.result is Result.SAT
    assert torch.equal(parsed.x, x.double()) and torch.equal(parsed.y, y)
    assert parse_result("holds\n", 3, 2).result is Result.UNSAT
    assert parse_result("violated\n((X_0 1) (X_1 2) (X_2 3))", 3, 2).result is Result.SAT
    for text, problem in [("", "empty"), ("maybe", "unrecognised"), ("sat\n((X_0 1) (X_1 2))", "X_2 missing"),
                          ("sat\n((X_0 1) (X_1 nan) (X_2 0))", "bad assignment"),
                          ("sat\n((X_0 1) (X_1 2) (X_2 3) (X_3 4))", "the model has 3 inputs"),
                          ("sat\n((X_0 1) (X_1 2) (X_2 1e999))", "bad assignment")]:
        parsed = parse_result(text, 3, 2)
        assert parsed.result is Result.ERROR and problem in parsed.problem, (text, parsed)
