"""Certified training methods side by side: crown-ibp, sabr, mtl-ibp and ibp-shi at the same budget.

Trains one architecture (default cnn-small) on mnist5k[0-4] at eps 0.1 with each method for the same epochs
(default 20, the demo's source budget; about 30 s per method on 2 cores for cnn-small),
batch size, attack steps and eps schedule (``robverify train``'s defaults: warmup 0.1, ramp 0.5), then prints
clean and PGD accuracy (the model card's: the whole test split, robverify.engine.attacks.pgd_attack, 40 steps,
2 restarts), CROWN-certified accuracy on the first ``--n`` test samples (the exported ONNX model through
robverify's ``native`` backend, bounds only) and the training seconds. Reruns reuse finished models.

    .venv/bin/python benchmarks/bench_certified_training.py --out /tmp/bench-certified
    .venv/bin/python benchmarks/bench_certified_training.py --epochs 1 --n 50 --arch mlp   # a smoke run
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from robverify.backends import get_backend
from robverify.formats.model_card import ModelCard
from robverify.ir.model import load_model
from robverify.spec import robustness_spec
from trainers.pipeline import train_source
from trainers.tasks import load_task

TASK, EPS = "mnist5k[0-4]", 0.1
METHODS = ("crown-ibp", "sabr", "mtl-ibp", "ibp-shi")
HYPER = {"batch_size": 64, "attack_steps": 5}
HEADER = ("| method     |  clean |    PGD |  CROWN | train s |\n"
          "|------------|--------|--------|--------|---------|")


def crown_accuracy(onnx: Path, task: str, seed: int, n: int) -> float:
    """Share of the first ``n`` test samples of ``task`` that CROWN (native backend) proves at ``EPS``."""
    data = load_task(task, seed=seed)
    x, y = data.x_test[:n], data.y_test[:n]
    backend = get_backend("native")(load_model(onnx), "crown")
    with backend.bounds_only():
        verified = backend.verify(robustness_spec(x, y, EPS, data.n_classes)).verified
    return float(verified.float().mean())


def row(method: str, folder: Path, n: int) -> str:
    card = ModelCard.from_json(folder / "model.json")
    crown = crown_accuracy(folder / "model.onnx", card.task, card.seed, n)
    return f"| {method:<10} | {card.clean_acc:6.3f} | {card.pgd_acc:6.3f} | {crown:6.3f} | {card.train_time_s:7.1f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/robverify-bench-certified"))
    parser.add_argument("--arch", default="cnn-small")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--n", type=int, default=500, help="test samples certified by CROWN (500: all)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)

    print(f"{TASK}, {args.arch}, eps {EPS}, {args.epochs} epochs, {HYPER}, CROWN on {args.n} test samples\n")
    print(HEADER)
    for method in args.methods:
        folder = args.out / f"{args.arch}-{method}-e{args.epochs}-s{args.seed}"
        if not (folder / "model.json").is_file():
            train_source(TASK, args.arch, method, EPS, args.epochs, folder, seed=args.seed, progress=False, **HYPER)
        print(row(method, folder, args.n), flush=True)


if __name__ == "__main__":
    main()
