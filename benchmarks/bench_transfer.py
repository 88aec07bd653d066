"""Every transfer strategy on the demo's source and one target: clean, PGD and CROWN-certified accuracy, time.

Trains the demo's source (``robverify demo``: crown-ibp cnn-small on mnist5k[0-4], eps 0.1, 20 epochs, batch 64)
once -- or reads a trained one from ``--source`` -- and transfers it to ``--target`` with every strategy for the
demo's transfer budget (5 epochs, batch 64, 5 attack steps; partial-ft K=1). cnn-small has no BatchNorm, so the
strategies that need it (bn-adapt, bn-adapt-adv, lora-bn, twins) run from a second source, the same recipe on
cnn-bn (``--bn-source`` reads a trained one; ``--no-bn`` reports them as "needs BatchNorm" instead).
Accuracies are the model cards' (the target's test split, ``--n`` samples; PGD = robverify.engine.attacks.pgd_attack,
40 steps, 2 restarts) plus CROWN on robverify's native engine at the training eps. Reruns reuse finished models.

    .venv/bin/python benchmarks/bench_transfer.py --out /tmp/bench-transfer
    .venv/bin/python benchmarks/bench_transfer.py --source-epochs 1 --epochs 1 --n 200 --strategies full-ft twins
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

SOURCE_TASK, TARGET, METHOD, EPS = "mnist5k[0-4]", "mnist5k[5-9]", "crown-ibp", 0.1
SOURCE_HYPER = {"batch_size": 64}
TRANSFER_HYPER = {"batch_size": 64, "attack_steps": 5}
HEADER = ("| strategy                  |  clean |    PGD |  CROWN | train s |\n"
          "|---------------------------|--------|--------|--------|---------|")


def _row(name: str, folder: Path, n: int) -> str:
    card = ModelCard.from_json(folder / "model.json")
    model, _, _ = load_source(folder)
    data = load_task(card.task, seed=card.seed)
    x, y = data.x_test[:n], data.y_test[:n]
    crown = certified_accuracy(model, x, y, card.eps, data.n_classes, method="crown")
    return (f"| {name:<25} | {card.clean_acc:6.3f} | {card.pgd_acc:6.3f} | {crown:6.3f} "
            f"| {card.train_time_s:7.1f} |")


def _source(arch: str, given: Path | None, out: Path, epochs: int, seed: int) -> Path:
    if given is not None:
        return given
    folder = out / f"source-{arch}"
    train_source(SOURCE_TASK, arch, METHOD, EPS, epochs, folder, seed=seed, progress=False, **SOURCE_HYPER)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/robverify-bench-transfer"))
    parser.add_argument("--source", type=Path, help="a trained source folder (default: train the demo's)")
    parser.add_argument("--bn-source", type=Path, help="a trained cnn-bn source for the BatchNorm strategies")
    parser.add_argument("--no-bn", action="store_true", help="report the BatchNorm strategies as 'needs BatchNorm'")
    parser.add_argument("--target", default=TARGET)
    parser.add_argument("--source-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--n", type=int, default=500, help="test samples of the CROWN column")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (small nets: 1 is fastest)")
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    needs_bn = [s for s in args.strategies if STRATEGIES[s].needs_batchnorm]
    sources = {"cnn-small": _source("cnn-small", args.source, args.out, args.source_epochs, args.seed)}
    if needs_bn and not args.no_bn:
        sources["cnn-bn"] = _source("cnn-bn", args.bn_source, args.out, args.source_epochs, args.seed)
    rows = [_row(f"source {arch}", folder, args.n) for arch, folder in sources.items()]
    for line in (HEADER, *rows):
        print(line, flush=True)
    for strategy in args.strategies:
        plan = STRATEGIES[strategy]
        arch = "cnn-bn" if plan.needs_batchnorm else "cnn-small"
        if arch not in sources:
            rows.append(f"| {strategy:<25} | needs BatchNorm (run without --no-bn for a cnn-bn source) |")
            print(rows[-1], flush=True)
            continue
        kwargs = {"blocks": 1} if plan.needs_blocks else {}
        folder = args.out / f"{strategy}-{arch}"
        began = time.perf_counter()
        transfer_model(sources[arch], args.target, strategy, folder, epochs=args.epochs, seed=args.seed,
                       progress=False, **kwargs, **TRANSFER_HYPER)
        label = strategy + (" K=1" if kwargs else "") + (" (cnn-bn)" if arch == "cnn-bn" else "")
        rows.append(_row(label, folder, args.n))
        print(rows[-1] + f" wall {time.perf_counter() - began:.0f} s", flush=True)

    print(f"\n{SOURCE_TASK} -> {args.target}, eps {EPS}, source {METHOD} {args.source_epochs} epochs, transfer "
          f"{args.epochs} epochs, seed {args.seed}, {args.threads} thread(s); CROWN on {args.n} test samples")
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
