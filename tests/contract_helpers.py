"""Fixtures of the backend contract tests (tests/test_backend_contract.py): the options each registered backend
needs, a small honest VNN-COMP tool for ``--backend external``, tiny networks (a plain one and two whose float32
outputs overflow to NaN / inf in a corner of the input space) and an independent onnxruntime judge.

The judge deliberately shares no code with robverify: it opens its own ``onnxruntime.InferenceSession`` and
evaluates the spec's rows with numpy, so a bug in :meth:`robverify.ir.model.LoadedModel.confirm` or in
:meth:`robverify.spec.Spec.output_margin` cannot hide a bad counterexample.
"""

from __future__ import annotations

import functools
import stat
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

from helpers import tiny_net
from robverify.backends import AttackConfig, Backend, BackendOptions, get_backend
from robverify.ir.model import LoadedModel
from robverify.spec import Spec

#: per-sample input shape and classes of the contract networks (an image-shaped input, so that reshapes show)
INPUT_SHAPE = (1, 3, 3)
N_CLASSES = 3
#: small enough that the contract's batches (up to 9 specs) are cut into several chunks
BATCH_SIZE = 4
#: the falsifier inside the backends: cheap, seeded
ATTACK = AttackConfig(steps=20, restarts=2, seed=0)
#: seconds per query of the complete verifiers (the contract's queries take milliseconds)
TIMEOUT = 10.0


def plain_net() -> nn.Module:
    """Flatten -> Linear(9, 10) -> ReLU -> Linear(10, 3), seeded: decisions vary inside [0, 1]^9."""
    return tiny_net("mlp-image", 0)


#: the first input element above which the overflow networks stop computing finite outputs
TRIGGER = 0.999
#: the output of ``overflow_net("inf")`` that becomes +inf (not the class plain_net gives near x_0 = 1)
INF_OUTPUT = 0
_BIG = 1e30


def overflow_net(kind: str) -> nn.Module:
    """:func:`plain_net` with a hidden unit ``h = relu(1e30 (x_0 - TRIGGER))`` that is 0 almost everywhere and
    ~1e26 when ``x_0 > TRIGGER``; there the float32 outputs stop being finite, while in real (or float64)
    arithmetic the network is :func:`plain_net` everywhere.

    ``"nan"``: a second layer turns ``h`` into ``inf`` and the last layer multiplies it by 0 (``0 * inf``): every
    output is NaN (in onnxruntime and in torch). ``"inf"``: the last layer adds ``1e30 h - 1e30 h`` to output
    :data:`INF_OUTPUT`: onnxruntime computes ``+inf`` there, torch ``NaN``."""
    base = plain_net()
    l1, l2 = base[1], base[3]
    with torch.no_grad():
        first = nn.Linear(9, 12 if kind == "inf" else 11)
        first.weight.zero_()
        first.bias.zero_()
        first.weight[:10] = l1.weight
        first.bias[:10] = l1.bias
        first.weight[10:, 0] = _BIG
        first.bias[10:] = -TRIGGER * _BIG
        if kind == "inf":
            last = nn.Linear(12, N_CLASSES)
            last.weight.zero_()
            last.weight[:, :10] = l2.weight
            last.bias.copy_(l2.bias)
            last.weight[INF_OUTPUT, 10], last.weight[INF_OUTPUT, 11] = _BIG, -_BIG
            return nn.Sequential(nn.Flatten(), first, nn.ReLU(), last).eval()
        if kind != "nan":
            raise ValueError(f"overflow_net: expected 'nan' or 'inf', got {kind!r}")
        middle = nn.Linear(11, 11)
        middle.weight.zero_()
        middle.bias.zero_()
        middle.weight[:10, :10] = torch.eye(10)
        middle.weight[10, 10] = _BIG
        last = nn.Linear(11, N_CLASSES)
        last.weight.zero_()
        last.weight[:, :10] = l2.weight
        last.bias.copy_(l2.bias)
    return nn.Sequential(nn.Flatten(), first, nn.ReLU(), middle, nn.ReLU(), last).eval()


# ------------------------------------------------------------------------------------------ independent judge


@functools.lru_cache(maxsize=None)
def _session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def ort_outputs(model_path: Path | str, x: np.ndarray | torch.Tensor) -> np.ndarray:
    """onnxruntime's outputs ``[N, n_out]`` (float64) for inputs ``[N, *in]``, from a session of our own."""
    sess = _session(str(model_path))
    inp = sess.get_inputs()[0]
    arr = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
    arr = arr.reshape(-1, *INPUT_SHAPE)
    out = sess.run(None, {inp.name: arr})[0]
    return np.asarray(out, dtype=np.float64).reshape(arr.shape[0], -1)


def spec_arrays(spec: Spec) -> tuple[np.ndarray, ...]:
    """The spec as float64 numpy arrays: ``lo, hi [B, n_in]``, ``C [B, S, n_out]``, ``d [B, S]``, ``group [S]``."""
    def a(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().double().numpy()

    B = spec.batch_size
    return (a(spec.x_lo).reshape(B, -1), a(spec.x_hi).reshape(B, -1), a(spec.C), a(spec.d),
            spec.group.detach().cpu().numpy())


def unsafe(C: np.ndarray, d: np.ndarray, group: np.ndarray, y: np.ndarray) -> np.ndarray:
    """VNN-LIB semantics of one sample's unsafe region for outputs ``y`` ``[M, n_out]``: ``[M]`` bool, True where
    some group has every row ``C.y <= d``. A row involves only the outputs it names (non-zero coefficients), so an
    infinite output elsewhere does not touch it; a NaN row is never ``<= d``."""
    with np.errstate(invalid="ignore"):
        terms = np.where(C[None] != 0, C[None] * y[:, None, :], 0.0)  # [M, S, n_out]
        rows = terms.sum(axis=2) - d  # [M, S]
        hit = np.zeros(y.shape[0], dtype=bool)
        for k in np.unique(group):
            hit |= np.all(rows[:, group == k] <= 0, axis=1)
    return hit


def violations(model_path: Path | str, spec: Spec, x: torch.Tensor) -> np.ndarray:
    """``[B]`` bool: ``x[b]`` (as float32, what onnxruntime is fed) lies in box ``b`` and its output is unsafe."""
    lo, hi, C, d, group = spec_arrays(spec)
    x32 = x.detach().cpu().to(torch.float32).double().numpy().reshape(spec.batch_size, -1)
    inside = np.all((x32 >= lo) & (x32 <= hi), axis=1)
    y = ort_outputs(model_path, x32)
    hit = np.array([bool(unsafe(C[b], d[b], group, y[b:b + 1])[0]) for b in range(spec.batch_size)], dtype=bool)
    return inside & hit


def sampled_violations(model_path: Path | str, spec: Spec, *, n_uniform: int = 1500, seed: int = 0) -> np.ndarray:
    """``[B]`` bool: some point of box ``b`` among its centre, all 2^9 vertices and ``n_uniform`` seeded uniform
    points is unsafe by onnxruntime (a dense sampling oracle for the 9-input contract networks)."""
    lo, hi, C, d, group = spec_arrays(spec)
    rng = np.random.default_rng(seed)
    n_in = lo.shape[1]
    corners = ((np.arange(2 ** n_in)[:, None] >> np.arange(n_in)) & 1).astype(np.float64)
    found = np.zeros(spec.batch_size, dtype=bool)
    for b in range(spec.batch_size):
        unit = np.concatenate([np.full((1, n_in), 0.5), corners, rng.random((n_uniform, n_in))])
        points = (lo[b] + unit * (hi[b] - lo[b])).astype(np.float32)
        points = np.minimum(np.maximum(points.astype(np.float64), lo[b]), hi[b]).astype(np.float32)
        keep = np.all((points.astype(np.float64) >= lo[b]) & (points.astype(np.float64) <= hi[b]), axis=1)
        y = ort_outputs(model_path, points[keep])
        found[b] = bool(unsafe(C[b], d[b], group, y).any())
    return found


def strong_pgd_violations(model: LoadedModel, spec: Spec, seed: int = 1) -> np.ndarray:
    """``[B]`` bool: a strong PGD run (100 steps, 6 restarts) finds a point that :func:`violations` confirms."""
    from robverify.engine.attacks import pgd_attack

    result = pgd_attack(model.graph, spec, steps=100, restarts=6, seed=seed)
    return violations(model.path, spec, result.x_adv) & result.found.cpu().numpy()


# ----------------------------------------------------------------------------------------- the VNN-COMP tool

# An honest VNN-COMP tool: reads the VNN-LIB box and rows, evaluates the centre, every vertex and 2000 seeded
# uniform points of the box in one onnxruntime call, answers "sat" with the first unsafe one, else "unknown".
HONEST_TOOL = r'''
import re, sys
import numpy as np, onnxruntime as ort
_, version, bench, onnx, vnnlib, results, timeout = sys.argv
text = open(vnnlib).read()
n = len(re.findall(r"declare-const X_", text))
lo = np.array([float(re.search(rf"\(>= X_{i} ([^)\s]+)\)", text).group(1)) for i in range(n)])
hi = np.array([float(re.search(rf"\(<= X_{i} ([^)\s]+)\)", text).group(1)) for i in range(n)])
groups = [re.findall(r"\(<= Y_(\d+) Y_(\d+)\)", g) for g in re.findall(r"\(and ((?:\(<= Y_\d+ Y_\d+\)\s*)+)\)", text)]
opts = ort.SessionOptions(); opts.intra_op_num_threads = 1
sess = ort.InferenceSession(onnx, opts, providers=["CPUExecutionProvider"])
inp = sess.get_inputs()[0]
corners = ((np.arange(2 ** n)[:, None] >> np.arange(n)) & 1) if n <= 12 else np.zeros((0, n))
unit = np.concatenate([np.full((1, n), 0.5), corners, np.random.default_rng(0).random((2000, n))])
x = np.clip(lo + unit * (hi - lo), lo, hi).astype(np.float32)
x = x[np.all((x >= lo) & (x <= hi), axis=1)]
shape = [int(s) for s in inp.shape[1:]]
y = np.asarray(sess.run(None, {inp.name: x.reshape(x.shape[0], *shape)})[0]).reshape(x.shape[0], -1)
answer = "unknown\n"
for m in range(x.shape[0]):
    if any(all(y[m, int(a)] <= y[m, int(b)] for a, b in g) for g in groups):
        xs = " ".join(f"(X_{i} {float(x[m, i])!r})" for i in range(n))
        ys = " ".join(f"(Y_{j} {float(y[m, j])!r})" for j in range(y.shape[1]))
        answer = f"sat\n({xs} {ys})\n"
        break
open(results, "w").write(answer)
'''


def write_tool(folder: Path, body: str = HONEST_TOOL) -> str:
    """``folder/run_instance.sh`` running ``body`` (Python, VNN-COMP argv) with this interpreter; its path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tool.py").write_text(body)
    script = folder / "run_instance.sh"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{folder / "tool.py"}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


# --------------------------------------------------------------------------------------------- the backends


def options_for(name: str, tool: str) -> BackendOptions:
    """What ``--backend name`` needs. A backend registered later gets no options: if it needs some, the
    contract tests fail at construction, which is the signal to add its entry here."""
    return {
        "verona": BackendOptions(verifier="native-crown", timeout=TIMEOUT),
        "marabou": BackendOptions(timeout=TIMEOUT),
        "external": BackendOptions(verifier_cmd=tool, timeout=TIMEOUT),
    }.get(name, BackendOptions())


def build_backend(name: str, model: LoadedModel, tool: str, *, batch_size: int = BATCH_SIZE) -> Backend:
    return get_backend(name)(model, "crown", batch_size=batch_size, attack=ATTACK, options=options_for(name, tool))
