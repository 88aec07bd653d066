"""How many VNN-COMP 2021 instances ``robverify verify`` decides, and whether any answer contradicts the
ground truth.

    .venv/bin/python benchmarks/bench_vnncomp.py [--timeout 60] [--method alpha-crown] [--only mnistfc]
        [--threads N] [--log answers.csv] [--limit K] [--device cuda]

Runs every instance of ../shared/vnncomp2021 (``*_instances.csv``) in this process (each model loaded once;
the time per instance counts from after loading). Every ``sat`` answer is read back from its result text and
its counterexample re-checked in onnxruntime against the file's float64 property; an ``unsat`` where the
ground truth's consensus is ``sat`` is reported as UNSOUND. Prints one line per instance and a summary.
With ``--log``, every answer is appended to a CSV as it comes and instances already there are not run again (a long
run can be stopped and continued; the summary counts the logged answers of the instances selected).
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


_LOG_FIELDS = ["benchmark", "onnx", "vnnlib", "result", "seconds", "stage", "flag", "timeout"]


def _read_log(path: Path | None) -> dict[tuple[str, str, str], tuple[str, float, str, str]]:
    if path is None or not path.is_file():
        return {}
    with open(path, newline="") as handle:
        return {(r["benchmark"], r["onnx"], r["vnnlib"]): (r["result"], float(r["seconds"]), r["stage"], r["flag"])
                for r in csv.DictReader(handle)}


def _append_log(path: Path | None, key: tuple[str, str, str], word: str, seconds: float, stage: str, flag: str,
                timeout: float) -> None:
    if path is None:
        return
    new = not path.is_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(_LOG_FIELDS)
        writer.writerow([*key, word, f"{seconds:.3f}", stage, flag, f"{timeout:g}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO.parent / "shared" / "vnncomp2021")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per instance (robverify's default)")
    parser.add_argument("--method", default="alpha-crown")
    parser.add_argument("--only", default=None, help="one benchmark folder, e.g. mnistfc")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--log", type=Path, default=None, help="CSV of answers, appended to and resumed from")
    parser.add_argument("--limit", type=int, default=0, help="first K instances only (0: all)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (the engine's device)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads()))
    logged = _read_log(args.log)
    truth = _truth(args.root)
    models: dict[Path, object] = {}
    tally: Counter = Counter()
    unsound, unconfirmed = [], []
    total_s = 0.0
    instances = _instances(args.root, args.only)
    for bench, onnx, vnnlib, _ in instances[:args.limit or None]:
        key = (bench, onnx.name, vnnlib.name)
        gt = truth.get(key, "-")
        if key in logged:
            word, seconds, stage, flag = logged[key]
        else:
            if onnx not in models:
                models[onnx] = load_model(onnx, args.device)
            model = models[onnx]
            answer = answer_instance(model, vnnlib, timeout=args.timeout, method=args.method)
            word, seconds, stage, flag = answer.result.value, answer.seconds, answer.stage, ""
            if answer.result is Result.UNSAT and gt == "sat":
                flag = "UNSOUND"
            if answer.result is Result.SAT and not _recheck(model, vnnlib, format_result(answer.result, answer.x,
                                                                                          answer.y)):
                flag = "UNCONFIRMED"
            _append_log(args.log, key, word, seconds, stage, flag, args.timeout)
        total_s += seconds
        tally[word] += 1
        if flag == "UNSOUND":
            unsound.append(key[1:])
        if flag == "UNCONFIRMED":
            unconfirmed.append(key[1:])
        if word in ("sat", "unsat") and word == gt:
            tally["agree"] += 1
        print(f"{bench:8s} {onnx.name:22s} {vnnlib.name:20s} {word:8s} {seconds:7.2f}s "
              f"{stage:12s} truth={gt}{'  ' + flag if flag else ''}{'  (logged)' if key in logged else ''}",
              flush=True)
    n = sum(tally[w] for w in ("sat", "unsat", "unknown", "timeout", "error"))
    decided = tally["sat"] + tally["unsat"]
    print(f"\n{decided} of {n} instances decided at --timeout {args.timeout:g} s on {args.device} ({tally['sat']} sat, "
          f"{tally['unsat']} unsat, {tally['unknown']} unknown, {tally['timeout']} timeout, {tally['error']} error); "
          f"{tally['agree']} agree with the ground truth's consensus; total {total_s:.1f} s")
    print(f"unsat where the ground truth says sat: {len(unsound)} {unsound}")
    print(f"sat answers not confirmed when read back: {len(unconfirmed)} {unconfirmed}")
    if unsound or unconfirmed:
        sys.exit(1)


if __name__ == "__main__":
    main()
