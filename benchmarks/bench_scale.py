"""Benchmark: the native engine at CIFAR scale, every method, against the installed auto-LiRPA at equal work.

Networks (eps = 1/255 by default, L-inf boxes clipped to [0, 1], margins of the predicted class):
* ``mnist-cnn``: cnn-small on 1x28x28, the benchmarks' model (benchmarks/bench_model.py: 2 epochs on mnist5k),
  256 test samples;
* ``cifar-cnn``: ``Conv(3,32,4,s2,p1)-ReLU-Conv(32,64,4,s2,p1)-ReLU-Flatten-Linear(4096,512)-ReLU-Linear(512,10)``
  (zoo cnn-small with channels 32, 64 and hidden 512), seeded (seed 0), untrained, on 64 inputs uniform in [0, 1];
* ``resnet-tiny``: zoo resnet-tiny width 16 on 3x32x32, seeded (seed 0), untrained, 64 uniform inputs.

Equal work: the native engine runs without its CROWN-IBP early exit and IBP intersection
(``BoundOptions(intersect_ibp=False)``); auto-LiRPA gets the same boxes and margin matrix ``C`` in chunks of
``--lirpa-chunk`` samples (its memory grows fast with the batch). Each measurement runs in a fresh spawned
process: its peak RSS is its own. Prints one table: time, peak RSS (and peak CUDA memory on ``--device cuda``),
samples verified, max |native - lirpa| and max (lirpa - native) (> 0: auto-LiRPA tighter on some row).

    .venv/bin/python benchmarks/bench_scale.py [--networks mnist-cnn,cifar-cnn,resnet-tiny]
        [--methods ibp,crown-ibp,crown,alpha-crown] [--samples N] [--device cuda] [--no-lirpa]
        [--lirpa-skip network:method,...] [--lirpa-chunk 16] [--alpha-steps 20]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import queue as queue_module
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

NETWORKS = ("mnist-cnn", "cifar-cnn", "resnet-tiny")
METHODS = ("ibp", "crown-ibp", "crown", "alpha-crown")
#: auto-LiRPA 0.3 on 2 CPU cores: alpha-CROWN minutes per network, resnet-tiny CROWN over 10 minutes
LIRPA_SLOW = ("mnist-cnn:alpha-crown", "cifar-cnn:alpha-crown", "resnet-tiny:crown-ibp", "resnet-tiny:crown",
              "resnet-tiny:alpha-crown")
DEFAULT_SAMPLES = {"mnist-cnn": 256, "cifar-cnn": 64, "resnet-tiny": 64}
CIFAR_MEAN, CIFAR_STD = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def build_network(name: str, folder: Path, n: int, seed: int = 0) -> tuple[Path, torch.Tensor, torch.Tensor]:
    """Save the network (ONNX for mnist-cnn, a pickled module otherwise) in ``folder``; ``(path, x, label)``."""
    if name == "mnist-cnn":
        sys.path.insert(0, str(Path(__file__).parent))
        from bench_model import bench_cnn_small
        from trainers.tasks import sample_test

        data, path = bench_cnn_small(folder)
        x, y, _ = sample_test(data, n, seed=0)
        return path, x, y
    from trainers.zoo import build_model

    if name == "cifar-cnn":
        net = build_model("cnn-small", (3, 32, 32), 10, mean=CIFAR_MEAN, std=CIFAR_STD, seed=seed,
                          channels=[32, 64], hidden=512)
    elif name == "resnet-tiny":
        net = build_model("resnet-tiny", (3, 32, 32), 10, mean=CIFAR_MEAN, std=CIFAR_STD, seed=seed, width=16)
    else:
        raise SystemExit(f"unknown network {name!r}: expected one of {', '.join(NETWORKS)}")
    net = net.eval()
    x = torch.rand((n, 3, 32, 32), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        y = net(x).argmax(1)
    path = folder / f"{name}.pt"
    torch.save(net, path)
    return path, x, y


def _child(engine: str, method: str, path: str, spec, device: str, chunk: int, alpha_steps: int, threads: int,
           queue) -> None:
    """One measurement in this process: ``(rows [B, S] numpy, seconds, peak RSS GB, peak CUDA GB)``."""
    torch.set_num_threads(threads)
    from robverify.spec import Method

    source: Path | torch.nn.Module
    if path.endswith(".onnx"):
        from robverify.ir.model import load_model

        graph, source = load_model(path).graph, Path(path)
    else:
        from robverify.ir.from_module import from_module

        source = torch.load(path, weights_only=False).eval()
        graph = from_module(source, (3, 32, 32))
    spec = spec.to(device)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    if engine == "native":
        from robverify.engine.bounds import BoundOptions, compute_bounds

        graph.to(device)
        for p in (source.parameters() if isinstance(source, torch.nn.Module) else []):
            p.requires_grad_(False)
        options = BoundOptions(intersect_ibp=False, alpha_steps=alpha_steps)
        compute_bounds(graph, spec.select(torch.arange(2, device=device)), "crown-ibp", options)  # warm-up
        start = time.perf_counter()
        rows = compute_bounds(graph, spec, method, options).rows_lb
    else:
        from robverify.backends.lirpa import build_bounded_module, lirpa_rows

        bounded = build_bounded_module(source, graph.input_shape, device)
        if Method.parse(method) is Method.ALPHA_CROWN:
            bounded.set_bound_opts({"optimize_bound_args": {"ob_iteration": alpha_steps, "ob_lr": 0.5}})
        step = spec.batch_size if Method.parse(method) in (Method.IBP, Method.CROWN_IBP) else chunk
        start = time.perf_counter()
        parts = [lirpa_rows(bounded, spec.select(torch.arange(i, min(i + step, spec.batch_size), device=device)),
                            method) for i in range(0, spec.batch_size, step)]
        rows = torch.cat(parts)
        rows = rows - 1e-5 * (1.0 + rows.abs())  # the native float32 safety margin
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    cuda_gb = torch.cuda.max_memory_allocated() / 1024**3 if device.startswith("cuda") else float("nan")
    queue.put((rows.detach().cpu().numpy(), seconds, _peak_rss_gb(), cuda_gb))


def measure(engine: str, method: str, path: Path, spec, args) -> tuple[torch.Tensor, float, float, float] | None:
    """One measurement in a fresh process; None (its error already printed) when the child died."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(engine, method, str(path), spec, args.device, args.lirpa_chunk,
                                             args.alpha_steps, args.threads, queue))
    child.start()
    while True:
        try:
            rows, seconds, rss, cuda = queue.get(timeout=1.0)
            break
        except queue_module.Empty:
            if not child.is_alive() and queue.empty():
                print(f"{engine} {method}: the measuring process ended with exit code {child.exitcode}", flush=True)
                return None
    child.join()
    return torch.from_numpy(rows), seconds, rss, cuda


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--networks", default=",".join(NETWORKS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--samples", type=int, default=None, help="samples per network (default 256 / 64 / 64)")
    parser.add_argument("--eps", type=float, default=1 / 255)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--no-lirpa", action="store_true", help="native engine only")
    parser.add_argument("--lirpa-skip", default=",".join(LIRPA_SLOW),
                        help="network:method pairs auto-LiRPA skips, comma separated (default: the ones that take "
                        "it minutes to hours on 2 CPU cores)")
    parser.add_argument("--lirpa-chunk", type=int, default=16, help="samples per auto-LiRPA CROWN call")
    parser.add_argument("--alpha-steps", type=int, default=20)
    args = parser.parse_args()
    from robverify.spec import robustness_spec

    skip = {tuple(item.split(":")) for item in args.lirpa_skip.split(",") if item}
    print(f"torch {torch.__version__}, threads {args.threads}, device {args.device}, eps {args.eps:.5f}, "
          f"native with intersect_ibp=False, auto-LiRPA chunks of {args.lirpa_chunk} (CROWN, alpha-CROWN)")
    header = (f"{'network':<12} {'n':>4} {'method':<12} {'engine':<7} {'time_s':>8} {'peak_rss_gb':>11} "
              f"{'cuda_gb':>8} {'verified':>8} {'max|diff|':>10} {'lirpa-nat':>10}")
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.networks.split(","):
            n = args.samples or DEFAULT_SAMPLES[name]
            path, x, y = build_network(name, Path(tmp), n)
            spec = robustness_spec(x, y, args.eps, 10)
            for method in args.methods.split(","):
                measured = measure("native", method, path, spec, args)
                if measured is None:
                    continue
                native, t, rss, cuda = measured
                verified = int((spec.property_margin(native) > 0).sum())
                print(f"{name:<12} {n:>4} {method:<12} {'native':<7} {t:8.2f} {rss:11.2f} {cuda:8.2f} "
                      f"{verified:>8}", flush=True)
                if args.no_lirpa or (name, method) in skip:
                    continue
                measured = measure("lirpa", method, path, spec, args)
                if measured is None:
                    continue
                lirpa, t, rss, cuda = measured
                verified = int((spec.property_margin(lirpa) > 0).sum())
                diff = float((lirpa - native).abs().max())
                tighter = float((lirpa - native).max())
                print(f"{name:<12} {n:>4} {method:<12} {'lirpa':<7} {t:8.2f} {rss:11.2f} {cuda:8.2f} "
                      f"{verified:>8} {diff:10.2e} {tighter:10.2e}", flush=True)


if __name__ == "__main__":
    main()
