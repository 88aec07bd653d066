"""The VERONA sweep behind ``sweep-epsilon --backend verona``: VERONA's own pipeline (``ExperimentRepository``,
``PredictionsBasedSampler``, one2any / one2one property generator, ``BinarySearchEpsilonValueEstimator`` over the
eps grid) with the verifier of a :class:`~robverify.backends.verona.VeronaBackend`, converted to the tidy table.

The experiment folder lies under ``RUN_DIR/verona/``. Rows are committed to the run directory in chunks, so a
killed sweep resumes with the samples it had not finished.

From VERONA's answers robverify keeps what they prove: ``eps_lo`` is the largest eps answered UNSAT by a sound
verifier (NaN when none), ``eps_hi`` the smallest answered SAT (inf when none). With ``pgd`` UNSAT only means
the attack failed: ``eps_lo`` is 0 (the clean sample is correctly classified), status ``upper-bound``, and
VERONA's own estimate stays in ``verona_epsilon_value``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from robverify.backends.verona import VeronaBackend
from robverify.errors import RobverifyError
from robverify.runs.jobs import Samples
from robverify.runs.rundir import RunDir
from robverify.runs.schema import SweepStatus

EXPERIMENT_DIR = "verona"


def _experiment(run: RunDir, backend: VeronaBackend):
    """The run's VERONA ``ExperimentRepository``, with its one experiment created or loaded."""
    from ada_verona import ExperimentRepository

    base = run.path / EXPERIMENT_DIR
    base.mkdir(exist_ok=True)
    repo = ExperimentRepository(base_path=base, network_folder=Path(backend.model.path).parent)
    existing = sorted(p.name for p in base.iterdir() if (p / "results").is_dir())
    if existing:
        repo.load_experiment(existing[0])
    else:
        repo.initialize_new_experiment(f"{backend.model.name}-{backend.verifier}")
        repo.save_configuration({"verifier": backend.verifier, "network": str(backend.model.path)})
    return repo


def grid_bracket(calls: list[tuple[float, str]], grid: Sequence[float], attack: bool) -> tuple[float, float, str]:
    """``(eps_lo, eps_hi, status)`` of one sample from its ``(eps, result)`` answers."""
    unsat = [e for e, r in calls if r == "UNSAT"]
    sat = [e for e, r in calls if r == "SAT"]
    eps_hi = min(sat) if sat else math.inf
    if attack:
        return 0.0, eps_hi, SweepStatus.UPPER_BOUND.value
    if not unsat:
        return math.nan, eps_hi, SweepStatus.UNVERIFIED.value
    eps_lo = max(unsat)
    values = sorted(set(float(g) for g in grid))
    if eps_lo >= values[-1]:
        return eps_lo, eps_hi, SweepStatus.ROBUST.value
    above = values[values.index(eps_lo) + 1] if eps_lo in values else math.inf
    return eps_lo, eps_hi, SweepStatus.EXACT.value if eps_hi <= above else SweepStatus.GAP.value


def run_verona_sweep(run: RunDir, backend: VeronaBackend, samples: Samples, grid: Sequence[float], *,
                     target: int | None = None, domain: tuple[float, float] = (0.0, 1.0), chunk: int = 16,
                     progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Per-sample brackets by VERONA's binary search over ``grid``; one row per sample (the tidy sweep table).

    ``target``: one2one properties against this class (samples of that label are skipped as VERONA would
    compare a class with itself); None: one2any.
    """
    from ada_verona import (BinarySearchEpsilonValueEstimator, One2AnyPropertyGenerator, One2OnePropertyGenerator,
                            ONNXNetwork, PredictionsBasedSampler)

    from robverify.backends.verona_modules import CallLog, LoggedModule, SampleDataset

    if not grid:
        raise RobverifyError("--backend verona needs --grid (VERONA searches an epsilon list)")
    epsilons = sorted(set(float(g) for g in grid))
    repo = _experiment(run, backend)
    network = ONNXNetwork(Path(backend.model.path))
    n_out = backend.model.graph.n_outputs
    done = {k[0] for k in run.done_keys()}
    todo = [i for i, s in enumerate(samples.sample_id.tolist()) if s not in done]
    for start in range(0, len(todo), chunk):
        idx = torch.tensor(todo[start:start + chunk], dtype=torch.long)
        began = time.perf_counter()
        x, label, sid = samples.x[idx], samples.label[idx], samples.sample_id[idx]
        pred = backend.model.predict(x)
        dataset = SampleDataset(x, label, sid)
        chosen = PredictionsBasedSampler(sample_correct_predictions=True).sample(network, dataset)
        keep = {dp.id for dp in chosen} & {int(s) for s, p, y in zip(sid, pred, label) if int(p) == int(y)}
        log = CallLog()
        module = LoggedModule(backend.verification_module(), log)
        verona_eps: dict[int, tuple[float, float]] = {}
        seconds: dict[int, float] = {}
        for point in chosen:
            if point.id not in keep or (target is not None and point.label == target):
                continue
            generator = (One2AnyPropertyGenerator(n_out, *domain) if target is None else
                         One2OnePropertyGenerator(target, n_out, *domain))
            context = repo.create_verification_context(network, point, generator)
            result = BinarySearchEpsilonValueEstimator(epsilons, module).compute_epsilon_value(context)
            repo.save_result(result)
            verona_eps[point.id] = (float(result.epsilon), float(result.smallest_sat_value))
            seconds[point.id] = float(result.time)
        rows = []
        for j, s in enumerate(sid.tolist()):
            calls = log.for_image(s)
            if s in verona_eps:
                eps_lo, eps_hi, status = grid_bracket(calls, epsilons, backend.is_attack)
                ev, ss = verona_eps[s]
            else:
                eps_lo, eps_hi, status = 0.0, 0.0, SweepStatus.MISCLASSIFIED.value
                ev, ss = math.nan, math.nan
            rows.append(dict(eps_lo=eps_lo, eps_hi=eps_hi, status=status, n_calls=len(calls),
                             verona_epsilon_value=ev, verona_smallest_sat_value=ss,
                             time_s=seconds.get(s, 0.0)))
        extra = pd.DataFrame(rows)
        table = pd.DataFrame({
            "run_id": run.run_id, "model": backend.model.name, "backend": backend.name,
            "method": backend.verifier, "task": samples.task, "sample_id": sid.numpy(),
            "label": label.numpy(), "pred": pred.numpy(), "time_s": extra["time_s"].to_numpy(),
            "eps_lo": extra["eps_lo"].to_numpy(np.float64), "eps_hi": extra["eps_hi"].to_numpy(np.float64),
            "status": extra["status"], "n_calls": extra["n_calls"].to_numpy(np.int64),
            "verona_epsilon_value": extra["verona_epsilon_value"].to_numpy(np.float64),
            "verona_smallest_sat_value": extra["verona_smallest_sat_value"].to_numpy(np.float64),
        })
        # time of the sampler and bookkeeping, spread like run_sweep does
        overhead = (time.perf_counter() - began - sum(seconds.values())) / max(len(table), 1)
        table["time_s"] = table["time_s"] + overhead
        run.commit(table)
        if progress:
            progress(len(table))
    run.update(verona_experiment=str(_experiment_path(run)))
    return run.finalize()


def _experiment_path(run: RunDir) -> Path | None:
    base = run.path / EXPERIMENT_DIR
    found = sorted(p for p in base.iterdir() if (p / "results").is_dir()) if base.is_dir() else []
    return found[0] if found else None
