"""dvc.yaml is derived from the code and checked against it: each stage's code dependencies are exactly its
recipe and the lmforge modules the recipe imports (directly or through other lmforge modules, inside functions
too), so that changing any code a stage runs reruns that stage and nothing else does; no entry twice; and its
`params:` are exactly the recipe's PARAMS.

When a stage's imports change, the failure prints the code deps dvc.yaml should list for it."""

from __future__ import annotations

import ast
import importlib
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


def _entries(items: list) -> list[str]:
    return [item if isinstance(item, str) else next(iter(item)) for item in items]


def derived_code_deps(name: str) -> list[str]:
    """What dvc.yaml's stage `name` must list as code: its recipe, then every lmforge file it imports."""
    script = ROOT / "stages" / f"{name}.py"
    return [f"stages/{name}.py", *sorted(str(f.relative_to(ROOT)) for f in imported_modules(script))]


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_yaml_code_deps_are_exactly_what_the_recipe_imports(name):
    listed = [d for d in _entries(STAGES[name]["deps"]) if d.startswith(("src/", "stages/"))]
    derived = derived_code_deps(name)
    assert set(listed) == set(derived), (
        f"dvc.yaml stage '{name}': missing {sorted(set(derived) - set(listed))}, not imported "
        f"{sorted(set(listed) - set(derived))}; its code deps are:\n" + "\n".join(f"      - {d}" for d in derived))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_yaml_lists_nothing_twice(name):
    for key in ("deps", "params", "outs"):
        entries = _entries(STAGES[name].get(key, []))
        assert len(entries) == len(set(entries)), f"dvc.yaml stage '{name}' {key}: " + ", ".join(
            sorted({e for e in entries if entries.count(e) > 1}))


@pytest.mark.parametrize("name", sorted(STAGES))
def test_dvc_yaml_params_are_the_recipe_params(name):
    recipe = importlib.import_module(f"stages.{name}")
    listed = _entries(STAGES[name].get("params", []))
    if not recipe.PARAMS:  # validate: the whole file
        assert listed == ["params.yaml"], name
    else:
        assert sorted(listed) == sorted(recipe.PARAMS), f"dvc.yaml stage '{name}' params {listed}, " \
                                                        f"stages/{name}.py PARAMS {recipe.PARAMS}"


def test_the_import_walk_sees_lazy_and_transitive_imports():
    found = {str(f.relative_to(SRC)) for f in imported_modules(ROOT / "stages" / "prune.py")}
    assert {"lmforge/compression/lowrank.py", "lmforge/compression/linear.py", "lmforge/config/schema.py",
            "lmforge/training/runner.py", "lmforge/evaluation/metrics.py"} <= found
    assert "lmforge/report.py" not in found  # nor what it does not import
