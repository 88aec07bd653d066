"""The library side of ``certify`` and ``sweep-epsilon``, shared by the command line and the study runner.

:func:`prepare` loads the model and the task's samples (fitted to the model input), builds the backend, and only
then opens (or resumes) the run directory, so bad input never leaves an empty run behind. :func:`run_sweep_job`
runs a prepared sweep (native search or VERONA's pipeline) and writes ``result_df.csv``. Like ``robverify/cli.py``
this module sits above ``trainers`` (it reads tasks), which the core modules never import.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd

from robverify.errors import RobverifyError

Progress = Callable[[int], None]


@dataclass
class Prepared:
    """A loaded model, its samples, the backend and the open run directory ``out``."""

    loaded: Any   # robverify.model.LoadedModel
    samples: Any  # robverify.jobs.Samples
    engine: Any   # robverify.backends.Backend
    run: Any      # robverify.results.RunDir
    out: Path

    @property
    def done(self) -> int:
        """Samples already finished by an earlier, interrupted run."""
        return len({k[0] for k in self.run.done_keys()})


def task_for(model: Path, task: str | None) -> str:
    """``task``, or the task named by the model card beside ``model``."""
    if task:
        return task
    from robverify.model_card import ModelCard, card_path_for

    card = card_path_for(model)
    if not card.is_file():
        raise RobverifyError(f"--task is needed: no model card {card} beside {model}")
    return ModelCard.from_json(card).task


def load_samples(model: Any, task: str, n: int, seed: int, data_root: Path | None) -> tuple[Any, dict | None, str]:
    """The task's seeded test samples fitted to the model input: ``(Samples, reshape record, sha256 of x)``."""
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


def check_eps(values: Sequence[float]) -> None:
    """Every eps finite and ``>= 0``, else a one-line error."""
    for e in values:
        if not math.isfinite(e) or e < 0:
            raise RobverifyError(f"--eps must be a finite number >= 0, got {e}")


def backend_options(verifier: str | None = None, verifier_cmd: str | None = None,
                    timeout: float | None = None) -> Any:
    """Checked :class:`robverify.backends.BackendOptions`."""
    from robverify.backends import BackendOptions

    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise RobverifyError(f"--timeout must be a finite number > 0, got {timeout}")
    return BackendOptions(verifier=verifier, verifier_cmd=verifier_cmd, timeout=timeout)


def prepare(command: str, key: list[str], model: Path, *, task: str | None, n: int, seed: int,
            data_root: Path | None, device: str, method: str, backend: str, out: Path | None, batch_size: int,
            options: Any, settings: dict) -> Prepared:
    """Load model and samples, build the backend, then open (or resume) the run directory of ``command``.

    ``settings`` are the command's own settings; with the common ones they make the run's fingerprint.
    """
    from robverify.backends import AttackConfig, get_backend
    from robverify.model import load_model
    from robverify.results import RunDir

    loaded = load_model(model, device)
    task = task_for(model, task)
    samples, reshape, digest = load_samples(loaded, task, n, seed, data_root)
    engine = get_backend(backend)(loaded, method, batch_size=batch_size, attack=AttackConfig(seed=seed),
                                  options=options)
    out = out or Path("runs") / f"{command.split('-')[0]}-{loaded.name}-{method}"
    common = dict(task=samples.task, n=n, seed=seed, method=method, backend=backend)
    settings = {**settings, **options.fingerprint()}
    arguments = dict(model=str(model), device=device, **common, **settings)
    run = RunDir.open(out, command, arguments, dict(model_sha256=loaded.sha256, **common, **settings), key)
    run.update(model_sha256=loaded.sha256, data_sha256=digest, input_reshape=reshape)
    return Prepared(loaded, samples, engine, run, out)


def prepare_sweep(model: Path, *, task: str | None, n: int, method: str, backend: str, tol: float,
                  grid: list[float] | None, eps_max: float, out: Path | None, seed: int, device: str,
                  data_root: Path | None, batch_size: int, options: Any) -> Prepared:
    """Check the sweep's settings and :func:`prepare` it (same fingerprint from the CLI and from a study)."""
    from robverify.spec import Method

    if not tol > 0:
        raise RobverifyError(f"--tol must be > 0, got {tol}")
    if not (math.isfinite(eps_max) and eps_max > 0):
        raise RobverifyError(f"--eps-max must be a finite number > 0, got {eps_max}")
    if backend == "verona" and grid is None:
        raise RobverifyError("--backend verona needs --grid (VERONA searches an epsilon list)")
    method = Method.parse(method).value
    return prepare("sweep-epsilon", ["sample_id"], model, task=task, n=n, seed=seed, data_root=data_root,
                   device=device, method=method, backend=backend, out=out, batch_size=batch_size, options=options,
                   settings=dict(tol=float(tol), grid=grid, eps_max=float(eps_max)))


def run_sweep_job(prep: Prepared, *, tol: float, grid: list[float] | None, eps_max: float,
                  progress: Progress | None = None) -> pd.DataFrame:
    """Run a prepared sweep to the end (resuming), write ``result_df.csv``; returns the tidy table."""
    from robverify.jobs import run_sweep
    from robverify.results import write_verona_result_df

    if prep.engine.name == "verona":
        from robverify.verona_job import run_verona_sweep

        table = run_verona_sweep(prep.run, prep.engine, prep.samples, grid or [], progress=progress)
    else:
        table = run_sweep(prep.run, prep.engine, prep.samples, tol=tol, grid=grid, eps_max=eps_max,
                          progress=progress)
    write_verona_result_df(table, prep.out / "result_df.csv")
    return table
