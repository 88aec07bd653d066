"""Benchmark: sweep-epsilon throughput with the local executor and with Ray (1 and 2 workers) on the same work.

The benchmarks' cnn-small (benchmarks/bench_model.py) swept on ``--n`` mnist5k test samples (CROWN, tol 1e-3,
chunks of ``--chunk`` samples), each configuration in a fresh run directory: local with 1 and 2 torch threads, Ray
with 1 and 2 workers (one thread each; the local Ray instance's start is timed separately, not in the sweep).
Prints seconds, samples per second and whether the brackets equal the local 1-thread run's.

    .venv/bin/python benchmarks/bench_executors.py [--n 256] [--chunk 32]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_model import bench_cnn_small  # noqa: E402


def sweep(model: Path, out: Path, executor: str, workers: int | None, n: int, chunk: int):
    from robverify.app.commands import ExecutorConfig, backend_options, prepare_sweep
    from robverify.runs.jobs import run_sweep
    from robverify.runs.sweep import SweepSettings

    settings = SweepSettings(tol=1e-3)
    prep = prepare_sweep(model, task="mnist5k[0-9]", n=n, method="crown", backend="native", settings=settings,
                         out=out, seed=0, device="cpu", data_root=None, batch_size=256, options=backend_options(),
                         executor=ExecutorConfig(executor, workers))
    with prep.executing() as chunks_on:
        if executor == "ray":
            chunks_on.worker_pids()  # actors up (model loaded) before the clock starts
        start = time.perf_counter()
        table = run_sweep(prep.run, prep.engine, prep.samples, settings, chunk=chunk, executor=chunks_on)
        return table, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=32)
    args = parser.parse_args()
    import ray

    with tempfile.TemporaryDirectory() as tmp:
        _, model = bench_cnn_small(Path(tmp))
        reference = None
        for name, executor, threads, workers in (("local, 1 thread", "local", 1, None),
                                                 ("local, 2 threads", "local", 2, None),
                                                 ("ray, 1 worker", "ray", 1, 1), ("ray, 2 workers", "ray", 1, 2)):
            torch.set_num_threads(threads)
            started = time.perf_counter()
            if executor == "ray":
                ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
            ray_start = time.perf_counter() - started
            table, seconds = sweep(model, Path(tmp) / name.replace(" ", "").replace(",", "-"), executor, workers,
                                   args.n, args.chunk)
            if executor == "ray":
                ray.shutdown()
            table = table.sort_values("sample_id").reset_index(drop=True)
            same = "-" if reference is None else str(bool(
                (table[["eps_lo", "eps_hi"]].to_numpy() == reference[["eps_lo", "eps_hi"]].to_numpy()).all()))
            reference = table if reference is None else reference

            print(f"{name:<18} {seconds:8.2f} s {args.n / seconds:8.2f} samples/s"
                  f"{f'  (Ray start {ray_start:.1f} s)' if executor == 'ray' else ''}  same brackets: {same}",
                  flush=True)


if __name__ == "__main__":
    main()
