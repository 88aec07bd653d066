"""Benchmark: robverify's native engine against auto-LiRPA and against VERONA's pipeline.

1. cnn-small (1x28x28, trained 2 epochs on mnist5k as benchmarks/bench_crown.py does), 256 samples,
   eps = 1/255: native CROWN vs auto-LiRPA CROWN (batches of 32): time, peak RSS growth, max bound difference
   (against the native default and against the native engine without its IBP intersection).
2. The same model, a 100-sample robustness distribution on one eps grid: ``--backend native --grid`` vs
   ``--backend verona --verifier native-crown``: time ratio and whether the per-sample eps_lo are identical.

Each bound measurement runs in a fresh (spawned) child process, so its peak RSS is its own.

    .venv/bin/python benchmarks/bench_backends.py [--samples 256] [--dist-samples 100] [--grid 0:0.06:0.004]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def _current_rss_gb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 1024**3


def _bound_child(kind: str, model_path: str, spec, queue) -> None:
    """Bound ``spec`` in this child process; send back ``(rows [B, S], seconds, peak RSS growth GB)``."""
    from robverify.backends.lirpa import CROWN_CHUNK, build_bounded_module, lirpa_rows
    from robverify.engine.bounds import BoundOptions, compute_bounds
    from robverify.ir.model import load_model

    model = load_model(model_path)
    base = _current_rss_gb()
    start = time.perf_counter()
    if kind == "lirpa":
        bounded = build_bounded_module(Path(model_path), model.graph.input_shape)
        rows = torch.cat([lirpa_rows(bounded, spec.select(torch.arange(i, min(i + CROWN_CHUNK, spec.batch_size))),
                                     "crown") for i in range(0, spec.batch_size, CROWN_CHUNK)])
        rows = rows - 1e-5 * (1.0 + rows.abs())  # the backend's safety margin
    else:
        options = BoundOptions(intersect_ibp=(kind == "native"))
        rows = compute_bounds(model.graph, spec, "crown", options).rows_lb
    seconds = time.perf_counter() - start
    queue.put((rows.detach().cpu().numpy(), seconds, _rss_gb() - base))  # numpy: no shared-memory handles


def _measure(kind: str, model_path: Path, spec) -> tuple[torch.Tensor, float, float]:
    """``(rows, seconds, peak RSS growth GB)`` of one engine's CROWN on ``spec``, measured in a child process."""
    ctx = mp.get_context("spawn")  # a forked child of a process that ran torch's thread pool can hang
    queue = ctx.Queue()
    child = ctx.Process(target=_bound_child, args=(kind, str(model_path), spec, queue))
    child.start()
    rows, seconds, rss = queue.get()
    child.join()
    return torch.from_numpy(rows), seconds, rss


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--dist-samples", type=int, default=100)
    parser.add_argument("--eps", type=float, default=1 / 255)
    parser.add_argument("--grid", default="0:0.06:0.004")
    args = parser.parse_args()

    from bench_model import bench_cnn_small
    from robverify.backends import AttackConfig, BackendOptions, get_backend
    from robverify.runs.jobs import Samples, run_sweep
    from robverify.runs.rundir import RunDir
    from robverify.runs.sweep import SweepSettings, parse_grid
    from robverify.spec import robustness_spec
    from robverify.runs.verona_search import run_verona_sweep
    from trainers.tasks import sample_test

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data, path = bench_cnn_small(tmp)
        from robverify.ir.model import load_model

        model = load_model(path)
        x, y, sid = sample_test(data, max(args.samples, args.dist_samples), seed=0)
        print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cnn-small 1x28x28, "
              f"{args.samples} samples, eps {args.eps:.5f}")

        spec = robustness_spec(x[: args.samples], y[: args.samples], args.eps, 10)
        native, t_native, m_native = _measure("native", path, spec)
        plain, t_plain, m_plain = _measure("native-plain", path, spec)
        lirpa, t_lirpa, m_lirpa = _measure("lirpa", path, spec)
        scale = float(native.abs().max())
        print(f"{'engine':<28} {'time_s':>8} {'peak_rss_growth_gb':>19} {'verified':>9}")
        for name, rows, t, m in (("native CROWN", native, t_native, m_native),
                                 ("native CROWN, no IBP meet", plain, t_plain, m_plain),
                                 ("auto-LiRPA CROWN (batch 32)", lirpa, t_lirpa, m_lirpa)):
            verified = float((spec.property_margin(rows) > 0).float().mean())
            print(f"{name:<28} {t:8.2f} {m:19.2f} {verified:9.3f}")
        # The native default stops at CROWN-IBP for samples it already proves: compare rows where it did not.
        m_nat, m_lirpa = spec.property_margin(native), spec.property_margin(lirpa)
        open_ = m_nat <= 0
        looser = float((lirpa[open_] - native[open_]).max()) if bool(open_.any()) else float("nan")
        print(f"native / lirpa speed-up: {t_lirpa / t_native:.1f}x; "
              f"max |lirpa - native(no IBP meet)| = {float((lirpa - plain).abs().max()):.2e}; "
              f"max (lirpa - native) on the {int(open_.sum())} samples native leaves open = {looser:.2e} "
              f"(<= 0: native never looser); proved by lirpa only: {int(((m_lirpa > 0) & open_).sum())}; "
              f"bound scale {scale:.3g}")

        grid = parse_grid(args.grid)
        n = args.dist_samples
        samples = Samples(x[:n], y[:n], sid[:n], str(data.task), 10)
        attack = AttackConfig(seed=0)
        start = time.perf_counter()
        run = RunDir.open(tmp / "native", "sweep-epsilon", {}, {}, ["sample_id"])
        table_native = run_sweep(run, get_backend("native")(model, "crown", attack=attack), samples,
                                 SweepSettings(grid=grid))
        t_native = time.perf_counter() - start
        start = time.perf_counter()
        run = RunDir.open(tmp / "verona", "sweep-epsilon", {}, {}, ["sample_id"])
        verona = get_backend("verona")(model, "crown", attack=attack, options=BackendOptions(verifier="native-crown"))
        table_verona = run_verona_sweep(run, verona, samples, grid)
        t_verona = time.perf_counter() - start
        same_lo = np.array_equal(table_native["eps_lo"].to_numpy(), table_verona["eps_lo"].to_numpy(), equal_nan=True)
        hi_n, hi_v = table_native["eps_hi"].to_numpy(), table_verona["eps_hi"].to_numpy()
        same_hi = float(np.mean((hi_n == hi_v) | (np.isinf(hi_n) & np.isinf(hi_v))))
        print(f"robustness distribution, {n} samples, grid {args.grid} ({len(grid)} eps): native {t_native:.1f} s, "
              f"VERONA pipeline with native-crown {t_verona:.1f} s, ratio {t_verona / t_native:.1f}x; "
              f"eps_lo identical: {same_lo}; eps_hi equal on {100 * same_hi:.0f}% of samples; "
              f"bound calls native {int(table_native['n_calls'].sum())}, VERONA {int(table_verona['n_calls'].sum())}")


if __name__ == "__main__":
    main()
