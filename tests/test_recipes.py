"""Every stage is a recipe of one shape: stages/<name>.py with a docstring that says how to run it, the params
sections it reads (`PARAMS`), a `main` that tests call as a function, and `stage.run` as its entrypoint."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml

from lmforge.config import SECTIONS, TOP_LEVEL_KEYS

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_every_dvc_stage_has_a_recipe_and_every_recipe_a_stage():
    recipes = {p.stem for p in (ROOT / "stages").glob("*.py") if p.name != "__init__.py"}
    assert recipes == set(STAGES)
    for name, stage in STAGES.items():
        assert stage["cmd"].split()[-1] == f"stages/{name}.py", name


@pytest.mark.parametrize("name", sorted(STAGES))
def test_recipe_skeleton(name):
    path = ROOT / "stages" / f"{name}.py"
    tree = ast.parse(path.read_text())
    assert f"dvc repro {name}" in (ast.get_docstring(tree) or ""), f"{path}: the docstring says how to run it"
    recipe = importlib.import_module(f"stages.{name}")
    assert isinstance(recipe.PARAMS, tuple), f"{path}: PARAMS"
    assert {entry.split(".")[0] for entry in recipe.PARAMS} <= {*SECTIONS, *TOP_LEVEL_KEYS}, f"{path}: PARAMS"
    assert callable(recipe.main)
    last = tree.body[-1]
    assert isinstance(last, ast.If) and ast.unparse(last.test) == "__name__ == '__main__'", f"{path}: entrypoint"
    assert ast.unparse(last.body[0]).startswith("stage.run("), f"{path}: runs through stage.run"
