"""The study runner behind ``robverify run STUDY.toml`` and ``robverify demo``: source training -> transfers
(each exported with its model card by the trainer) -> sweeps -> compare, every step cached by the hash of its
inputs.

A step's folder name ends with that hash, and a finished step leaves ``step.json`` (its inputs and hash) behind.
A re-run skips every step whose ``step.json`` holds the same hash, so running a study twice recomputes nothing,
and changing one setting redoes only the steps that depend on it (a transfer's inputs include its source's hash,
a sweep's its model's, the report's all sweeps'). Like ``robverify/cli.py`` this module sits above ``trainers``.

A study file (TOML; see ``examples/demo_study.toml``)::

    [study]     out (folder, relative to the study file), seed, device, data_root
    [source]    task, arch, method, eps, epochs, hyper = {...}      -- or model = "folder of robverify train"
    [transfer]  targets = [...], strategies = [...], epochs, blocks, eps, hyper = {...}, objective,
                seeds = [...] (one transfer, and one sweep of it, per training seed)
    [sweep]     n, method, backend, tol, eps_max, grid, batch_size, include_source,
                data = {"<target task>" = "FILE or FOLDER", source = "..."}, input_range, mean, std
    [compare]   eps = [...], eps_ref, seed

Unknown tables or keys are refused with the line they are on.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from robverify.progress import Bar, progress_bar
from robverify.errors import RobverifyError
from robverify.files import atomic_write_text, file_sha256

__all__ = ["DEMO_STUDY", "Step", "Study", "StudyResult", "load_study", "parse_study", "run_study"]

STEP_JSON = "step.json"
#: [sweep] keys of the user's own test data
_DATA_KEYS = ("data", "input_range", "mean", "std")

#: the embedded default study of ``robverify demo`` (examples/demo_study.toml holds the same text)
DEMO_STUDY = """\
# The embedded default study of `robverify demo`: a CROWN-IBP-trained cnn-small on mnist5k[0-4] transferred to four
# targets of graded similarity with five strategies; every model swept on the same 40 test samples.
# About 4-8 minutes on 2 CPU cores (measured on fresh checkouts: 243 s, 376 s and 475 s, at most 2.4 GB); a second
# run is all cached.

[study]
out = "demo-out"
seed = 0
device = "cpu"

[source]
task = "mnist5k[0-4]"
arch = "cnn-small"
method = "crown-ibp"
eps = 0.1
epochs = 20
hyper = { batch_size = 64 }

[transfer]
targets = ["mnist5k[5-9]", "mnist5k[5-9]+invert", "mnist5k[5-9]+rot90", "digits+resize28"]
strategies = ["linear-probe", "partial-ft", "full-ft", "adv-ft", "certified-ft"]
blocks = 1
epochs = 5
hyper = { attack_steps = 5, batch_size = 64 }

[sweep]
n = 40
method = "crown"
tol = 0.002
eps_max = 0.3
include_source = true

[compare]
seed = 0
"""

_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "study": {"out": (str,), "seed": (int,), "device": (str,), "data_root": (str,), "name": (str,),
              "executor": (str,), "ray_address": (str,), "workers": (int,)},
    "source": {"task": (str,), "arch": (str,), "method": (str,), "eps": (int, float), "epochs": (int,),
               "hyper": (dict,), "model": (str,)},
    "transfer": {"targets": (list,), "strategies": (list,), "epochs": (int,), "blocks": (int,), "eps": (int, float),
                 "hyper": (dict,), "objective": (str,), "seeds": (list,)},
    "sweep": {"n": (int,), "method": (str,), "backend": (str,), "tol": (int, float), "eps_max": (int, float),
              "grid": (str,), "batch_size": (int,), "include_source": (bool,), "data": (dict,),
              "input_range": (str,), "mean": (str,), "std": (str,)},
    "compare": {"eps": (list,), "eps_ref": (int, float), "seed": (int,)},
}
_TYPE_WORDS = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list",
               dict: "an inline table"}
_REQUIRED = {"transfer": ("targets", "strategies")}
_DEFAULTS: dict[str, dict[str, Any]] = {
    "study": {"out": "study-out", "seed": 0, "device": "cpu", "data_root": None, "name": "study",
              "executor": "local", "ray_address": None, "workers": None},
    "source": {"arch": "cnn-small", "method": "pgd", "eps": 0.1, "epochs": 3, "hyper": {}, "model": None,
               "task": None},
    "transfer": {"epochs": 2, "blocks": None, "eps": None, "hyper": {}, "objective": None, "seeds": None},
    "sweep": {"n": 30, "method": "crown", "backend": "native", "tol": 1e-3, "eps_max": 0.3, "grid": None,
              "batch_size": 256, "include_source": True, "data": {}, "input_range": None, "mean": None,
              "std": None},
    "compare": {"eps": None, "eps_ref": None, "seed": 0},
}


# ---------------------------------------------------------------------------------------------------------------
# the study file


@dataclass(frozen=True)
class Study:
    """A parsed study: its settings per table (defaults filled in) and where it was read from."""

    path: Path
    settings: dict[str, dict[str, Any]]
    lines: dict[tuple[str, str], int] = field(default_factory=dict)

    def __getitem__(self, table: str) -> dict[str, Any]:
        return self.settings[table]

    def where(self, table: str, key: str | None = None) -> str:
        """``file:line`` of a key (or a table) for error messages."""
        line = self.lines.get((table, key or ""))
        return f"{self.path}:{line}" if line else str(self.path)


_HEADER = re.compile(r"^\s*\[\s*([A-Za-z0-9_.\-\"' ]+?)\s*\]\s*(#.*)?$")
_KEY = re.compile(r"^\s*(?:\"([^\"]+)\"|'([^']+)'|([A-Za-z0-9_\-]+))\s*=")


def _key_lines(text: str) -> dict[tuple[str, str], int]:
    """(table, key) -> line number of top-level keys per ``[table]``; (table, "") -> the header's line."""
    lines: dict[tuple[str, str], int] = {}
    table = ""
    depth = 0  # inside a multi-line array or inline table: keys there are values, not settings
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.split("#", 1)[0]
        if depth == 0:
            header = _HEADER.match(line)
            if header:
                table = header.group(1).strip().strip("\"'")
                lines.setdefault((table, ""), number)
                continue
            key = _KEY.match(line)
            if key:
                lines.setdefault((table, next(g for g in key.groups() if g)), number)
        depth += stripped.count("[") + stripped.count("{") - stripped.count("]") - stripped.count("}")
        depth = max(depth, 0)
    return lines


def parse_study(text: str, path: Path) -> Study:
    """Parse and check a study file's text; RobverifyError naming the file, line and key for anything unknown,
    missing or of the wrong type."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RobverifyError(f"{path}: not valid TOML: {exc}") from None
    lines = _key_lines(text)
    study = Study(Path(path), {}, lines)
    for table, content in data.items():
        if table not in _SCHEMA:
            raise RobverifyError(f"{study.where(table) if (table, '') in lines else study.where('', table)}: "
                                 f"unknown table [{table}]; expected one of {', '.join(_SCHEMA)}")
        if not isinstance(content, dict):
            raise RobverifyError(f"{study.where('', table)}: {table} must be a table [{table}]")
        for key, value in content.items():
            allowed = _SCHEMA[table].get(key)
            if allowed is None:
                raise RobverifyError(f"{study.where(table, key)}: unknown key {key!r} in [{table}]; expected one of "
                                     f"{', '.join(_SCHEMA[table])}")
            if isinstance(value, bool) and bool not in allowed or not isinstance(value, allowed):
                names = " or ".join(_TYPE_WORDS[t] for t in allowed)
                raise RobverifyError(f"{study.where(table, key)}: [{table}] {key} must be {names}, got {value!r}")
    for table, keys in _REQUIRED.items():
        for key in keys:
            if key not in data.get(table, {}):
                raise RobverifyError(f"{path}: [{table}] needs {key}")
    settings = {table: {**defaults, **data.get(table, {})} for table, defaults in _DEFAULTS.items()}
    source = settings["source"]
    if source["model"] is None and source["task"] is None:
        raise RobverifyError(f"{path}: [source] needs task (to train a source model) or model (a trained one)")
    if source["model"] is not None and any(k in data.get("source", {}) for k in ("task", "arch", "method", "eps",
                                                                                    "epochs", "hyper")):
        raise RobverifyError(f"{study.where('source', 'model')}: [source] model is a trained source; "
                             f"leave out the training keys")
    from robverify.runs.executors import EXECUTORS

    run = settings["study"]
    if run["executor"] not in EXECUTORS:
        raise RobverifyError(f"{study.where('study', 'executor')}: [study] executor must be one of "
                             f"{', '.join(EXECUTORS)}, got {run['executor']!r}")
    if run["workers"] is not None and run["workers"] < 1:
        raise RobverifyError(f"{study.where('study', 'workers')}: [study] workers must be >= 1, got {run['workers']}")
    for key in ("targets", "strategies"):
        values = settings["transfer"][key]
        if not values or not all(isinstance(v, str) for v in values):
            raise RobverifyError(f"{study.where('transfer', key)}: [transfer] {key} must be a non-empty list of "
                                 f"strings")
    seeds = settings["transfer"]["seeds"]
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)
                              or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in seeds)):
        raise RobverifyError(f"{study.where('transfer', 'seeds')}: [transfer] seeds must be a non-empty list of "
                             f"distinct non-negative integers, got {seeds!r}")
    return Study(Path(path), settings, lines)


def load_study(path: Path) -> Study:
    """Read and check a study file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RobverifyError(f"study file not found: {path}") from None
    except OSError as exc:
        raise RobverifyError(f"cannot read study file {path}: {exc.strerror or exc}") from None
    return parse_study(text, path)


# ---------------------------------------------------------------------------------------------------------------
# steps


def _hash(inputs: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")


@dataclass
class Step:
    """One cached step: ``kind`` (source, transfer, sweep, compare), its inputs, folder and work."""

    kind: str
    label: str
    inputs: dict[str, Any]
    folder: Path
    work: Callable[["Step"], None]
    external: bool = False  # an existing model named by the study: never recomputed
    deps: list["Step"] = field(default_factory=list)  # steps whose output this one reads
    ran: bool = False
    seconds: float = 0.0

    @property
    def key(self) -> str:
        return _hash(self.inputs)

    def done(self) -> bool:
        if self.external:
            return True
        marker = self.folder / STEP_JSON
        if not marker.is_file():
            return False
        try:
            return json.loads(marker.read_text(encoding="utf-8")).get("hash") == self.key
        except (OSError, ValueError):
            return False

    def run(self) -> float:
        """Do the work and mark the step done; its seconds."""
        started = time.perf_counter()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.work(self)
        self.seconds = time.perf_counter() - started
        self.ran = True
        self.finish()
        return self.seconds

    def finish(self) -> None:
        record = {"kind": self.kind, "label": self.label, "hash": self.key, "inputs": self.inputs,
                  "seconds": round(self.seconds, 3)}
        atomic_write_text(self.folder / STEP_JSON, json.dumps(record, indent=2, default=str) + "\n")


@dataclass(frozen=True)
class StudyResult:
    """The steps (in order, with whether each ran) and the compare report."""

    steps: list[Step]
    report: Any  # robverify.analysis.report.Report

    @property
    def ran(self) -> list[Step]:
        return [s for s in self.steps if s.ran]

    def outcome(self) -> list[str]:
        """What the command line prints: steps run, the headline table, the report's path."""
        ran = self.ran
        done = f" ({sum(s.seconds for s in ran):.0f} s)" if ran else " (all cached)"
        return [f"{len(ran)} of {len(self.steps)} steps ran{done}", self.report.headline.to_string(index=False),
                f"report: {self.report.html.resolve()}"]


def _sweep_data(study: Study, targets: list[str]) -> dict[str, Path]:
    """``[sweep] data``: the user's test data per model, keyed by target task (as parsed) or ``source``; paths
    relative to the study file. Keys that name no model of the study and files that do not exist are refused."""
    from trainers.tasks import parse_task

    where = study.where("sweep", "data")
    out: dict[str, Path] = {}
    for key, value in study["sweep"]["data"].items():
        if not isinstance(value, str):
            raise RobverifyError(f"{where}: [sweep] data values must be file or folder names, got {value!r}")
        name = key
        if key != "source":
            try:
                name = str(parse_task(key))
            except RobverifyError as exc:
                raise RobverifyError(f"{where}: [sweep] data: {exc}") from None
            if name not in targets:
                raise RobverifyError(f"{where}: [sweep] data names {key!r}, which is not a target of [transfer]")
        path = Path(value) if Path(value).is_absolute() else study.path.parent / value
        if not path.exists():
            raise RobverifyError(f"{where}: [sweep] data for {key!r}: {path} does not exist")
        out[name] = path
    return out


def _data_digest(path: Path) -> str:
    """sha256 of a data file, or of a folder's files (names and contents), for the sweep step's cache key."""
    if path.is_file():
        return file_sha256(path)
    digest = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(f.relative_to(path)).encode() + b"\0" + file_sha256(f).encode())
    return digest.hexdigest()


def _sweep(model: Path, task: str | None, out: Path, study: Study, progress: Callable[[int], None],
           data: Path | None = None) -> None:
    """What ``robverify sweep-epsilon`` does, with the study's settings (same run directory and fingerprint);
    ``data``: the user's test data instead of the task's test split."""
    from robverify.app.commands import backend_options, prepare_sweep, run_sweep_job
    from robverify.runs.sweep import SweepSettings

    s, seed = study["sweep"], study["study"]["seed"]
    settings = SweepSettings.parse(float(s["tol"]), s["grid"] or None, float(s["eps_max"]))
    data_root = Path(study["study"]["data_root"]) if study["study"]["data_root"] else None
    prep = prepare_sweep(model, task=None if data is not None else task, n=s["n"], method=s["method"],
                         backend=s["backend"], settings=settings, out=out, seed=seed, device=study["study"]["device"],
                         data_root=data_root, batch_size=s["batch_size"], options=backend_options(), data=data,
                         input_range=s["input_range"], mean=s["mean"], std=s["std"])
    run_sweep_job(prep, settings, progress=progress)


def plan_study(study: Study, out: Path, progress: Callable[[int], None] = lambda k: None) -> list[Step]:
    """The steps of a study in order, with their inputs and folders (nothing runs)."""
    from trainers.objectives import Hyper
    from trainers.strategies import applies, get_strategy
    from trainers.tasks import parse_task

    seed = study["study"]["seed"]
    data_root = Path(study["study"]["data_root"]) if study["study"]["data_root"] else None
    device = study["study"]["device"]
    src = study["source"]
    steps: list[Step] = []

    if src["model"] is not None:
        model_dir = Path(src["model"])
        model_dir = model_dir if model_dir.is_absolute() else study.path.parent / model_dir
        onnx = model_dir / "model.onnx"
        if not onnx.is_file() or not (model_dir / "model.json").is_file():
            raise RobverifyError(f"{study.where('source', 'model')}: source model {model_dir} not found "
                                 f"(expected model.onnx and model.json from robverify train)")
        digest = file_sha256(onnx)
        source = Step("source", f"source model {model_dir}", {"kind": "source", "model_sha256": digest},
                      model_dir, lambda step: None, external=True)
        source_task = None
    else:
        try:
            source_task = str(parse_task(src["task"]))
        except RobverifyError as exc:
            raise RobverifyError(f"{study.where('source', 'task')}: {exc}") from None
        inputs = {"kind": "source", "task": source_task, "arch": src["arch"], "method": src["method"],
                  "eps": float(src["eps"]), "epochs": src["epochs"], "seed": seed, "hyper": src["hyper"]}

        def train(step: Step) -> None:
            from trainers.pipeline import train_source

            train_source(source_task, src["arch"], src["method"], float(src["eps"]), src["epochs"], step.folder,
                         seed=seed, data_root=data_root, device=device, progress=False, **src["hyper"])

        source = Step("source", f"train {src['method']} {src['arch']} on {source_task}", inputs,
                      out / f"source-{_hash(inputs)}", train)
    steps.append(source)

    tr = study["transfer"]
    models: list[tuple[Step, str | None, str]] = []  # (model step, task, name)
    if study["sweep"]["include_source"]:
        models.append((source, source_task, "source"))
    for target in tr["targets"]:
        try:
            task = str(parse_task(target))
        except RobverifyError as exc:
            raise RobverifyError(f"{study.where('transfer', 'targets')}: {exc}") from None
        for strategy in tr["strategies"]:
            try:
                plan = get_strategy(strategy)
                # study-wide hyper-parameters: each strategy gets the ones that mean something to it
                hyper = {k: v for k, v in tr["hyper"].items() if applies(plan, k, tr["objective"])}
                plan.method(Hyper.parse(hyper), tr["objective"])
            except RobverifyError as exc:
                raise RobverifyError(f"{study.where('transfer', 'strategies')}: {exc}") from None
            blocks = tr["blocks"] if plan.needs_blocks else None
            for run_seed in tr["seeds"] or [seed]:
                inputs = {"kind": "transfer", "source": source.key, "task": task, "strategy": strategy,
                          "epochs": tr["epochs"], "blocks": blocks, "eps": tr["eps"], "seed": run_seed,
                          "hyper": tr["hyper"]}
                if tr["objective"] is not None:  # studies without it keep their cache keys
                    inputs["objective"] = tr["objective"]
                chosen = {} if tr["objective"] is None else {"objective": tr["objective"]}

                def transfer(step: Step, task: str = task, strategy: str = strategy, blocks: int | None = blocks,
                             run_seed: int = run_seed, hyper: dict = hyper, chosen: dict = chosen) -> None:
                    from trainers.pipeline import transfer_model

                    transfer_model(source.folder, task, strategy, step.folder, blocks=blocks, epochs=tr["epochs"],
                                   seed=run_seed, data_root=data_root, device=device, eps=tr["eps"], progress=False,
                                   **chosen, **hyper)

                tag = f" seed {run_seed}" if tr["seeds"] is not None else ""
                folder = f"{strategy}--{_slug(task)}{_slug(tag) and '-' + _slug(tag)}-{_hash(inputs)}"
                step = Step("transfer", f"transfer {strategy} -> {task}{tag}", inputs, out / "transfer" / folder,
                            transfer, deps=[source])
                steps.append(step)
                models.append((step, task, f"{strategy} on {task}{tag}"))

    sweeps: list[Step] = []
    own_data = _sweep_data(study, [str(parse_task(t)) for t in tr["targets"]])
    for model_step, task, name in models:
        data = own_data.get("source" if model_step is source else str(task))
        inputs = {"kind": "sweep", "model": model_step.key, "task": task, "seed": seed,
                  **{k: v for k, v in study["sweep"].items() if k not in ("include_source", "batch_size")
                     and k not in _DATA_KEYS}}
        # the data settings enter the cache key only when set (studies without them keep their keys)
        inputs.update({k: study["sweep"][k] for k in _DATA_KEYS if k != "data" and study["sweep"][k] is not None})
        if data is not None:
            inputs["data"] = _data_digest(data)

        def sweep(step: Step, model_step: Step = model_step, task: str | None = task, data: Path | None = data) -> None:
            _sweep(model_step.folder / "model.onnx", task, step.folder, study, progress, data)

        sweeps.append(Step("sweep", f"sweep {name}", inputs, out / "sweep" / f"{_slug(name)}-{_hash(inputs)}", sweep,
                           deps=[model_step]))
    steps += sweeps

    cmp = study["compare"]
    inputs = {"kind": "compare", "sweeps": [s.key for s in sweeps], "eps": cmp["eps"], "eps_ref": cmp["eps_ref"],
              "seed": cmp["seed"]}

    def compare(step: Step) -> None:
        from robverify.analysis.report import compare_runs

        compare_runs([s.folder for s in sweeps], step.folder, eps=cmp["eps"], eps_ref=cmp["eps_ref"], seed=cmp["seed"])

    steps.append(Step("compare", "compare (strategies report)", inputs, out / "report", compare, deps=sweeps))
    return steps


def run_study(study: Study, out: Path | None = None, *, console: Any = None) -> StudyResult:
    """Run every step whose ``step.json`` is missing or stale, in order; then return the report.

    ``out`` overrides the study's ``[study] out`` (which is relative to the study file). ``console``: a
    ``rich.console.Console`` for the progress display (None: no display).
    """
    from robverify.analysis.report import FIGURES, Report, figure_names, headline_table, read_summary

    out = Path(out) if out is not None else study.path.parent / study["study"]["out"]
    bar = Bar(None)
    sample_task = None

    def advance(k: int) -> None:
        bar.advance(sample_task, k)

    on_ray = study["study"]["executor"] == "ray"
    steps = plan_study(study, out, (lambda k: None) if on_ray else advance)
    with progress_bar(console) as bar:
        overall = bar.add("study", total=len(steps))
        if on_ray:
            _run_on_ray(study, steps, lambda: bar.advance(overall, 1))
        for step in steps:
            if on_ray or step.done():
                bar.advance(overall, 0 if on_ray else 1)
                continue
            bar.describe(overall, f"study: {step.label}")
            if step.kind == "sweep":
                sample_task = bar.add(f"  samples of {step.label}", total=study["sweep"]["n"])
            step.run()
            bar.remove(sample_task)
            sample_task = None
            bar.advance(overall, 1)
        bar.describe(overall, "study")
    report_dir = steps[-1].folder
    summary = read_summary(report_dir / "summary.csv")
    figures = {name: report_dir / FIGURES / f"{name}.png" for name in figure_names(summary)}
    return StudyResult(steps, Report(report_dir, summary, headline_table(summary), figures))


def _run_step(step: Step, *_done_deps: float) -> float:
    """A study step as a Ray task (its dependencies' results are passed in only to order it after them)."""
    return step.run()


def _run_on_ray(study: Study, steps: list[Step], advanced: Callable[[], None]) -> None:
    """Every step not done as a Ray task that waits for the tasks of its dependencies (independent transfers and
    sweeps run at once); cached steps are skipped. A task whose worker dies is retried by Ray."""
    from robverify.runs.executors import RETRIES, start_ray

    ray = start_ray(study["study"]["ray_address"], study["study"]["workers"])
    gpu = str(study["study"]["device"]).strip().lower().startswith("cuda")
    task = ray.remote(num_cpus=0 if gpu else 1, num_gpus=1 if gpu else 0, max_retries=RETRIES)(_run_step)
    refs: dict[int, Any] = {}  # id(step) -> its task
    stepping: dict[Any, Step] = {}
    for step in steps:
        if step.done():
            advanced()
            continue
        ref = task.remote(step, *[refs[id(d)] for d in step.deps if id(d) in refs])
        refs[id(step)], stepping[ref] = ref, step
    pending = list(stepping)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        step = stepping[done[0]]
        try:
            step.seconds = float(ray.get(done[0]))
        except ray.exceptions.RayError as err:
            raise RobverifyError(f"study step '{step.label}' failed on Ray: "
                                 f"{str(err).strip().splitlines()[-1]}") from None
        step.ran = True
        advanced()
