"""Transfer strategies on mnist5k[0-4] -> mnist5k[5-9]: clean, PGD and CROWN-certified accuracy, training time.

Trains a robust source (cnn-small, ``--method`` at ``--eps``), transfers it with every strategy for the same number
of epochs, and prints one row per model from its model card (the test split of the target task, 500 samples;
certified = CROWN on robverify's engine at the training eps; PGD = robverify.engine.attacks.pgd_attack, 40 steps,
2 restarts). ``bn-adapt`` needs BatchNorm, so it runs from a second source, cnn-bn, trained the same way.
Reruns reuse finished models (checkpoints under ``--out``).

    .venv/bin/python benchmarks/bench_transfer.py --out /tmp/bench-transfer
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from robverify.formats.model_card import ModelCard
from trainers.evaluate import certified_accuracy
from trainers.pipeline import load_source, train_source, transfer_model
from trainers.strategies import STRATEGIES
from trainers.tasks import load_task

SOURCE, TARGET = "mnist5k[0-4]", "mnist5k[5-9]"


def _row(name: str, folder: Path, wall: float) -> str:
    card = ModelCard.from_json(folder / "model.json")
    model, _, _ = load_source(folder)
    data = load_task(card.task, seed=card.seed)
    crown = certified_accuracy(model, data.x_test, data.y_test, card.eps, data.n_classes, method="crown")
    trainable = sum(card.trainable.values())
    return (f"| {name:<28} | {card.clean_acc:6.3f} | {card.pgd_acc:6.3f} | {card.certified_acc:9.3f} | {crown:6.3f} "
            f"| {card.train_time_s:8.1f} | {wall:7.1f} | {trainable:>9} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/robverify-bench-transfer"))
    parser.add_argument("--method", default="crown-ibp")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--source-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (small nets: 1 is fastest)")
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    hyper = {"lr": 1e-3, "batch_size": 64}
    rows = []
    sources = {"cnn-small": args.out / "source-cnn-small", "cnn-bn": args.out / "source-cnn-bn"}
    for arch, folder in sources.items():
        if arch == "cnn-bn" and "bn-adapt" not in args.strategies:
            continue
        began = time.perf_counter()
        train_source(SOURCE, arch, args.method, args.eps, args.source_epochs, folder, seed=args.seed,
                     progress=False, **hyper)
        rows.append(_row(f"source {arch} ({args.method})", folder, time.perf_counter() - began))
        print(rows[-1], flush=True)
    for strategy in args.strategies:
        arch = "cnn-bn" if strategy == "bn-adapt" else "cnn-small"
        kwargs = {"blocks": 1} if STRATEGIES[strategy].needs_blocks else {}
        folder = args.out / strategy
        began = time.perf_counter()
        transfer_model(sources[arch], TARGET, strategy, folder, epochs=args.epochs, seed=args.seed, progress=False,
                       **kwargs, **hyper)
        label = strategy + (" K=1" if kwargs else "") + (" (cnn-bn)" if arch == "cnn-bn" else "")
        rows.append(_row(label, folder, time.perf_counter() - began))
        print(rows[-1], flush=True)

    print(f"\n{SOURCE} -> {TARGET}, eps {args.eps}, source {args.method} {args.source_epochs} epochs, "
          f"transfer {args.epochs} epochs, seed {args.seed}, {args.threads} thread(s)")
    print("| model                        |  clean |    PGD | CROWN-IBP |  CROWN |  train s |  wall s | trainable |")
    print("|------------------------------|--------|--------|-----------|--------|----------|---------|-----------|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
