"""dvc.yaml lists, for every stage, each lmforge module the stage's script imports (directly or through
other lmforge modules), so that changing any code a stage runs reruns that stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def _module_file(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _has_code(path: Path) -> bool:
    """An __init__.py of a docstring and constants (`__version__`) runs nothing a stage depends on."""
    body = ast.parse(path.read_text()).body
    return any(not (isinstance(node, (ast.Expr, ast.Assign)) and isinstance(node.value, ast.Constant))
               for node in body)


def _runtime_nodes(tree: ast.AST):
    """Every node, except under `if TYPE_CHECKING:` (imports for annotations only)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            continue
        yield node
        yield from _runtime_nodes(node)


def imported_modules(script: Path) -> set[Path]:
    """Every lmforge source file `script` imports, transitively, lazy imports inside functions included."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        tree = ast.parse(todo.pop().read_text())
        names = []
        for node in _runtime_nodes(tree):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.append(node.module)
                names += [f"{node.module}.{alias.name}" for alias in node.names]  # `from pkg import module`
        for name in names:
            if not name.startswith("lmforge"):
                continue
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__ too
                file = _module_file(".".join(parts[:i]))
                if file is not None and file not in seen:
                    seen.add(file)
                    todo.append(file)
    return {f for f in seen if f.name != "__init__.py" or _has_code(f)}


STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_yaml_depends_on_every_lmforge_module_the_stage_imports(name):
    stage = STAGES[name]
    script = ROOT / next(word for word in stage["cmd"].split() if word.startswith("stages/"))
    deps = [ROOT / (d if isinstance(d, str) else next(iter(d))) for d in stage["deps"]]
    missing = sorted(str(f.relative_to(ROOT)) for f in imported_modules(script)
                     if not any(f == d or d in f.parents for d in deps))
    assert not missing, f"dvc.yaml stage '{name}' imports but does not depend on: {', '.join(missing)}"


def test_the_import_walk_sees_lazy_and_transitive_imports():
    found = {str(f.relative_to(SRC)) for f in imported_modules(ROOT / "stages" / "prune.py")}
    assert {"lmforge/compression/lowrank.py", "lmforge/compression/linear.py", "lmforge/config/schema.py",
            "lmforge/training/runner.py", "lmforge/evaluation/metrics.py"} <= found
