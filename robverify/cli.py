"""The ``robverify`` command line: parse, call one library function, print. The only module that imports
``robverify``, ``trainers`` and ``properties`` together. Heavy imports happen inside the commands."""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from robverify.errors import RobverifyError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Sound certification of (transferred) adversarial robustness.")
# markup off: messages are plain text, and rich would swallow "[source]" or "[sweep]" as style tags
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

# Shared options, defined once.
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="Task, e.g. mnist5k[0-4]; default: the model card's.")]
NOpt = Annotated[int, typer.Option("-n", "--n", min=1, help="Number of test samples (seeded choice).")]
MethodOpt = Annotated[str, typer.Option(
    "--method", help="ibp, crown-ibp, crown, alpha-crown, or bab (CROWN, then branch and bound: --timeout seconds "
                     "per open spec in certify, per sample in sweep-epsilon; default 10).")]
BackendOpt = Annotated[str, typer.Option("--backend", help="Verification backend.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run directory (created; resumed if it holds the same run).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of sample choice, splits and attacks.")]
SeedsOpt = Annotated[Optional[str], typer.Option(
    "--seeds", help="Training seeds, e.g. 0,1,2: one run each, into --out/seed-N when there are several.")]
ScheduleOpt = Annotated[str, typer.Option(
    "--schedule", help="Learning-rate schedule: constant, cosine, step or slow-start-fast-decay.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")]
DataRootOpt = Annotated[Optional[Path], typer.Option("--data-root", help="Folder with torchvision datasets.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Specs bounded per engine call.")]
VerifierOpt = Annotated[Optional[str], typer.Option("--verifier", help="Verifier inside --backend verona.")]
VerifierCmdOpt = Annotated[Optional[str], typer.Option(
    "--verifier-cmd", help="VNN-COMP run_instance.sh of --backend external.")]
DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="Own test data instead of --task: FILE.npz (arrays x, y), FILE.npy (images; labels = the model's "
                   "predictions), an image folder FOLDER/<class>/<image>, or VNN-LIB robustness properties "
                   "(.vnnlib, instances.csv, or a folder of them: the images of their boxes).")]
InputRangeOpt = Annotated[Optional[str], typer.Option(
    "--input-range", help="LO,HI: the value range of the model input (default 0,1); eps and clipping are in it.")]
MeanOpt = Annotated[Optional[str], typer.Option(
    "--mean", help="Per-channel mean (m1,m2,... or one value) the model expects subtracted: verified is "
                   "model((x - mean) / std), eps stays in the data's scale.")]
StdOpt = Annotated[Optional[str], typer.Option(
    "--std", help="Per-channel standard deviation the model expects divided out (with --mean; default 1).")]
TimeoutOpt = Annotated[Optional[float], typer.Option(
    "--timeout", help="Seconds per query of complete verifiers (bab, marabou, external, verona).")]
ExecutorOpt = Annotated[str, typer.Option(
    "--executor", help="local (this process) or ray (chunks of samples as tasks on Ray workers).")]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", help="Ray workers (default: one per CPU of the cluster; per GPU with --device cuda).")]
RayAddressOpt = Annotated[Optional[str], typer.Option(
    "--ray-address", help="A running Ray cluster (auto, ray://HOST:10001); default: start one here.")]


@app.command()
def certify(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    eps: Annotated[list[float], typer.Option("--eps", help="L-inf radius in pixel scale; repeat for several.")],
    task: TaskOpt = None, n: NOpt = 100, method: MethodOpt = "crown", backend: BackendOpt = "native",
    out: OutOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "cpu", data_root: DataRootOpt = None,
    batch_size: BatchOpt = 256, verifier: VerifierOpt = None, verifier_cmd: VerifierCmdOpt = None,
    timeout: TimeoutOpt = None, data: DataOpt = None, input_range: InputRangeOpt = None,
    mean: MeanOpt = None, std: StdOpt = None,
    executor: ExecutorOpt = "local", workers: WorkersOpt = None, ray_address: RayAddressOpt = None,
) -> None:
    """Verdict per sample at each eps, with clean / PGD / certified accuracy."""
    from robverify.app.commands import ExecutorConfig, backend_options, certify as run_certify

    prep, table = run_certify(model, eps=eps, task=task, n=n, method=method, backend=backend, out=out, seed=seed,
                              device=device, data_root=data_root, batch_size=batch_size,
                              options=backend_options(verifier, verifier_cmd, timeout), console=err_console,
                              data=data, input_range=input_range, mean=mean, std=std,
                              executor=ExecutorConfig(executor, workers, ray_address))
    out = prep.out
    summary = table.groupby("eps").agg(
        clean_acc=("verdict", lambda v: float((v != "misclassified").mean())),
        pgd_acc=("verdict", lambda v: float(((v != "misclassified") & (v != "falsified")).mean())),
        certified_acc=("verdict", lambda v: float((v == "verified").mean())),
    )
    console.print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    console.print(f"results: {out / 'results.parquet'}")


@app.command("sweep-epsilon")
def sweep_epsilon(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    task: TaskOpt = None, n: NOpt = 100, method: MethodOpt = "crown", backend: BackendOpt = "native",
    tol: Annotated[float, typer.Option("--tol", help="Bisection tolerance on eps.")] = 1e-4,
    grid: Annotated[Optional[str], typer.Option("--grid", help="START:STOP:STEP or e1,e2,... (VERONA-style).")] = None,
    eps_max: Annotated[float, typer.Option("--eps-max", help="Largest eps searched.")] = 1.0,
    out: OutOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "cpu", data_root: DataRootOpt = None,
    batch_size: BatchOpt = 256, verifier: VerifierOpt = None, verifier_cmd: VerifierCmdOpt = None,
    timeout: TimeoutOpt = None, data: DataOpt = None, input_range: InputRangeOpt = None,
    mean: MeanOpt = None, std: StdOpt = None,
    executor: ExecutorOpt = "local", workers: WorkersOpt = None, ray_address: RayAddressOpt = None,
) -> None:
    """The robustness distribution: per-sample brackets (eps_lo, eps_hi), ECDF and certified-accuracy plots."""
    from robverify.app.commands import ExecutorConfig, backend_options, sweep_epsilon as run_sweep
    from robverify.runs.sweep import SweepSettings

    prep, table = run_sweep(model, settings=SweepSettings.parse(tol, grid, eps_max), task=task, n=n, method=method,
                            backend=backend, out=out, seed=seed, device=device, data_root=data_root,
                            batch_size=batch_size, options=backend_options(verifier, verifier_cmd, timeout),
                            console=err_console, data=data, input_range=input_range, mean=mean, std=std,
                            executor=ExecutorConfig(executor, workers, ray_address))
    out = prep.out
    correct = table[table["status"] != "misclassified"]
    console.print(f"{len(table)} samples, {len(correct)} correctly classified; "
                  f"median eps_lo {correct['eps_lo'].median():.4g}, median eps_hi {correct['eps_hi'].median():.4g}, "
                  f"mean bound calls {correct['n_calls'].mean():.1f}")
    if "bab_s" in correct and (correct["bab_s"] > 0).any():
        exact = correct["status"].isin(["exact", "robust"]).mean()
        lo, hi = (correct["lo_by"] == "bab").sum(), (correct["hi_by"] == "bab").sum()
        console.print(f"branch and bound: {lo} lower and {hi} upper ends decided, {int(correct['domains'].sum())} domains, {correct['bab_s'].sum():.1f} s;"
                      f" {exact:.0%} of brackets exact")
    console.print(f"results: {out / 'results.parquet'}  figures: {out / 'figures'}")


@app.command()
def train(
    task: Annotated[str, typer.Option("--task", help="Training task, e.g. mnist5k[0-4].")],
    arch: Annotated[str, typer.Option("--arch", help="mlp, cnn-small, cnn-bn or resnet-tiny.")] = "cnn-small",
    method: Annotated[str, typer.Option("--method", help="standard, pgd, trades, ibp, crown-ibp, sabr, mtl-ibp or "
                                                           "ibp-shi.")] = "standard",
    eps: Annotated[float, typer.Option("--eps", help="Training eps, L-inf in pixel space [0, 1] (robust methods).")] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 3,
    out: Annotated[Path, typer.Option("--out", help="Output folder for model.onnx, model.pt, model.json.")] = Path("runs/model"),
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    train_batch: Annotated[int, typer.Option("--batch-size", min=1, help="Training batch size.")] = 128,
    trades_beta: Annotated[float, typer.Option("--trades-beta", help="TRADES robust-loss weight.")] = 6.0,
    schedule: ScheduleOpt = "constant",
    seed: SeedOpt = 0, seeds: SeedsOpt = None, data_root: DataRootOpt = None, device: DeviceOpt = "cpu",
) -> None:
    """Train a source model and export it (ONNX with parity check, state dict, model card); resumes if interrupted."""
    for run_seed, run_out in _seed_runs(seed, seeds, out):
        path = train_and_export(task, arch, method, eps, epochs, run_out, run_seed, data_root, device=device, lr=lr,
                                batch_size=train_batch, trades_beta=trades_beta, schedule=schedule)
        _print_card(path)


def _seed_runs(seed: int, seeds: str | None, out: Path) -> list[tuple[int, Path]]:
    """(seed, output folder) per run of ``--seed`` / ``--seeds``."""
    from trainers.pipeline import parse_seeds, seed_folders

    if seeds is None:
        return [(seed, out)]
    if seed != 0:
        raise RobverifyError("give --seed or --seeds, not both")
    return seed_folders(out, parse_seeds(seeds))


def _print_card(path: Path) -> None:
    from robverify.formats.model_card import ModelCard, card_path_for

    card = ModelCard.from_json(card_path_for(path))
    console.print(f"{card.strategy or card.training.get('method')} on {card.task} (seed {card.seed}): "
                  f"clean {card.clean_acc:.3f}, PGD {card.pgd_acc:.3f}, certified {card.certified_acc:.3f} at eps "
                  f"{card.eps:g}; training {card.train_time_s:.1f} s")
    console.print(f"model: {path}")


def train_and_export(task: str, arch: str, method: str, eps: float, epochs: int, out: Path, seed: int,
                     data_root: Path | None, device: str = "cpu", **hyper) -> Path:
    """Train a zoo model on ``task`` with ``method``; writes ``out/model.onnx`` (+ .pt, .json). See
    :func:`trainers.pipeline.train_source`."""
    from trainers.pipeline import train_source

    return train_source(task, arch, method, eps, epochs, out, seed=seed, data_root=data_root, device=device,
                        progress=True, **hyper)


@app.command()
def transfer(
    source: Annotated[Path, typer.Argument(help="Folder of the source model (robverify train --out).")],
    task: Annotated[str, typer.Option("--task", help="Target task, e.g. mnist5k[5-9].")],
    strategy: Annotated[str, typer.Option("--strategy", help="linear-probe, linear-probe-adv, full-ft, adv-ft, "
                                          "partial-ft, partial-ft-adv, rift, rift-adv, lora, lora-adv, lora-bn, "
                                          "bn-adapt, bn-adapt-adv, twins, autolora, certified-ft, scratch or "
                                          "scratch-adv.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for model.onnx, model.pt, model.json.")],
    blocks: Annotated[Optional[int], typer.Option("--blocks", help="K: the last K blocks train (partial-ft).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 2,
    eps: Annotated[Optional[float], typer.Option("--eps", help="Training/evaluation eps; default: the source's.")] = None,
    objective: Annotated[Optional[str], typer.Option(
        "--objective", help="Training objective (standard, pgd, trades, ibp, crown-ibp, ...); default: the "
                            "strategy's.")] = None,
    adv: Annotated[Optional[str], typer.Option("--adv", help="Adversarial objective of the -adv strategies: pgd "
                                               "or trades (default pgd).")] = None,
    certified: Annotated[Optional[str], typer.Option(
        "--certified", help="certified-ft objective: ibp, crown-ibp, sabr, mtl-ibp or ibp-shi (default crown-ibp).")] = None,
    rank: Annotated[Optional[int], typer.Option("--rank", min=1, help="LoRA rank (default 4).")] = None,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    train_batch: Annotated[int, typer.Option("--batch-size", min=1, help="Training batch size.")] = 128,
    schedule: ScheduleOpt = "constant",
    seed: SeedOpt = 0, seeds: SeedsOpt = None, data_root: DataRootOpt = None, device: DeviceOpt = "cpu",
) -> None:
    """Transfer a source model to a target task with a strategy and export it with its model card."""
    from trainers.pipeline import transfer_model

    # options given on the command line only: one that does not apply to the strategy is an error, not ignored
    chosen = {k: v for k, v in dict(objective=objective, adv=adv, certified=certified, rank=rank).items()
              if v is not None}
    for run_seed, run_out in _seed_runs(seed, seeds, out):
        path = transfer_model(source, task, strategy, run_out, blocks=blocks, epochs=epochs, seed=run_seed,
                              data_root=data_root, device=device, eps=eps, progress=True, lr=lr,
                              batch_size=train_batch, schedule=schedule, **chosen)
        _print_card(path)


@app.command("export-vnnlib")
def export_vnnlib(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    eps: Annotated[list[float], typer.Option("--eps", help="L-inf radius in pixel scale; repeat for several.")],
    out: Annotated[Path, typer.Option("--out", help="Benchmark folder (onnx/, vnnlib/, instances.csv, README.md).")],
    task: TaskOpt = None, n: NOpt = 10,
    targeted: Annotated[bool, typer.Option("--targeted", help="One one2one property per other class.")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per instance, written to instances.csv.")] = 60.0,
    seed: SeedOpt = 0, data_root: DataRootOpt = None, data: DataOpt = None, input_range: InputRangeOpt = None,
    mean: MeanOpt = None, std: StdOpt = None,
) -> None:
    """Write a VNN-COMP benchmark (onnx/, vnnlib/, instances.csv) of the first N correctly classified samples."""
    from properties.benchmark import export_benchmark
    from robverify.app.commands import check_eps, load_samples, task_for
    from robverify.ir.model import load_model

    check_eps(eps)
    given = load_model(model)
    if data is None:
        task = task_for(model, task)
    pool = max(4 * n, n + 50)  # candidates (all, if fewer): enough to find n correctly classified ones
    read = load_samples(given, task, pool, seed, data_root, data=data, input_range=input_range,
                        mean=mean, std=std, at_most=True)
    loaded, samples = read.model, read.samples
    instances = export_benchmark(loaded, samples.x, samples.label, samples.sample_id, eps, out, n=n,
                                 n_classes=samples.n_classes, targeted=targeted, timeout=timeout,
                                 domain=samples.domain, task=samples.task, seed=seed)
    n_samples = len({r.sample_id for r in instances})
    if n_samples < n:
        err_console.print(f"warning: only {n_samples} of the {samples.x.shape[0]} samples looked at are correctly "
                          f"classified (asked for {n})", highlight=False)
    console.print(f"{len(instances)} instances of {n_samples} samples: {out / 'instances.csv'}")


@app.command()
def verify(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    prop: Annotated[Path, typer.Argument(help="VNN-LIB property (.vnnlib or .vnnlib.gz).")],
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds for the whole answer, loading included.")] = 60.0,
    method: Annotated[str, typer.Option("--method", help="Most expensive bound tried: ibp, crown-ibp, crown or "
                                        "alpha-crown.")] = "alpha-crown",
    out: Annotated[Optional[Path], typer.Option("--out", help="Result file (VNN-COMP format).")] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "cpu",
) -> None:
    """Answer one VNN-LIB property like a VNN-COMP tool: unsat, sat (with a counterexample), unknown or timeout.

    The first line of standard output (and of --out) is the answer word; bad input answers `error` and exits 2."""
    import time

    start = time.perf_counter()
    from robverify.spec import Method
    from robverify.formats.vnncomp_result import Result, format_result

    def emit(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")

    try:
        if not (math.isfinite(timeout) and timeout > 0):
            raise RobverifyError(f"--timeout must be a finite number > 0, got {timeout}")
        chosen = Method.parse(method)
        from robverify.engine.answer import answer_instance
        from robverify.ir.model import load_model

        loaded = load_model(model, device)
        answer = answer_instance(loaded, prop, timeout=timeout, method=chosen, seed=seed, start=start)
    except RobverifyError as err:
        emit(f"{Result.ERROR.value}\n{err}\n")
        raise
    emit(format_result(answer.result, answer.x, answer.y))
    err_console.print(f"{answer.result.value} after {answer.seconds:.2f} s"
                      + (f" ({answer.stage})" if answer.stage else "") + (f": {answer.reason}" if answer.reason else ""),
                      highlight=False, soft_wrap=True)


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="sweep-epsilon run directories (one per strategy and task).")],
    out: Annotated[Path, typer.Option("--out", help="Report folder: report.html, report.md, summary.csv, "
                                      "figures/.")] = Path("report"),
    eps: Annotated[Optional[list[float]], typer.Option(
        "--eps", help="Accuracy grid; repeat (default: 0, eps_ref/2, eps_ref, 2 eps_ref).")] = None,
    eps_ref: Annotated[Optional[float], typer.Option(
        "--eps-ref", help="Eps of the headline accuracies (default: the model cards' training eps).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the bootstrap.")] = 0,
    allow_mixed: Annotated[bool, typer.Option(
        "--allow-mixed", help="Compare runs swept with different backends, methods, budgets, tolerances or grids.")
    ] = False,
) -> None:
    """The strategies report: statistics, figures and conclusions over sweep run directories."""
    from robverify.analysis.report import compare_runs

    report = compare_runs(runs, out, eps=eps, eps_ref=eps_ref, seed=seed, allow_mixed=allow_mixed)
    console.print(report.headline.to_string(index=False))
    console.print(f"report: {report.html.resolve()}")


@app.command()
def run(
    study: Annotated[Path, typer.Argument(help="Study file (TOML), e.g. examples/demo_study.toml.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Study folder; default: the study's [study] out, "
                                                "relative to the study file.")] = None,
) -> None:
    """Run a whole study: source training, transfers, sweeps and the strategies report; finished steps are skipped."""
    from robverify.app.study import load_study, run_study

    for line in run_study(load_study(study), out, console=err_console).outcome():
        console.print(line, highlight=False, soft_wrap=True)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder of the demo's outputs.")] = Path("demo-out"),
) -> None:
    """The embedded default study (examples/demo_study.toml): a CROWN-IBP-trained source on mnist5k[0-4]
    transferred to four targets with five strategies, every model swept, then the strategies report."""
    from robverify.app.study import DEMO_STUDY, parse_study, run_study

    study = parse_study(DEMO_STUDY, Path("<embedded demo study>"))
    for line in run_study(study, out, console=err_console).outcome():
        console.print(line, highlight=False, soft_wrap=True)


@app.command("import-verona")
def import_verona(
    result_df: Annotated[Path, typer.Argument(help="A VERONA result_df.csv.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory to create (tidy results.parquet).")],
    model: Annotated[Optional[str], typer.Option("--model", help="Model name; default: VERONA's network.")] = None,
    task: Annotated[Optional[str], typer.Option("--task", help="Task the samples come from.")] = None,
) -> None:
    """Turn a VERONA result_df.csv into a robverify run directory that `compare` reads."""
    from robverify.app.commands import import_verona as run_import

    table = run_import(result_df, out, model=model, task=task)
    console.print(f"{len(table)} samples from {result_df}; results: {out / 'results.parquet'}")


def main() -> None:
    """Console entry point: library errors become one line on stderr and exit code 2."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app(standalone_mode=True)
    except RobverifyError as err:
        err_console.print(f"error: {err}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
