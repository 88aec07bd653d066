"""The two jobs behind ``certify`` and ``sweep-epsilon``: chunked over samples, committed to a run directory
as they finish, so an interrupted run resumes without recomputing or duplicating samples."""

from __future__ import annotations

import time
from dataclasses import dataclass
from collections.abc import Callable, Sequence

import pandas as pd
import torch
from torch import Tensor

from robverify.backends.base import Backend
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


def _common(run: RunDir, backend: Backend, samples: Samples, idx: Tensor, pred: Tensor, seconds: float) -> dict:
    n = idx.numel()
    return {
        "run_id": [run.run_id] * n,
        "model": [backend.model.name] * n,
        "backend": [backend.name] * n,
        "method": [backend.method.value] * n,
        "task": [samples.task] * n,
        "sample_id": samples.sample_id[idx].tolist(),
        "label": samples.label[idx].tolist(),
        "pred": pred.tolist(),
        "time_s": [seconds / max(n, 1)] * n,
    }


def _pending(run: RunDir, samples: Samples, chunk: int) -> list[Tensor]:
    done = {k[0] for k in run.done_keys()}
    todo = torch.tensor([i for i, s in enumerate(samples.sample_id.tolist()) if s not in done], dtype=torch.long)
    return list(torch.split(todo, chunk)) if todo.numel() else []


def run_certify(run: RunDir, backend: Backend, samples: Samples, eps: Sequence[float], *, chunk: int = 64,
                progress: Progress | None = None) -> pd.DataFrame:
    """Verdict per (sample, eps): misclassified (onnxruntime), verified (sound bound), falsified (counterexample
    re-checked in onnxruntime) or unknown. One row per sample and eps."""
    for idx in _pending(run, samples, chunk):
        start = time.perf_counter()
        x, label = samples.x[idx], samples.label[idx]
        pred = backend.model.predict(x)
        correct = pred == label
        frames = []
        for e in eps:
            verdict = [Verdict.MISCLASSIFIED.value] * idx.numel()
            margin = torch.full((idx.numel(),), float("nan"), dtype=torch.float64)
            ok = correct.nonzero().squeeze(1)
            if ok.numel():
                spec = robustness_spec(x[ok], label[ok], float(e), samples.n_classes, samples.domain)
                result = backend.verify(spec)
                margin[ok] = result.margin_lb
                open_ = (~result.verified).nonzero().squeeze(1)
                falsified = torch.zeros(ok.numel(), dtype=torch.bool)
                if open_.numel():
                    sub = spec.select(open_.to(spec.x_lo.device))
                    falsified[open_] = backend.falsify(sub, x[ok][open_]).falsified
                for j, i in enumerate(ok.tolist()):
                    verdict[i] = (Verdict.VERIFIED if bool(result.verified[j]) else
                                  Verdict.FALSIFIED if bool(falsified[j]) else Verdict.UNKNOWN).value
            frames.append(pd.DataFrame({"eps": float(e), "verdict": verdict, "margin_lb": margin.numpy()}))
        seconds = time.perf_counter() - start
        common = pd.DataFrame(_common(run, backend, samples, idx, pred, seconds / max(len(eps), 1)))
        rows = pd.concat([pd.concat([common, f], axis=1) for f in frames], ignore_index=True)
        run.commit(rows)
        if progress:
            progress(idx.numel())
    return run.finalize()


def run_sweep(run: RunDir, backend: Backend, samples: Samples, settings: SweepSettings | None = None, *,
              chunk: int | None = None, progress: Progress | None = None) -> pd.DataFrame:
    """The robustness distribution: the bracket ``[eps_lo, eps_hi]`` of every sample (one row each), by the
    batched bracket search with ``settings`` (default :class:`SweepSettings()`).

    With a deciding backend (``backend.decides``, e.g. ``bab``) the bracket search runs on the sound bound alone,
    then :func:`~robverify.runs.search.close_brackets` spends ``backend.sample_budget`` seconds per sample inside
    the brackets it left open. Chunks of ``chunk`` samples (default 64; 16 with a deciding backend, so an
    interrupted run loses little search) are committed as they finish."""
    settings = settings or SweepSettings()
    deciding = backend.decides
    chunk = chunk or (16 if deciding else 64)
    for idx in _pending(run, samples, chunk):
        start = time.perf_counter()
        x, label = samples.x[idx], samples.label[idx]
        pred = backend.model.predict(x)
        correct = pred == label
        n = idx.numel()
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
        rows = pd.DataFrame(_common(run, backend, samples, idx, pred, seconds))
        rows["eps_lo"], rows["eps_hi"] = eps_lo.numpy(), eps_hi.numpy()
        rows["status"], rows["n_calls"], rows["n_attacks"] = status, n_calls.numpy(), n_attacks.numpy()
        rows["lo_by"], rows["hi_by"] = lo_by, hi_by
        rows["domains"], rows["bab_s"] = domains.numpy(), bab_s.numpy()
        run.commit(rows)
        if progress:
            progress(n)
    return run.finalize()
