"""Validate every parameter before any other stage runs: the first stage of dvc.yaml.

    dvc repro validate            # or, from the repository root: python stages/validate.py

DVC deletes a stage's outputs before it runs the stage, so a stage's own check of its parameters comes
after its last good outputs are gone. Every stage depends on this one's output, so DVC runs it first;
it depends on the whole of params.yaml and on the schemas. A bad value stops `dvc repro` /
`dvc exp run` here, with one line, before any other output, metrics file or dvc.lock entry changes.
Its output is the same file whenever the parameters are valid, so revalidating reruns nothing else.

The recipe: check every section (and the rules across sections) -> save the marker file. No model, no metrics.
"""

from __future__ import annotations

from typing import Any

from lmforge import paths, stage
from lmforge.artifacts import write_text
from lmforge.config import Params, load_params, validate_params

PARAMS = ()  # no section through stage_params: this stage reads the whole of params.yaml (dvc.yaml: params.yaml)


def main(raw: dict[str, Any]) -> Params:
    params = validate_params(raw)
    write_text(paths.PARAMS_VALID, "params.yaml: valid (written by stages/validate.py, the same bytes every time)\n")
    return params


if __name__ == "__main__":
    stage.run(lambda: main(load_params()))
