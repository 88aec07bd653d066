"""Where the chunks of a ``certify`` or ``sweep-epsilon`` run are computed: in this process (``local``) or as
tasks on Ray actors (``ray``), on this machine or on a Ray cluster.

The driver (this process) alone writes the run directory: each chunk's rows are committed as they come back, in
whatever order, so a run stays resumable exactly as with the local executor (a driver killed and restarted
computes only the chunks not committed). A Ray actor loads the model and builds the backend once
(:class:`BackendRecipe`) and then computes chunk after chunk; a worker process that dies mid-chunk is restarted
by Ray and the chunk retried, and since only the driver commits, no sample is lost or written twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
from torch import Tensor

from robverify.backends.base import Backend, BackendOptions
from robverify.errors import RobverifyError

EXECUTORS = ("local", "ray")

#: a chunk's work: the backend and the chunk's samples (``robverify.runs.jobs.Samples``) -> its rows
ChunkWork = Callable[[Backend, Any], pd.DataFrame]


@dataclass(frozen=True)
class ExecutorConfig:
    """Where the chunks run: ``name`` local or ray; ``workers`` (Ray actors; None: one per CPU, or per GPU with
    ``--device cuda``, of the cluster); ``address`` of a running Ray cluster (None: a local Ray instance is
    started)."""

    name: str = "local"
    workers: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.name.strip().lower())
        if self.name not in EXECUTORS:
            raise RobverifyError(f"unknown executor: expected one of {', '.join(EXECUTORS)}, got {self.name!r}")
        if self.workers is not None and self.workers < 1:
            raise RobverifyError(f"--workers must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class BackendRecipe:
    """What a worker needs to build the run's backend itself (picklable): the ONNX model's path and the
    backend's settings as ``robverify.app.commands.prepare`` used them."""

    model: str
    device: str
    backend: str
    method: str
    batch_size: int
    seed: int
    options: BackendOptions

    def build(self) -> Backend:
        from robverify.backends import AttackConfig, get_backend
        from robverify.ir.model import load_model

        loaded = load_model(self.model, self.device)
        return get_backend(self.backend)(loaded, self.method, batch_size=self.batch_size,
                                         attack=AttackConfig(seed=self.seed), options=self.options)


class Executor(Protocol):
    """Computes ``work`` on every chunk of samples and yields each chunk's rows as it finishes."""

    name: str

    def map(self, work: ChunkWork, chunks: Sequence[Any]) -> Iterator[pd.DataFrame]:
        ...


class LocalExecutor:
    """Chunks one after another in this process, on the driver's backend."""

    name = "local"

    def __init__(self, backend: Backend) -> None:
        self.backend = backend

    def map(self, work: ChunkWork, chunks: Sequence[Any]) -> Iterator[pd.DataFrame]:
        for chunk in chunks:
            yield work(self.backend, chunk)


class _Worker:
    """A Ray actor's state: the backend, built once."""

    def __init__(self, recipe: BackendRecipe, threads: int) -> None:
        import torch

        torch.set_num_threads(max(1, threads))
        self.backend = recipe.build()

    def pid(self) -> int:
        import os

        return os.getpid()

    def run(self, work: ChunkWork, chunk: Any) -> pd.DataFrame:
        return work(self.backend, chunk)


def import_ray() -> Any:
    """``ray``, or a one-line error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise RobverifyError("--executor ray needs Ray: pip install 'ray>=2.30' (or make install)") from None
    return ray


def start_ray(address: str | None, cpus: int | None) -> Any:
    """``ray``, connected to the cluster at ``address`` or (None) to a local instance started with ``cpus`` CPUs
    (None: all), unless this process is connected already; a one-line error when that fails."""
    ray = import_ray()
    if not ray.is_initialized():
        try:
            ray.init(address=address, num_cpus=cpus if address is None else None, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        except Exception as err:  # connection refused, bad address: one line, not a traceback
            raise RobverifyError(f"Ray could not start or connect (address {address or 'local'}): "
                                 f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    return ray


#: a killed worker process is restarted and its chunk (or study step) retried this many times before the run fails
RETRIES = 3


class RayExecutor:
    """Chunks as tasks on ``workers`` Ray actors (one CPU each, or one GPU each on ``cuda``), at most two chunks
    queued per actor. ``address``: a running cluster (``auto``, ``ray://host:10001``, ...); None starts a local
    Ray instance for this process (its CPUs: ``workers``)."""

    name = "ray"

    def __init__(self, recipe: BackendRecipe, *, workers: int | None = None, address: str | None = None,
                 threads_per_worker: int = 1) -> None:
        self.ray = start_ray(address, workers)
        self.recipe = recipe
        self.threads = threads_per_worker
        gpu = recipe.device.strip().lower().startswith("cuda")
        available = self.ray.cluster_resources()
        capacity = int(available.get("GPU" if gpu else "CPU", 0))
        self.workers = workers or max(1, capacity)
        if gpu and capacity < 1:
            raise RobverifyError("--device cuda with --executor ray: the Ray cluster has no GPU")
        actor = self.ray.remote(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0, max_restarts=RETRIES,
                                max_task_retries=RETRIES)(_Worker)
        self.actors = [actor.remote(recipe, self.threads) for _ in range(self.workers)]

    def worker_pids(self) -> list[int]:
        """The process id of every actor (waits until they are up)."""
        return self.ray.get([a.pid.remote() for a in self.actors])

    def map(self, work: ChunkWork, chunks: Sequence[Any]) -> Iterator[pd.DataFrame]:
        todo = list(chunks)
        pending: dict[Any, int] = {}  # object ref -> actor index
        free = [i for i in range(self.workers) for _ in range(2)]
        work_ref = self.ray.put(work)
        while todo or pending:
            while todo and free:
                i = free.pop(0)
                pending[self.actors[i].run.remote(work_ref, todo.pop(0))] = i
            done, _ = self.ray.wait(list(pending), num_returns=1)
            ref = done[0]
            free.append(pending.pop(ref))
            try:
                rows = self.ray.get(ref)
            except self.ray.exceptions.RayError as err:
                raise RobverifyError(f"a chunk failed on a Ray worker (dead workers are retried {RETRIES} times): "
                                     f"{str(err).strip().splitlines()[-1]}") from None
            yield rows

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []


def make_executor(config: ExecutorConfig, backend: Backend, recipe: BackendRecipe | None = None
                  ) -> LocalExecutor | RayExecutor:
    """The executor ``config`` names, computing with ``backend`` here or with ``recipe``'s backend on Ray."""
    if config.name == "local":
        return LocalExecutor(backend)
    if recipe is None:
        raise RobverifyError("--executor ray needs the model's path (the workers load it themselves)")
    return RayExecutor(recipe, workers=config.workers, address=config.address)


def subset(samples: Any, idx: Tensor) -> Any:
    """The samples ``idx`` as a Samples of their own (what a chunk task carries)."""
    from dataclasses import replace

    return replace(samples, x=samples.x[idx], label=samples.label[idx], sample_id=samples.sample_id[idx])
