"""The house's rules (DESIGN.md, README "How it is built"), checked on every module's imports, lazy ones included:
imports only go down the pipeline, the core never imports ``trainers`` or ``properties``, nothing imports the top
floor (``robverify.app``, ``robverify.cli``), and of ``robverify.runs`` the analysis reads only the schema."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: the floors of robverify, bottom up; a module may import its own floor and the floors below
FLOORS: list[set[str]] = [
    {"robverify", "robverify.errors", "robverify.enums", "robverify.files", "robverify.devices", "robverify.progress",
     "robverify.spec"},
    {"robverify.ops", "robverify.formats"},
    {"robverify.ir"},
    {"robverify.engine"},
    {"robverify.backends"},
    {"robverify.runs"},
    {"robverify.analysis"},
    {"robverify.app", "robverify.cli"},
]
TOP = {"robverify.app", "robverify.cli"}
PACKAGES = ("robverify", "trainers", "properties")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_lines(tree: ast.AST) -> set[int]:
    """Lines inside ``if TYPE_CHECKING:`` blocks (annotations only, never imported at run time)."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def _imports(source: str, filename: str = "<string>") -> list[tuple[int, str]]:
    """``(line, imported module)`` of every import statement at run time, at any depth (lazy ones included)."""
    tree = ast.parse(source, filename)
    skip = _type_checking_lines(tree)
    found = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # ``from robverify import ops`` imports the subpackage robverify.ops
            base = ROOT / Path(*node.module.split("."))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names
                      if (base / a.name).is_dir() or (base / f"{a.name}.py").is_file()]
    return [(line, name) for line, name in found if name.split(".")[0] in PACKAGES]


def _floor(module: str) -> int | None:
    """Index in FLOORS of the longest matching prefix (None outside robverify)."""
    best, best_len = None, -1
    for i, floor in enumerate(FLOORS):
        for prefix in floor:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = i, len(prefix)
    return best


def _in(module: str, packages: set[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _check(importer: str, relpath: str, imports: list[tuple[int, str]]) -> list[str]:
    bad = []
    for line, imported in imports:
        where = f"{relpath}:{line}: {importer} imports {imported}"
        if _in(imported, TOP) and not _in(importer, TOP):
            bad.append(f"{where} (nothing imports the top floor)")
        elif (importer.startswith("robverify") and not _in(importer, TOP)
              and imported.split(".")[0] in ("trainers", "properties")):
            bad.append(f"{where} (the core never imports trainers or properties)")
        elif (_in(importer, {"robverify.analysis"}) and _in(imported, {"robverify.runs"})
              and not _in(imported, {"robverify.runs.schema"})):
            bad.append(f"{where} (analysis reads only robverify.runs.schema)")
        else:
            a, b = _floor(importer), _floor(imported)
            if a is not None and b is not None and b > a:
                bad.append(f"{where} (upward: floor {b} above floor {a})")
    return bad


def _violations() -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            bad += _check(_module_name(path), rel, _imports(path.read_text(encoding="utf-8"), rel))
    return bad


def test_imports_only_go_down() -> None:
    assert _violations() == []


def test_every_robverify_module_has_a_floor() -> None:
    missing = [_module_name(p) for p in sorted((ROOT / "robverify").rglob("*.py")) if _floor(_module_name(p)) is None]
    assert missing == []


@pytest.mark.parametrize("importer, imported, rule", [
    ("robverify/runs/fake.py", "from robverify.analysis.plots import plot_ecdf", "upward"),
    ("robverify/engine/fake.py", "import trainers.zoo", "never imports trainers"),
    ("robverify/ir/fake.py", "from properties.benchmark import export_benchmark", "never imports trainers"),
    ("trainers/fake.py", "from robverify.app.commands import prepare", "top floor"),
    ("robverify/analysis/fake.py", "from robverify.runs.rundir import RunDir", "only robverify.runs.schema"),
    ("robverify/ops/fake.py", "def f():\n    from robverify.engine.bounds import compute_bounds", "upward"),
])
def test_the_rules_catch_a_planted_violation(importer, imported, rule) -> None:
    found = _check(_module_name(ROOT / importer), importer, _imports(imported))
    assert len(found) == 1 and rule in found[0], found


def test_type_checking_imports_are_not_run_time_imports() -> None:
    source = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from robverify.app.commands import prepare\n"
    assert _imports(source) == []
