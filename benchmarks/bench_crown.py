"""Benchmark: native bounds on cnn-small (1x28x28), 256 samples, eps = 1/255, and a robustness distribution.

Prints time per bound call and per sample and peak memory (RSS) for each method, then the time of a
100-sample CROWN robustness distribution to tol 1e-4. The model is trained here for 2 epochs on mnist5k
(standard training), so figures depend on how many neurons the interval bounds leave unstable.

    .venv/bin/python benchmarks/bench_crown.py [--samples 256] [--dist-samples 100]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--dist-samples", type=int, default=100)
    parser.add_argument("--eps", type=float, default=1 / 255)
    args = parser.parse_args()

    from bench_model import bench_cnn_small
    from robverify.backends.native import NativeBackend
    from robverify.engine.bounds import compute_bounds
    from robverify.ir.model import load_model
    from robverify.runs.search import critical_epsilon
    from robverify.spec import robustness_spec
    from trainers.tasks import sample_test

    with tempfile.TemporaryDirectory() as tmp:
        data, path = bench_cnn_small(Path(tmp))
        model = load_model(path)
    x, y, _ = sample_test(data, args.samples, seed=0)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cnn-small, {args.samples} samples, "
          f"eps {args.eps:.5f}")
    spec = robustness_spec(x, y, args.eps, 10)
    compute_bounds(model.graph, spec.select(torch.arange(4)), "crown")  # warm-up
    print(f"{'method':<12} {'time_s':>8} {'ms/sample':>10} {'verified':>9} {'peak_rss_gb':>12}")
    for method in ["ibp", "crown-ibp", "crown", "alpha-crown"]:
        start = time.perf_counter()
        result = compute_bounds(model.graph, spec, method)
        seconds = time.perf_counter() - start
        print(f"{method:<12} {seconds:8.2f} {1000 * seconds / args.samples:10.2f} "
              f"{float((result.margin_lb > 0).float().mean()):9.3f} {peak_rss_gb():12.2f}")
    correct = (model.predict(x) == y).nonzero().squeeze(1)[: args.dist_samples]
    backend = NativeBackend(model, "crown")
    timing = {"verify": [0, 0.0], "falsify": [0, 0.0]}

    def timed(name, call):
        def wrapper(*args):
            begin = time.perf_counter()
            out = call(*args)
            timing[name][0] += 1
            timing[name][1] += time.perf_counter() - begin
            return out
        return wrapper

    backend.verify, backend.falsify = timed("verify", backend.verify), timed("falsify", backend.falsify)
    start = time.perf_counter()
    res = critical_epsilon(backend, x[correct], y[correct], 10, tol=1e-4)
    seconds = time.perf_counter() - start
    (n_verify, t_verify), (n_falsify, t_falsify) = timing["verify"], timing["falsify"]
    print(f"robustness distribution: {correct.numel()} samples to tol 1e-4 with CROWN in {seconds:.1f} s, "
          f"{seconds / correct.numel():.2f} s per sample; bounds {t_verify:.1f} s in {n_verify} batched calls "
          f"({t_verify / max(n_verify, 1):.2f} s per call), attacks {t_falsify:.1f} s in {n_falsify} calls; "
          f"({int(res.n_calls.sum())} bound calls in all, {res.n_calls.float().mean():.1f} per sample); "
          f"median eps_lo {res.eps_lo.median():.4f}, median eps_hi {res.eps_hi.median():.4f}; "
          f"peak RSS {peak_rss_gb():.2f} GB")


if __name__ == "__main__":
    main()
