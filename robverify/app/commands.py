"""The library side of ``certify`` and ``sweep-epsilon``, shared by the command line and the study runner.

:func:`prepare` loads the model and the task's samples (fitted to the model input), builds the backend, and only
then opens (or resumes) the run directory, so bad input never leaves an empty run behind. :func:`run_sweep_job`
runs a prepared sweep with its epsilon search, writes ``result_df.csv`` and the figures; :func:`certify` and
:func:`sweep_epsilon` are the whole commands, progress display included. This module sits above ``trainers`` (it
reads tasks), which the core modules never import.
"""

from __future__ import annotations

import hashlib
import math
import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import pandas as pd

from robverify.errors import RobverifyError
from robverify.runs.executors import ExecutorConfig

Progress = Callable[[int], None]
#: file name, in a run directory, of the model verified with --mean/--std (the user's model behind a normalisation)
NORMALISED_MODEL = "model_normalised.onnx"


@dataclass
class Prepared:
    """A loaded model, its samples, the backend, the open run directory ``out``, (sweeps) the epsilon search, and
    the recipe Ray workers build the same backend from."""

    loaded: Any   # robverify.ir.model.LoadedModel
    samples: Any  # robverify.runs.jobs.Samples
    engine: Any   # robverify.backends.Backend
    run: Any      # robverify.runs.rundir.RunDir
    out: Path
    search: Any = None  # robverify.runs.sweep.EpsilonSearch
    recipe: Any = None  # robverify.runs.executors.BackendRecipe
    executor: ExecutorConfig = ExecutorConfig()

    @contextmanager
    def executing(self) -> Iterator[Any]:
        """The configured executor, closed (its actors stopped) at the end."""
        from robverify.runs.executors import make_executor

        executor = make_executor(self.executor, self.engine, self.recipe)
        try:
            yield executor
        finally:
            close = getattr(executor, "close", None)
            if close is not None:
                close()

    @property
    def done(self) -> int:
        """Samples already finished by an earlier, interrupted run."""
        return len({k[0] for k in self.run.done_keys()})


def task_for(model: Path, task: str | None) -> str:
    """``task``, or the task named by the model card beside ``model``."""
    if task:
        return task
    from robverify.formats.model_card import ModelCard, card_path_for

    card = card_path_for(model)
    if not card.is_file():
        raise RobverifyError(f"--task is needed: no model card {card} beside {model}")
    return ModelCard.from_json(card).task


@dataclass(frozen=True)
class LoadedSamples:
    """What :func:`load_samples` read: the samples, the model they are verified on (the normalised model with
    ``--mean``/``--std``), how the images were fitted to its input, and the sha256 of ``x``."""

    samples: Any  # robverify.runs.jobs.Samples
    model: Any    # robverify.ir.model.LoadedModel
    reshape: dict | None
    digest: str


def normalised_model(model: Any, image_shape: Sequence[int], means: Sequence[float] | None,
                     stds: Sequence[float] | None) -> Any:
    """``model`` with ``(x - mean) / std`` in front (:mod:`robverify.ir.normalise_input`), or ``model`` itself when
    neither is given. ``means`` / ``stds``: per channel of images ``image_shape`` (or one value). The new ONNX file
    lives in a folder removed when the process ends (a run directory keeps its own copy)."""
    import atexit
    import tempfile

    import torch

    from robverify.ir.model import inputs_for, load_model
    from robverify.ir.normalise_input import per_element, with_normalisation

    if means is None and stds is None:
        return model
    fitted = []
    for values, what in ((means or (0.0,), "--mean"), (stds or (1.0,), "--std")):
        full = torch.from_numpy(per_element(values, image_shape, what))[None]
        fitted.append(inputs_for(model, full)[0][0].numpy())
    folder = Path(tempfile.mkdtemp(prefix="robverify-normalised-"))
    atexit.register(shutil.rmtree, folder, True)
    path = with_normalisation(model.path, fitted[0], fitted[1], folder / model.path.name)
    return load_model(path, model.graph.device, model.graph.dtype)


def load_samples(model: Any, task: str | None, n: int, seed: int, data_root: Path | None, *,
                 data: Path | None = None, input_range: str | None = None, mean: str | None = None,
                 std: str | None = None, at_most: bool = False) -> LoadedSamples:
    """The seeded test samples of ``task`` (or of the user's ``data``: :mod:`trainers.user_data`), fitted to the
    model input, and the model to verify them on (``model`` with ``(x - mean) / std`` in front when ``mean`` /
    ``std`` are given: :func:`normalised_model`). Unlabelled data is labelled by that model's own predictions;
    ``input_range`` (``LO,HI``) is the range boxes are clipped to. ``at_most``: ``n`` is a cap (all samples when
    there are fewer), else exactly ``n`` are needed."""
    import torch

    from robverify.ir.model import inputs_for
    from robverify.ir.normalise_input import parse_channel_values
    from robverify.runs.jobs import Samples
    from trainers.user_data import load_user_data, parse_range, sample_data

    if data is not None and task is not None:
        raise RobverifyError("--task and --data exclude each other: the samples come from one of them")
    domain = parse_range(input_range)
    means, stds = parse_channel_values(mean, "--mean"), parse_channel_values(std, "--std")
    if data is not None:
        user = load_user_data(data, domain)
        x, y, sample_id = sample_data(user, min(n, int(user.x.shape[0])) if at_most else n, seed=seed)
        name, n_classes = user.name, max(len(user.classes), int(y.max()) + 1 if y is not None else 0)
    else:
        from trainers.tasks import load_task, sample_test

        if task is None:
            raise RobverifyError("--task or --data is needed")
        loaded = load_task(task, data_root=data_root, seed=seed)
        x, y, sample_id = sample_test(loaded, min(n, len(loaded.y_test)) if at_most else n, seed=seed)
        name, n_classes = str(loaded.task), loaded.n_classes
    model = normalised_model(model, tuple(x.shape[1:]), means, stds)
    x, reshape = inputs_for(model, x)
    if model.graph.n_outputs < n_classes:
        raise RobverifyError(f"model has {model.graph.n_outputs} outputs, {name} has {n_classes} classes")
    lo, hi = float(x.min()), float(x.max())
    if lo < domain[0] - 1e-6 or hi > domain[1] + 1e-6:
        raise RobverifyError(f"{name}: values in [{lo:g}, {hi:g}] lie outside the input range {domain[0]:g},"
                             f"{domain[1]:g}; state the data's range with --input-range LO,HI")
    x = x.to(torch.float32)
    if y is None:
        y = model.predict(x)
    digest = hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()
    return LoadedSamples(Samples(x, y, sample_id, name, model.graph.n_outputs, domain), model, reshape, digest)


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


def method_and_backend(method: str, backend: str) -> tuple[str, str]:
    """``--method``, ``--backend`` as the backend registry reads them: ``--method bab`` is robverify's branch and
    bound (``--backend bab`` with CROWN as its bound), only with ``--backend native`` or ``bab``."""
    from robverify.spec import Method

    if method.strip().lower() == "bab":
        if backend not in ("native", "bab"):
            raise RobverifyError(f"--method bab is robverify's own branch and bound; it does not run inside "
                                 f"--backend {backend} (VERONA: --backend verona --verifier native-bab)")
        return Method.CROWN.value, "bab"
    return Method.parse(method).value, backend


def prepare(command: str, key: list[str], model: Path, *, task: str | None, n: int, seed: int,
            data_root: Path | None, device: str, method: str, backend: str, out: Path | None, batch_size: int,
            options: Any, settings: dict, data: Path | None = None, input_range: str | None = None,
            mean: str | None = None, std: str | None = None, executor: ExecutorConfig | None = None) -> Prepared:
    """Load model and samples, build the backend, then open (or resume) the run directory of ``command``.

    ``settings`` are the command's own settings; with the common ones they make the run's fingerprint. run.json
    also records the verifier libraries (or external tool) the backend uses, as ``verifiers``
    (:meth:`robverify.backends.Backend.provenance`; ``{}`` for the native engine). With ``--mean``/``--std`` the
    normalised model that is verified is kept in the run directory (:data:`NORMALISED_MODEL`).
    """
    from robverify.backends import AttackConfig, get_backend
    from robverify.ir.model import load_model
    from robverify.runs.rundir import RunDir

    given = load_model(model, device)
    task = task if data is not None else task_for(model, task)
    read = load_samples(given, task, n, seed, data_root, data=data, input_range=input_range, mean=mean, std=std)
    loaded, samples = read.model, read.samples
    engine = get_backend(backend)(loaded, method, batch_size=batch_size, attack=AttackConfig(seed=seed),
                                  options=options)
    out = out or Path("runs") / f"{command.split('-')[0]}-{loaded.name}-{method}"
    common = dict(task=samples.task, n=n, seed=seed, method=method, backend=backend)
    if data is not None or input_range is not None:
        common.update(data=None if data is None else str(data), input_range=list(samples.domain))
    if mean is not None or std is not None:
        common.update(mean=mean, std=std)
    settings = {**settings, **options.fingerprint()}
    arguments = dict(model=str(model), device=device, **common, **settings)
    if executor is not None and executor.name == "ray":  # connect first: a failure leaves no run directory
        from robverify.runs.executors import start_ray

        start_ray(executor.address, executor.workers)
    run = RunDir.open(out, command, arguments, dict(model_sha256=loaded.sha256, **common, **settings), key)
    run.update(model_sha256=loaded.sha256, data_sha256=read.digest, input_reshape=read.reshape,
               verifiers=engine.provenance())
    verified = Path(model)
    if loaded.path != verified:  # normalised: keep the model that is verified (Ray workers load it from here)
        verified = out / NORMALISED_MODEL
        shutil.copyfile(loaded.path, verified)
        run.update(normalised_model=NORMALISED_MODEL)
    from robverify.runs.executors import BackendRecipe

    recipe = BackendRecipe(str(verified.resolve()), device, backend, method, batch_size, seed, options)
    return Prepared(loaded, samples, engine, run, out, recipe=recipe, executor=executor or ExecutorConfig())


def finalize_run(run: Any, table: pd.DataFrame | None = None) -> pd.DataFrame:
    """Finalise ``run`` (unless ``table``, its finalised table, is given), then draw its standard figures into
    ``figures/`` and record them in run.json. Returns the tidy table."""
    from robverify.analysis.plots import draw_run_figures

    if table is None:
        table = run.finalize()
    if not table.empty:
        run.record_figures(draw_run_figures(table, run.figures_dir))
    return table


def _with_bar(prep: Prepared, console: Any, verb: str, job: Callable[[Progress], pd.DataFrame]) -> pd.DataFrame:
    """Run ``job(progress)`` under one progress line per run (samples done / total, resumed ones counted)."""
    from robverify.progress import progress_bar

    with progress_bar(console) as bar:
        task = bar.add(f"{verb} {prep.loaded.name} ({prep.engine.method.value})", total=prep.samples.x.shape[0],
                       completed=prep.done)
        return job(lambda k: bar.advance(task, k))


# ------------------------------------------------------------------------------------------------------- certify


def prepare_certify(model: Path, *, eps: Sequence[float], task: str | None, n: int, method: str, backend: str,
                    out: Path | None, seed: int, device: str, data_root: Path | None, batch_size: int,
                    options: Any, data: Path | None = None, input_range: str | None = None,
                    mean: str | None = None, std: str | None = None,
                    executor: ExecutorConfig | None = None) -> Prepared:
    """Check the certify settings and :func:`prepare` it."""
    check_eps(eps)
    method, backend = method_and_backend(method, backend)
    return prepare("certify", ["sample_id", "eps"], model, task=task, n=n, seed=seed, data_root=data_root,
                   device=device, method=method, backend=backend, out=out, batch_size=batch_size, options=options,
                   settings=dict(eps=sorted(eps)), data=data, input_range=input_range, mean=mean, std=std,
                   executor=executor)


def run_certify_job(prep: Prepared, eps: Sequence[float], progress: Progress | None = None) -> pd.DataFrame:
    """Run a prepared certify to the end (resuming), draw its figures; returns the tidy table."""
    from robverify.runs.jobs import run_certify

    with prep.executing() as executor:
        table = run_certify(prep.run, prep.engine, prep.samples, eps, progress=progress, executor=executor)
    return finalize_run(prep.run, table)


def certify(model: Path, *, eps: Sequence[float], console: Any = None, **kwargs: Any) -> tuple[Prepared, pd.DataFrame]:
    """``robverify certify``: prepare, run with a progress bar on ``console`` (None: silent), finish."""
    prep = prepare_certify(model, eps=eps, **kwargs)
    return prep, _with_bar(prep, console, "certify", lambda progress: run_certify_job(prep, eps, progress))


# -------------------------------------------------------------------------------------------------- sweep-epsilon


def prepare_sweep(model: Path, *, task: str | None, n: int, method: str, backend: str, settings: Any,
                  out: Path | None, seed: int, device: str, data_root: Path | None, batch_size: int,
                  options: Any, data: Path | None = None, input_range: str | None = None,
                  mean: str | None = None, std: str | None = None,
                  executor: ExecutorConfig | None = None) -> Prepared:
    """Pick the epsilon search of ``backend``, let it check ``settings`` (a :class:`SweepSettings`), and
    :func:`prepare` the sweep (same fingerprint from the CLI and from a study)."""
    from robverify.runs.sweep import search_for

    method, backend = method_and_backend(method, backend)
    search = search_for(backend)
    search.check(settings, (executor or ExecutorConfig()).name)
    prep = prepare("sweep-epsilon", ["sample_id"], model, task=task, n=n, seed=seed, data_root=data_root,
                   device=device, method=method, backend=backend, out=out, batch_size=batch_size, options=options,
                   settings=settings.fingerprint(), data=data, input_range=input_range, mean=mean,
                   std=std, executor=executor)
    prep.search = search
    return prep


def run_sweep_job(prep: Prepared, settings: Any, progress: Progress | None = None) -> pd.DataFrame:
    """Run a prepared sweep to the end (resuming) with its search, write ``result_df.csv`` and the figures;
    returns the tidy table."""
    from robverify.runs.verona_csv import write_verona_result_df

    with prep.executing() as executor:
        table = prep.search.sweep(prep.run, prep.engine, prep.samples, settings, progress=progress,
                                  executor=executor)
    write_verona_result_df(table, prep.out / "result_df.csv")
    return finalize_run(prep.run, table)


def sweep_epsilon(model: Path, *, settings: Any, console: Any = None, **kwargs: Any) -> tuple[Prepared, pd.DataFrame]:
    """``robverify sweep-epsilon``: prepare, run with a progress bar on ``console`` (None: silent), finish."""
    prep = prepare_sweep(model, settings=settings, **kwargs)
    return prep, _with_bar(prep, console, "sweep", lambda progress: run_sweep_job(prep, settings, progress))


def import_verona(result_df: Path, out: Path, *, model: str | None = None, task: str | None = None) -> pd.DataFrame:
    """``robverify import-verona``: the VERONA file as a run directory, with the figures of a sweep."""
    from robverify.runs.verona_csv import import_verona_run

    return import_verona_run(result_df, out, model=model, task=task, finish=finalize_run)
