"""How exact the robustness distribution is: brackets ``[eps_lo, eps_hi]`` by CROWN alone and by CROWN + branch and
bound (``sweep-epsilon --method bab``) on the same models and samples.

    .venv/bin/python benchmarks/bench_brackets.py [--study demo-out] [-n 100] [--tol 1e-3] [--timeout 10]
        [--models source,full-ft--mnist5k-5-9,adv-ft--mnist5k-5-9] [--threads 1] [--out bench-out/brackets]

Reads the models of a finished study (``robverify demo`` writes ``demo-out``). Each sweep is a normal, resumable
run directory under ``--out``: an interrupted benchmark continues where it stopped. Per model and method it prints
the share of correctly classified samples whose bracket is closed (status ``exact`` or ``robust``), the median
relative width ``(eps_hi - eps_lo) / eps_hi`` over them (1 where nothing was verified or nothing falsified, 0 for
``robust``), how the ends were decided, and the wall time; then the ratio of median widths crown / bab.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from robverify.app.commands import backend_options, sweep_epsilon  # noqa: E402
from robverify.runs.sweep import SweepSettings  # noqa: E402


def relative_width(table: pd.DataFrame) -> pd.Series:
    """``(eps_hi - eps_lo) / eps_hi`` per correctly classified row (see the module docstring for the ends)."""
    lo = table["eps_lo"].fillna(0.0)
    hi = table["eps_hi"]
    width = ((hi - lo) / hi).where(np.isfinite(hi) & (hi > 0), 1.0)
    return width.where(table["status"] != "robust", 0.0)


def _model_path(study: Path, name: str) -> Path:
    """The model of the study whose folder name starts with ``name`` followed by ``-`` (its hash)."""
    pattern = re.compile(rf"{re.escape(name)}-[0-9a-f]+")
    found = sorted(p for p in study.glob(f"**/{name}-*/model.onnx") if pattern.fullmatch(p.parent.name))
    if not found:
        raise SystemExit(f"no model {name!r} under {study} (run `robverify demo` first, or pass --models)")
    return found[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=REPO / "demo-out")
    parser.add_argument("--models", default="source,full-ft--mnist5k-5-9,adv-ft--mnist5k-5-9")
    parser.add_argument("-n", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-3)
    parser.add_argument("--eps-max", type=float, default=0.3)
    parser.add_argument("--timeout", type=float, default=10.0, help="BaB seconds per sample")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPO / "bench-out" / "brackets")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = SweepSettings(tol=args.tol, eps_max=args.eps_max)
    rows = []
    for name in args.models.split(","):
        model = _model_path(args.study, name)
        for method in ("crown", "bab"):
            out = args.out / name.replace("/", "_") / method
            start = time.perf_counter()
            _, table = sweep_epsilon(model, settings=settings, task=None, n=args.n, method=method, backend="native",
                                     out=out, seed=0, device="cpu", data_root=None, batch_size=256,
                                     options=backend_options(timeout=args.timeout if method == "bab" else None))
            wall = time.perf_counter() - start
            ok = table[table["status"] != "misclassified"]
            width = relative_width(ok)
            closed = ok["status"].isin(["exact", "robust"]).mean()
            by = ", ".join(f"{k} {v}" for k, v in sorted(ok["lo_by"].value_counts().items()))
            rows.append(dict(model=name, method=method, samples=len(ok), closed=closed, median_rel_width=width.median(),
                             mean_rel_width=width.mean(), lo_by=by, bab_s=ok["bab_s"].sum(), wall_s=wall))
            print(f"{name:28s} {method:6s} correct {len(ok):4d}  closed {closed:6.1%}  median rel width "
                  f"{width.median():.4f}  mean {width.mean():.4f}  lo_by [{by}]  BaB {ok['bab_s'].sum():7.1f} s  "
                  f"wall {wall:7.1f} s (resumed runs: time of this call)", flush=True)
    frame = pd.DataFrame(rows)
    print()
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    for name, group in frame.groupby("model", sort=False):
        w = dict(zip(group["method"], group["median_rel_width"]))
        ratio = w["crown"] / w["bab"] if w.get("bab") else float("inf")
        print(f"{name}: median relative width crown {w['crown']:.4f} -> bab {w['bab']:.4f} ({ratio:.1f}x narrower)")


if __name__ == "__main__":
    main()
