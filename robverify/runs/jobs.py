"""The two jobs behind ``certify`` and ``sweep-epsilon``: chunked over samples, committed to a run directory
as they finish, so an interrupted run resumes without recomputing or duplicating samples."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from functools import partial
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor

from robverify.backends.base import Backend
from robverify.runs.executors import ChunkWork, Executor, LocalExecutor, subset
from robverify.runs.rundir import RunDir
from robverify.runs.schema import SweepStatus
from robverify.runs.search import close_brackets, critical_epsilon
from robverify.runs.sweep import SweepSettings
from robverify.spec import Verdict, robustness_spec

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Samples:
    """The evaluated samples: ``x`` ``[N, *model_input_shape]``, ``label``, ``sample_id`` ``[N]`` (long);
    ``domain``: the input range boxes are clipped to (eps is in its scale)."""

    x: Tensor
    label: Tensor
    sample_id: Tensor
    task: str
    n_classes: int
    domain: tuple[float, float] = (0.0, 1.0)


def _common(run_id: str, backend: Backend, samples: Samples, pred: Tensor, seconds: float) -> dict:
    n = samples.sample_id.numel()
    return {
        "run_id": [run_id] * n,
        "model": [backend.model.name] * n,
        "backend": [backend.name] * n,
        "method": [backend.method.value] * n,
        "task": [samples.task] * n,
        "sample_id": samples.sample_id.tolist(),
        "label": samples.label.tolist(),
        "pred": pred.tolist(),
        "time_s": [seconds / max(n, 1)] * n,
    }


def _pending(run: RunDir, samples: Samples, chunk: int) -> list[Samples]:
    done = {k[0] for k in run.done_keys()}
    todo = torch.tensor([i for i, s in enumerate(samples.sample_id.tolist()) if s not in done], dtype=torch.long)
    return [subset(samples, idx) for idx in torch.split(todo, chunk)] if todo.numel() else []


def _drive(run: RunDir, executor: Executor, work: ChunkWork, chunks: list[Samples],
           progress: Progress | None) -> pd.DataFrame:
    """Every chunk through ``executor``, each one's rows committed as they come back; the finalised table."""
    for rows in executor.map(work, chunks):
        run.commit(rows)
        if progress:
            progress(len(rows["sample_id"].unique()))
    return run.finalize()


def _certify_one_eps(backend: Backend, x: Tensor, label: Tensor, eps: float, samples: Samples) -> pd.DataFrame:
    """Rows of correctly classified samples ``x`` [B, *in] at one ``eps``: the sound bound first, then a re-checked
    attack on what it left open, then (deciding backends) branch and bound within ``backend.sample_budget`` seconds
    on what is still open. Columns ``verdict``, ``margin_lb``, ``decided_by``, ``domains``, ``bab_s``."""
    n = label.numel()
    spec = robustness_spec(x, label, float(eps), samples.n_classes, samples.domain)
    with backend.bounds_only() if backend.decides else contextlib.nullcontext():
        result = backend.verify(spec)
    verdict = [Verdict.VERIFIED if bool(v) else Verdict.UNKNOWN for v in result.verified]
    by = ["bound" if m > 0 else "complete" if bool(v) else "none"
          for v, m in zip(result.verified, result.margin_lb.tolist())]
    domains = torch.zeros(n, dtype=torch.long)
    seconds = torch.zeros(n, dtype=torch.float64)
    open_ = (~result.verified).nonzero().squeeze(1)
    if open_.numel():
        found = backend.falsify(spec.select(open_.to(spec.x_lo.device)), x[open_]).falsified
        for i in open_[found].tolist():
            verdict[i], by[i] = Verdict.FALSIFIED, "attack"
        open_ = open_[~found]
    if backend.decides and open_.numel():
        budget = torch.full((open_.numel(),), float(backend.sample_budget), dtype=torch.float64)
        decision = backend.decide(spec.select(open_.to(spec.x_lo.device)), budget)
        domains[open_], seconds[open_] = decision.domains.cpu(), decision.seconds.cpu()
        for j, i in enumerate(open_.tolist()):
            if decision.verdict[j] in (Verdict.VERIFIED, Verdict.FALSIFIED):
                verdict[i], by[i] = decision.verdict[j], "bab"
    return pd.DataFrame({"eps": float(eps), "verdict": [v.value for v in verdict],
                         "margin_lb": result.margin_lb.numpy(), "decided_by": by, "domains": domains.numpy(),
                         "bab_s": seconds.numpy()})


def certify_chunk(backend: Backend, samples: Samples, *, run_id: str, eps: Sequence[float]) -> pd.DataFrame:
    """The certify rows of one chunk of samples: a verdict per (sample, eps), and how it was decided
    (:data:`robverify.runs.schema.CERTIFY_DECISION_COLUMNS`)."""
    start = time.perf_counter()
    x, label = samples.x, samples.label
    n = label.numel()
    pred = backend.model.predict(x)
    ok = (pred == label).nonzero().squeeze(1)
    frames = []
    for e in eps:
        rows = pd.DataFrame({"eps": float(e), "verdict": [Verdict.MISCLASSIFIED.value] * n,
                             "margin_lb": float("nan"), "decided_by": "none", "domains": 0, "bab_s": 0.0},
                            index=range(n))
        if ok.numel():
            rows.iloc[ok.tolist()] = _certify_one_eps(backend, x[ok], label[ok], float(e), samples).to_numpy()
        frames.append(rows.astype({"eps": float, "margin_lb": float, "domains": "int64", "bab_s": float}))
    seconds = time.perf_counter() - start
    common = pd.DataFrame(_common(run_id, backend, samples, pred, seconds / max(len(eps), 1)))
    return pd.concat([pd.concat([common, f], axis=1) for f in frames], ignore_index=True)


def run_certify(run: RunDir, backend: Backend, samples: Samples, eps: Sequence[float], *, chunk: int = 64,
                progress: Progress | None = None, executor: Executor | None = None) -> pd.DataFrame:
    """Verdict per (sample, eps): misclassified (onnxruntime), verified (sound bound), falsified (counterexample
    re-checked in onnxruntime) or unknown. One row per sample and eps. Chunks of ``chunk`` samples computed by
    ``executor`` (default: here, on ``backend``) and committed as they finish."""
    work = partial(certify_chunk, run_id=run.run_id, eps=tuple(float(e) for e in eps))
    return _drive(run, executor or LocalExecutor(backend), work, _pending(run, samples, chunk), progress)


def run_sweep(run: RunDir, backend: Backend, samples: Samples, settings: SweepSettings | None = None, *,
              chunk: int | None = None, progress: Progress | None = None,
              executor: Executor | None = None) -> pd.DataFrame:
    """The robustness distribution: the bracket ``[eps_lo, eps_hi]`` of every sample (one row each), by the
    batched bracket search with ``settings`` (default :class:`SweepSettings()`).

    With a deciding backend (``backend.decides``, e.g. ``bab``) the bracket search runs on the sound bound alone,
    then :func:`~robverify.runs.search.close_brackets` spends ``backend.sample_budget`` seconds per sample inside
    the brackets it left open. Chunks of ``chunk`` samples (default 64; 16 with a deciding backend, so an
    interrupted run loses little search) are computed by ``executor`` (default: here, on ``backend``) and committed
    as they finish."""
    settings = settings or SweepSettings()
    work = partial(sweep_chunk, run_id=run.run_id, settings=settings)
    chunk = chunk or (16 if backend.decides else 64)
    return _drive(run, executor or LocalExecutor(backend), work, _pending(run, samples, chunk), progress)


def sweep_chunk(backend: Backend, samples: Samples, *, run_id: str, settings: SweepSettings) -> pd.DataFrame:
    """The sweep rows of one chunk of samples: the bracket of each (see :func:`run_sweep`)."""
    deciding = backend.decides
    start = time.perf_counter()
    x, label = samples.x, samples.label
    pred = backend.model.predict(x)
    correct = pred == label
    n = label.numel()
    eps_lo = torch.zeros(n, dtype=torch.float64)
    eps_hi = torch.zeros(n, dtype=torch.float64)
    n_calls = torch.zeros(n, dtype=torch.long)
    n_attacks = torch.zeros(n, dtype=torch.long)
    domains = torch.zeros(n, dtype=torch.long)
    bab_s = torch.zeros(n, dtype=torch.float64)
    status = [SweepStatus.MISCLASSIFIED.value] * n
    lo_by, hi_by = ["none"] * n, ["none"] * n
    ok = correct.nonzero().squeeze(1)
    if ok.numel():
        search = dict(tol=settings.tol, grid=settings.grid, eps_max=settings.eps_max, domain=samples.domain)
        if deciding:
            with backend.bounds_only():
                res = critical_epsilon(backend, x[ok], label[ok], samples.n_classes, **search)
            res = close_brackets(backend, x[ok], label[ok], samples.n_classes, res,
                                 budget=backend.sample_budget, **search)
        else:
            res = critical_epsilon(backend, x[ok], label[ok], samples.n_classes, **search)
        eps_lo[ok], eps_hi[ok] = res.eps_lo, res.eps_hi
        n_calls[ok], n_attacks[ok] = res.n_calls, res.n_attacks
        domains[ok], bab_s[ok] = res.domains, res.bab_s
        for j, i in enumerate(ok.tolist()):
            status[i] = SweepStatus(res.status[j]).value
            lo_by[i], hi_by[i] = res.lo_by[j], res.hi_by[j]
    seconds = time.perf_counter() - start
    rows = pd.DataFrame(_common(run_id, backend, samples, pred, seconds))
    rows["eps_lo"], rows["eps_hi"] = eps_lo.numpy(), eps_hi.numpy()
    rows["status"], rows["n_calls"], rows["n_attacks"] = status, n_calls.numpy(), n_attacks.numpy()
    rows["lo_by"], rows["hi_by"] = lo_by, hi_by
    rows["domains"], rows["bab_s"] = domains.numpy(), bab_s.numpy()
    return rows
