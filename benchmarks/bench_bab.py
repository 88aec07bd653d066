"""How many VNN-COMP 2021 instances that bounds and PGD alone leave open ``robverify verify`` decides with branch
and bound, and whether any answer contradicts the ground truth.

    .venv/bin/python benchmarks/bench_bab.py [--timeout 30] [--only mnist-net_256x2.onnx] [--limit 10] [--threads 1]

An instance is *open* when alpha-CROWN's margin is ``<= 0`` and PGD (40 steps, 3 restarts) finds no
counterexample: what ``robverify verify`` answered ``unknown`` before branch and bound. Each open instance is then
answered by :func:`robverify.engine.answer.answer_instance` within ``--timeout`` seconds; every ``sat`` is
re-checked in onnxruntime, an ``unsat`` where the ground truth says ``sat`` is reported as UNSOUND.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
from collections import Counter
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robverify.engine.answer import answer_instance  # noqa: E402
from robverify.engine.attacks import pgd_attack  # noqa: E402
from robverify.engine.bounds import compute_bounds  # noqa: E402
from robverify.formats.vnnlib_read import read_vnnlib  # noqa: E402
from robverify.formats.vnncomp_result import Result  # noqa: E402
from robverify.ir.model import load_model  # noqa: E402


def _is_open(model, vnnlib: Path) -> bool:
    shape = model.graph.input_shape
    for prop in read_vnnlib(vnnlib, n_inputs=math.prod(shape), n_outputs=model.graph.n_outputs):
        spec = prop.to_spec(shape, torch.float32)
        if float(compute_bounds(model.graph, spec, "alpha-crown").margin_lb[0]) > 0:
            continue
        if bool(pgd_attack(model.graph, spec, steps=40, restarts=3).found[0]):
            return False
        return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "vnncomp2021")
    parser.add_argument("--timeout", type=float, default=30.0)
    parser.add_argument("--only", default=None, help="one onnx file name, e.g. mnist-net_256x2.onnx")
    parser.add_argument("--limit", type=int, default=None, help="at most this many open instances")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with open(args.root / "ground_truth.csv", newline="") as handle:
        truth = {(r["onnx"], r["vnnlib"]): r["consensus"] for r in csv.DictReader(handle)}
    with open(args.root / "mnistfc" / "mnistfc_instances.csv", newline="") as handle:
        rows = [(o.strip(), v.strip()) for o, v, _ in csv.reader(handle)]
    models: dict[str, object] = {}
    tally: Counter = Counter()
    unsound = []
    n_open = 0
    for onnx, vnnlib in rows:
        if args.only and onnx != args.only:
            continue
        if args.limit is not None and n_open >= args.limit:
            break
        if onnx not in models:
            models[onnx] = load_model(args.root / "mnistfc" / onnx)
        model = models[onnx]
        path = args.root / "mnistfc" / vnnlib
        if not _is_open(model, path):
            continue
        n_open += 1
        began = time.perf_counter()
        answer = answer_instance(model, path, timeout=args.timeout)
        gt = truth.get((onnx, vnnlib), "-")
        flag = ""
        if answer.result is Result.UNSAT and gt == "sat":
            unsound.append((onnx, vnnlib))
            flag = "  UNSOUND"
        tally[answer.result.value] += 1
        print(f"{onnx:22s} {vnnlib:20s} {answer.result.value:8s} {time.perf_counter() - began:6.1f}s "
              f"{answer.stage:10s} truth={gt:8s} {answer.reason[:90]}{flag}", flush=True)
    decided = tally["sat"] + tally["unsat"]
    print(f"\n{decided} of {n_open} open instances decided at --timeout {args.timeout:g} s, {args.threads} threads "
          f"({tally['sat']} sat, {tally['unsat']} unsat, {tally['unknown']} unknown, {tally['timeout']} timeout)")
    print(f"unsat where the ground truth says sat: {len(unsound)} {unsound}")
    if unsound:
        sys.exit(1)


if __name__ == "__main__":
    main()
