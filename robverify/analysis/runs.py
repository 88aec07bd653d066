"""Sweep run directories of a study, read together with their models' cards.

A compared run is a finished ``robverify sweep-epsilon`` run directory. Its ``run.json`` names the model; the
model card beside the model (``model.json``) says the transfer strategy, the source task, the training cost and
the task-similarity scores. Each (strategy, task) pair is one *entry*; runs of one entry whose models were trained
with different seeds (the card's ``seed``) are its *replicates*, labelled by that seed (``-`` where a card has none:
one replicate).

Cards written before the representation-change CKA was renamed store it as ``cka``; it is read as
``representation_change_cka`` (:data:`LEGACY_SIMILARITY_KEYS`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from robverify.errors import RobverifyError
from robverify.formats.model_card import ModelCard, card_path_for
from robverify.runs.schema import RESULTS_PARQUET, RUN_JSON, validate_table

__all__ = ["LEGACY_SIMILARITY_KEYS", "NO_SEED", "REPRESENTATION_CHANGE", "SEARCH_SETTINGS", "SOURCE_STRATEGY",
           "StudyRun", "load_study_runs", "runs_frame", "study_table"]

#: the strategy label of a model trained on its own task (no transfer)
SOURCE_STRATEGY = "source"
#: how a sweep searched (run.json's fingerprint): runs compared side by side must agree on these, else their radii
#: measure the method as much as the model (``compare --allow-mixed`` accepts them, and the report lists them)
SEARCH_SETTINGS = ("backend", "method", "verifier", "timeout", "tol", "grid", "eps_max")
#: the card's linear CKA between the source and the transferred model's features: a representation change, not a
#: task similarity (:mod:`robverify.analysis.similarity` writes it under this key)
REPRESENTATION_CHANGE = "representation_change_cka"
#: similarity keys of older cards -> their current names
LEGACY_SIMILARITY_KEYS = {"cka": REPRESENTATION_CHANGE}
#: the replicate label of a run whose model has no card (so no training seed)
NO_SEED = "-"


@dataclass(frozen=True)
class StudyRun:
    """One sweep run: its directory, the table rows, and what the model card says."""

    path: Path
    run_id: str
    model_path: Path
    strategy: str
    task: str
    source_task: str | None
    table: pd.DataFrame
    train_time_s: float | None = None
    card_eps: float | None = None
    training_method: str | None = None
    similarity: dict[str, float] = field(default_factory=dict)
    search: dict[str, str] = field(default_factory=dict)
    #: the replicate label: the card's training seed as text, :data:`NO_SEED` without a card
    replicate: str = NO_SEED


def _read_run_json(path: Path) -> dict:
    run_json = path / RUN_JSON
    if not run_json.is_file():
        raise RobverifyError(f"{path} is not a run directory (no {RUN_JSON})")
    try:
        meta = json.loads(run_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RobverifyError(f"{run_json} is not readable JSON ({exc})") from None
    if meta.get("status") != "complete" or not (path / RESULTS_PARQUET).is_file():
        raise RobverifyError(f"{path} is not a finished run (status {meta.get('status')!r}); finish it first")
    return meta


def _search_settings(meta: dict) -> dict[str, str]:
    """:data:`SEARCH_SETTINGS` of a run as text (``-`` where the run does not say: a default or an import)."""
    recorded = {**(meta.get("arguments") or {}), **(meta.get("fingerprint") or {})}
    out = {}
    for key in SEARCH_SETTINGS:
        v = recorded.get(key)
        if isinstance(v, (list, tuple)):
            v = ",".join(f"{float(e):g}" for e in v)
        elif isinstance(v, float):
            v = f"{v:g}"
        out[key] = "-" if v is None else str(v)
    return out


def _similarity(card: ModelCard | None) -> dict[str, float]:
    """The card's similarity scores under their current names (:data:`LEGACY_SIMILARITY_KEYS`)."""
    scores = dict(card.similarity) if card else {}
    for old, new in LEGACY_SIMILARITY_KEYS.items():
        if old in scores:
            value = scores.pop(old)
            scores.setdefault(new, value)
    return scores


def _replicate(card: ModelCard | None) -> str:
    seed = getattr(card, "seed", None) if card is not None else None
    return NO_SEED if seed is None else str(seed)


def _model_path(path: Path, meta: dict) -> Path:
    model = Path(str((meta.get("arguments") or {}).get("model", "")))
    for candidate in (model, path / model, path.parent / model):
        if candidate.is_file():
            return candidate.resolve()
    return model


def _load_one(path: Path) -> StudyRun:
    path = Path(path)
    meta = _read_run_json(path)
    if meta.get("command") != "sweep-epsilon":
        raise RobverifyError(f"{path} is a {meta.get('command')!r} run; compare reads sweep-epsilon runs")
    table = validate_table(pd.read_parquet(path / RESULTS_PARQUET), "sweep")
    model = _model_path(path, meta)
    card_file = card_path_for(model)
    card = ModelCard.from_json(card_file) if card_file.is_file() else None
    task = str(table["task"].iloc[0]) if len(table) else str((meta.get("arguments") or {}).get("task"))
    if card is None:
        strategy, source_task = model.stem, None
    else:
        strategy = card.strategy or SOURCE_STRATEGY
        source_task = card.source_task if card.strategy else card.task
    return StudyRun(
        path=path, run_id=str(meta.get("run_id")), model_path=model, strategy=strategy, task=task,
        source_task=source_task, table=table,
        train_time_s=card.train_time_s if card else None,
        card_eps=card.eps if card else None,
        training_method=card.training.get("method") if card else None,
        similarity=_similarity(card),
        search=_search_settings(meta),
        replicate=_replicate(card),
    )


def _shared_samples(a: StudyRun, b: StudyRun) -> int:
    return len(set(a.table["sample_id"].tolist()) & set(b.table["sample_id"].tolist()))


def load_study_runs(run_dirs: list[Path], *, allow_mixed: bool = False) -> list[StudyRun]:
    """Read the run directories; one run per (strategy, task, replicate) (replicates: models trained with
    different seeds), runs on one task must share samples, and all runs must have searched alike
    (:data:`SEARCH_SETTINGS`) unless ``allow_mixed``.

    Raises:
        RobverifyError: a directory is not a finished sweep run, two runs have the same strategy, task and training
            seed, two runs on the same task share no sample, or the runs' search settings differ (without
            ``allow_mixed``).
    """
    if not run_dirs:
        raise RobverifyError("compare: expected at least one run directory")
    runs = [_load_one(Path(p)) for p in run_dirs]
    if not allow_mixed:
        first = runs[0]
        for key in SEARCH_SETTINGS:
            other = next((run for run in runs if run.search[key] != first.search[key]), None)
            if other is not None:
                raise RobverifyError(
                    f"runs were made differently: {key} {first.search[key]} in {first.path} but {other.search[key]} "
                    f"in {other.path}; compare runs swept alike, or pass --allow-mixed")
    seen: dict[tuple[str, str, str], StudyRun] = {}
    for run in runs:
        other = seen.get((run.strategy, run.task, run.replicate))
        if other is not None:
            raise RobverifyError(f"runs {other.path} and {run.path} both hold strategy {run.strategy} on task "
                                 f"{run.task} (training seed {run.replicate}); compare one run per strategy and task "
                                 f"(and training seed)")
        seen[(run.strategy, run.task, run.replicate)] = run
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            if a.task == b.task and _shared_samples(a, b) == 0:
                raise RobverifyError(f"runs {a.path} and {b.path} (task {a.task}) share no samples; sweep both "
                                     f"with the same -n and --seed")
    return runs


def study_table(runs: list[StudyRun]) -> pd.DataFrame:
    """The sweep rows of all runs with ``strategy`` and ``replicate`` added and ``model`` set to the strategy
    (series label)."""
    frames = [run.table.assign(model=run.strategy, strategy=run.strategy, replicate=run.replicate) for run in runs]
    return pd.concat(frames, ignore_index=True)


def runs_frame(runs: list[StudyRun]) -> pd.DataFrame:
    """One row per run: strategy, task, replicate, source task, run directory, training facts and
    ``sim_<measure>``."""
    rows = []
    for run in runs:
        row = {"strategy": run.strategy, "task": run.task, "replicate": run.replicate,
               "source_task": run.source_task, "run_dir": str(run.path),
               "run_id": run.run_id, "train_time_s": run.train_time_s, "card_eps": run.card_eps,
               "training_method": run.training_method}
        row.update({f"search_{k}": v for k, v in run.search.items()})
        row.update({f"sim_{k}": float(v) for k, v in run.similarity.items()})
        rows.append(row)
    return pd.DataFrame(rows)
