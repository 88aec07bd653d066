"""How many VNN-COMP 2021 instances ``robverify verify`` decides, and whether any answer contradicts the
ground truth.

    .venv/bin/python benchmarks/bench_vnncomp.py [--timeout 60] [--method alpha-crown] [--only mnistfc]

Runs every instance of ../shared/vnncomp2021 (``*_instances.csv``) in this process (each model loaded once;
the time per instance counts from after loading). Every ``sat`` answer is read back from its result text and
its counterexample re-checked in onnxruntime against the file's float64 property; an ``unsat`` where the
ground truth's consensus is ``sat`` is reported as UNSOUND. Prints one line per instance and a summary.
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
from robverify.formats.vnnlib_read import read_vnnlib  # noqa: E402
from robverify.ir.model import load_model  # noqa: E402
from robverify.formats.vnncomp_result import Result, format_result, parse_result  # noqa: E402


def _instances(root: Path, only: str | None) -> list[tuple[str, Path, Path, float]]:
    rows = []
    for table in sorted(root.glob("*/*_instances.csv")):
        bench = table.parent.name
        if only and bench != only:
            continue
        with open(table, newline="") as handle:
            for onnx, vnnlib, timeout in csv.reader(handle):
                rows.append((bench, table.parent / onnx.strip(), table.parent / vnnlib.strip(), float(timeout)))
    return rows


def _truth(root: Path) -> dict[tuple[str, str, str], str]:
    with open(root / "ground_truth.csv", newline="") as handle:
        return {(r["benchmark"], r["onnx"], r["vnnlib"]): r["consensus"] for r in csv.DictReader(handle)}


def _recheck(model, vnnlib: Path, text: str) -> bool:
    """The sat answer's counterexample, read back from its text, violates one of the file's properties."""
    shape = model.graph.input_shape
    parsed = parse_result(text, math.prod(shape), model.graph.n_outputs)
    if parsed.result is not Result.SAT:
        return False
    x = parsed.x.to(torch.float32).reshape(1, *shape)
    for prop in read_vnnlib(vnnlib, n_inputs=math.prod(shape), n_outputs=model.graph.n_outputs):
        if bool(model.confirm(prop.to_spec(shape, torch.float64), x, torch.ones(1, dtype=torch.bool))[0]):
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "vnncomp2021")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per instance (robverify's default)")
    parser.add_argument("--method", default="alpha-crown")
    parser.add_argument("--only", default=None, help="one benchmark folder, e.g. mnistfc")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    truth = _truth(args.root)
    models: dict[Path, object] = {}
    tally: Counter = Counter()
    unsound, unconfirmed = [], []
    total_s = 0.0
    for bench, onnx, vnnlib, _ in _instances(args.root, args.only):
        if onnx not in models:
            models[onnx] = load_model(onnx)
        model = models[onnx]
        answer = answer_instance(model, vnnlib, timeout=args.timeout, method=args.method)
        total_s += answer.seconds
        gt = truth.get((bench, onnx.name, vnnlib.name), "-")
        tally[answer.result.value] += 1
        flag = ""
        if answer.result is Result.UNSAT and gt == "sat":
            unsound.append((onnx.name, vnnlib.name))
            flag = "  UNSOUND"
        if answer.result is Result.SAT and not _recheck(model, vnnlib, format_result(answer.result, answer.x,
                                                                                      answer.y)):
            unconfirmed.append((onnx.name, vnnlib.name))
            flag = "  UNCONFIRMED"
        if answer.result.value in ("sat", "unsat") and gt in ("sat", "unsat") and answer.result.value == gt:
            tally["agree"] += 1
        print(f"{bench:8s} {onnx.name:22s} {vnnlib.name:20s} {answer.result.value:8s} {answer.seconds:7.2f}s "
              f"{answer.stage:12s} truth={gt}{flag}", flush=True)
    n = sum(tally[w] for w in ("sat", "unsat", "unknown", "timeout", "error"))
    decided = tally["sat"] + tally["unsat"]
    print(f"\n{decided} of {n} instances decided at --timeout {args.timeout:g} s ({tally['sat']} sat, "
          f"{tally['unsat']} unsat, {tally['unknown']} unknown, {tally['timeout']} timeout, {tally['error']} error); "
          f"{tally['agree']} agree with the ground truth's consensus; total {total_s:.1f} s")
    print(f"unsat where the ground truth says sat: {len(unsound)} {unsound}")
    print(f"sat answers not confirmed when read back: {len(unconfirmed)} {unconfirmed}")
    if unsound or unconfirmed:
        sys.exit(1)


if __name__ == "__main__":
    main()
