"""The ``robverify`` command line: parse, call one library function, print. The only module that imports
``robverify``, ``trainers`` and ``properties`` together. Heavy imports happen inside the commands."""

from __future__ import annotations

import hashlib
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
console = Console()
err_console = Console(stderr=True)

# Shared options, defined once.
TaskOpt = Annotated[Optional[str], typer.Option("--task", help="Task, e.g. mnist5k[0-4]; default: the model card's.")]
NOpt = Annotated[int, typer.Option("-n", "--n", min=1, help="Number of test samples (seeded choice).")]
MethodOpt = Annotated[str, typer.Option("--method", help="ibp, crown-ibp, crown or alpha-crown.")]
BackendOpt = Annotated[str, typer.Option("--backend", help="Verification backend.")]
OutOpt = Annotated[Optional[Path], typer.Option("--out", help="Run directory (created; resumed if it holds the same run).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed of sample choice, splits and attacks.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda.")]
DataRootOpt = Annotated[Optional[Path], typer.Option("--data-root", help="Folder with torchvision datasets.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Specs bounded per engine call.")]
VerifierOpt = Annotated[Optional[str], typer.Option("--verifier", help="Verifier inside --backend verona.")]
VerifierCmdOpt = Annotated[Optional[str], typer.Option(
    "--verifier-cmd", help="VNN-COMP run_instance.sh of --backend external.")]
TimeoutOpt = Annotated[Optional[float], typer.Option(
    "--timeout", help="Seconds per query of complete verifiers (marabou, external, verona).")]


def _not_built(what: str) -> None:
    raise RobverifyError(f"{what} is not built yet in this version of robverify")


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=False)


def _task_for(model: Path, task: str | None) -> str:
    if task:
        return task
    from robverify.model_card import ModelCard, card_path_for

    card = card_path_for(model)
    if not card.is_file():
        raise RobverifyError(f"--task is needed: no model card {card} beside {model}")
    return ModelCard.from_json(card).task


def _samples(model, task: str, n: int, seed: int, data_root: Path | None):
    """Load the task's test samples and fit them to the model input (recording any reshape)."""
    import torch

    from robverify.jobs import Samples
    from robverify.model import inputs_for
    from trainers.tasks import load_task, sample_test

    data = load_task(task, data_root=data_root, seed=seed)
    x, y, sample_id = sample_test(data, n, seed=seed)
    x, reshape = inputs_for(model, x)
    if model.graph.n_outputs < data.n_classes:
        raise RobverifyError(f"model has {model.graph.n_outputs} outputs, task {task} has {data.n_classes} classes")
    digest = hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()
    return Samples(x.to(torch.float32), y, sample_id, str(data.task), model.graph.n_outputs), reshape, digest


def _check_eps(values: list[float]) -> None:
    for e in values:
        if not math.isfinite(e) or e < 0:
            raise RobverifyError(f"--eps must be a finite number >= 0, got {e}")


def _prepare_run(command: str, key: list[str], model: Path, task: str | None, n: int, seed: int,
                 data_root: Path | None, device: str, method: str, backend: str, out: Path | None,
                 settings: dict):
    """Load the model and the samples, and open (or resume) the run directory of ``command``.

    ``settings`` are the command's own settings; with the common ones they make the run's fingerprint.
    """
    from robverify.model import load_model
    from robverify.results import RunDir

    loaded = load_model(model, device)
    task = _task_for(model, task)
    samples, reshape, digest = _samples(loaded, task, n, seed, data_root)
    out = out or Path("runs") / f"{command.split('-')[0]}-{loaded.name}-{method}"
    common = dict(task=samples.task, n=n, seed=seed, method=method, backend=backend)
    arguments = dict(model=str(model), device=device, **common, **settings)
    run = RunDir.open(out, command, arguments, dict(model_sha256=loaded.sha256, **common, **settings), key)
    run.update(model_sha256=loaded.sha256, data_sha256=digest, input_reshape=reshape)
    return loaded, samples, run, out


def _backend_options(verifier: str | None, verifier_cmd: str | None, timeout: float | None):
    from robverify.backends import BackendOptions

    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise RobverifyError(f"--timeout must be a finite number > 0, got {timeout}")
    return BackendOptions(verifier=verifier, verifier_cmd=verifier_cmd, timeout=timeout)


def _backend(model, backend: str, method: str, batch_size: int, seed: int, options=None):
    from robverify.backends import AttackConfig, get_backend

    return get_backend(backend)(model, method, batch_size=batch_size, attack=AttackConfig(seed=seed),
                                options=options)


@app.command()
def certify(
    model: Annotated[Path, typer.Argument(help="ONNX model.")],
    eps: Annotated[list[float], typer.Option("--eps", help="L-inf radius in pixel scale; repeat for several.")],
    task: TaskOpt = None, n: NOpt = 100, method: MethodOpt = "crown", backend: BackendOpt = "native",
    out: OutOpt = None, seed: SeedOpt = 0, device: DeviceOpt = "cpu", data_root: DataRootOpt = None,
    batch_size: BatchOpt = 256, verifier: VerifierOpt = None, verifier_cmd: VerifierCmdOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Verdict per sample at each eps, with clean / PGD / certified accuracy."""
    from robverify.jobs import run_certify
    from robverify.spec import Method

    _check_eps(eps)
    method = Method.parse(method).value
    options = _backend_options(verifier, verifier_cmd, timeout)
    loaded, samples, run, out = _prepare_run(
        "certify", ["sample_id", "eps"], model, task, n, seed, data_root, device, method, backend, out,
        settings=dict(eps=sorted(eps), **options.fingerprint()))
    engine = _backend(loaded, backend, method, batch_size, seed, options)
    with _progress() as bar:
        job = bar.add_task(f"certify {loaded.name} ({method})", total=n)
        bar.update(job, completed=len({k[0] for k in run.done_keys()}))
        table = run_certify(run, engine, samples, eps, progress=lambda k: bar.advance(job, k))
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
    timeout: TimeoutOpt = None,
) -> None:
    """The robustness distribution: per-sample brackets (eps_lo, eps_hi), ECDF and certified-accuracy plots."""
    from robverify.jobs import run_sweep
    from robverify.results import write_verona_result_df
    from robverify.search import parse_grid
    from robverify.spec import Method

    if not tol > 0:
        raise RobverifyError(f"--tol must be > 0, got {tol}")
    if not (math.isfinite(eps_max) and eps_max > 0):
        raise RobverifyError(f"--eps-max must be a finite number > 0, got {eps_max}")
    grid_values = parse_grid(grid) if grid else None
    method = Method.parse(method).value
    options = _backend_options(verifier, verifier_cmd, timeout)
    loaded, samples, run, out = _prepare_run(
        "sweep-epsilon", ["sample_id"], model, task, n, seed, data_root, device, method, backend, out,
        settings=dict(tol=tol, grid=grid_values, eps_max=eps_max, **options.fingerprint()))
    engine = _backend(loaded, backend, method, batch_size, seed, options)
    with _progress() as bar:
        job = bar.add_task(f"sweep {loaded.name} ({method})", total=n)
        bar.update(job, completed=len(run.done_keys()))
        table = run_sweep(run, engine, samples, tol=tol, grid=grid_values, eps_max=eps_max,
                          progress=lambda k: bar.advance(job, k))
    write_verona_result_df(table, out / "result_df.csv")
    correct = table[table["status"] != "misclassified"]
    console.print(f"{len(table)} samples, {len(correct)} correctly classified; "
                  f"median eps_lo {correct['eps_lo'].median():.4g}, median eps_hi {correct['eps_hi'].median():.4g}, "
                  f"mean bound calls {correct['n_calls'].mean():.1f}")
    console.print(f"results: {out / 'results.parquet'}  figures: {out / 'figures'}")


@app.command()
def train(
    task: Annotated[str, typer.Option("--task", help="Training task, e.g. mnist5k[0-4].")],
    arch: Annotated[str, typer.Option("--arch", help="mlp, cnn-small, cnn-bn or resnet-tiny.")] = "cnn-small",
    method: Annotated[str, typer.Option("--method", help="Training method.")] = "standard",
    eps: Annotated[float, typer.Option("--eps", help="Training eps (robust methods).")] = 0.0,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 3,
    out: Annotated[Path, typer.Option("--out", help="Output folder for model.onnx, model.pt, model.json.")] = Path("runs/model"),
    seed: SeedOpt = 0, data_root: DataRootOpt = None,
) -> None:
    """Train a source model and export it (ONNX with parity check, state dict, model card)."""
    path = train_and_export(task, arch, method, eps, epochs, out, seed, data_root)
    console.print(f"model: {path}")


def train_and_export(task: str, arch: str, method: str, eps: float, epochs: int, out: Path, seed: int,
                     data_root: Path | None) -> Path:
    """Standard training of a zoo model on ``task``; writes ``out/model.onnx`` (+ .pt, .json)."""
    from properties.onnx_export import export_onnx
    from robverify import __version__
    from robverify.model_card import ModelCard
    from trainers.tasks import load_task
    from trainers.training import accuracy, train_standard
    from trainers.zoo import arch_config, build_model

    if method != "standard":
        _not_built(f"training method {method!r} (only 'standard' so far)")
    if not 0 <= eps <= 1:
        raise RobverifyError(f"--eps must be in [0, 1], got {eps}")
    data = load_task(task, data_root=data_root, seed=seed)
    mean = data.x_train.mean(dim=(0, 2, 3)).tolist()
    std = data.x_train.std(dim=(0, 2, 3)).clamp(min=1e-3).tolist()
    model = build_model(arch, data.input_shape, data.n_classes, mean=mean, std=std, seed=seed)
    stats = train_standard(model, data.x_train, data.y_train, epochs=epochs, seed=seed, progress=True)
    card = ModelCard(architecture=arch_config(model), task=str(data.task), source_task=None, strategy=None,
                     training={"method": method, "eps": eps, "epochs": epochs, "lr": 1e-3}, seed=seed,
                     clean_acc=accuracy(model, data.x_test, data.y_test), pgd_acc=None, certified_acc=None,
                     train_time_s=stats["train_time_s"], parent_hash=None, similarity={},
                     trainable=model.trainable_counts(), onnx_sha256=None, opset=None, parity_max_abs_diff=None,
                     robverify_version=__version__)
    report = export_onnx(model, out / "model.onnx", data.input_shape, card=card, seed=seed)
    console.print(f"trained {arch} on {data.task}: clean accuracy {card.clean_acc:.3f}, "
                  f"{stats['train_time_s']:.1f} s; ONNX parity max |diff| {report.max_abs_diff:.2e}")
    return report.path


@app.command()
def transfer(source: Annotated[Path, typer.Argument()]) -> None:
    """Transfer a source model to a target task (not built yet)."""
    _not_built("robverify transfer")


@app.command("export-vnnlib")
def export_vnnlib(model: Annotated[Path, typer.Argument()]) -> None:
    """Write a VNN-COMP benchmark (onnx/, vnnlib/, instances.csv) (not built yet)."""
    _not_built("robverify export-vnnlib")


@app.command()
def verify(model: Annotated[Path, typer.Argument()], prop: Annotated[Path, typer.Argument()]) -> None:
    """Answer one VNN-LIB property like a VNN-COMP tool (not built yet)."""
    _not_built("robverify verify")


@app.command()
def compare(runs: Annotated[list[Path], typer.Argument()]) -> None:
    """The strategies report over run directories (not built yet)."""
    _not_built("robverify compare")


@app.command()
def run(study: Annotated[Path, typer.Argument()]) -> None:
    """Run a whole study from a TOML file (not built yet)."""
    _not_built("robverify run")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Folder of the demo's outputs.")] = Path("demo-out"),
    n: NOpt = 30,
) -> None:
    """The embedded default: train cnn-small on mnist5k[0-4], certify it and sweep its robustness distribution."""
    model = out / "source" / "model.onnx"
    if not model.is_file():
        train_and_export("mnist5k[0-4]", "cnn-small", "standard", 0.0, 3, out / "source", 0, None)
    certify(model, [1 / 255, 2 / 255, 4 / 255], task=None, n=n, method="crown", backend="native",
            out=out / "certify", seed=0, device="cpu", data_root=None, batch_size=256, verifier=None,
            verifier_cmd=None, timeout=None)
    sweep_epsilon(model, task=None, n=n, method="crown", backend="native", tol=1e-3, grid=None, eps_max=0.3,
                  out=out / "sweep", seed=0, device="cpu", data_root=None, batch_size=256, verifier=None,
                  verifier_cmd=None, timeout=None)
    console.print(f"demo outputs: {out.resolve()}")


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
