"""The common frame of every stage recipe (stages/<name>.py): logging, clean exits on user errors, the metrics
writer, the gate against the teacher and the model-folder writer."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.artifacts import atomic_dir, write_json
from lmforge.config import PARAMS_FILE, TOP_LEVEL_KEYS, GateConfig, Params, stage_params
from lmforge.errors import LmforgeError
from lmforge.evaluation.gate import check as gate_check
from lmforge.modeling.card import write_bundle

log = logging.getLogger("lmforge")


def _params_digest() -> str | None:
    try:
        return hashlib.sha256(Path(PARAMS_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


def run(main: Callable[[], object]) -> None:
    """Run a stage's `main`; a user error prints one clear line and exits with status 2.

    params.yaml must be the same at the end as at the start: if it was rewritten meanwhile (a `dvc exp run`
    refused by DVC's lock still recomposes it first), the stage fails, so DVC records no parameters in dvc.lock
    that the outputs were not made with, and the next `dvc repro` runs the stage again.
    """
    logging.basicConfig(level=os.environ.get("LMFORGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    stage = Path(sys.argv[0]).stem
    before = _params_digest()
    try:
        main()
        if _params_digest() != before:
            raise LmforgeError(f"{PARAMS_FILE} was rewritten while the {stage} stage ran (by `make params` or "
                               "`dvc exp run`?): its outputs may not match it, so DVC must not record this run; "
                               "run `dvc repro` again")
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def is_main_process() -> bool:
    """True in a plain `python` run and in rank 0 of a `torchrun` / `accelerate launch` run."""
    return int(os.environ.get("RANK", "0")) == 0


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> None:
    """Write a stage's metrics JSON once: every rank of a distributed run computes them, rank 0 writes.

    Strict JSON: a NaN or an infinity becomes null, and `non_finite` lists where (bare NaN breaks parsers).
    """
    if not is_main_process():
        return
    bad = write_json(path, metrics, list_non_finite="non_finite")
    if bad:
        log.warning("%s: non-finite values written as null: %s", path, ", ".join(bad))
    log.info("wrote %s", path)


def gate(stage: str, cfg: GateConfig | None, output: Path,
         measure: Callable[[], tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    """A compression stage's gate against the teacher, run before it saves: `{"enabled": False}` without
    `<stage>.gate` (nothing is measured); else `measure()` returns (the model's, the teacher's) validation
    numbers (lmforge.evaluation.metrics.measure), and GateError stops the stage, `output` left as it was,
    when the model lost more than the gate allows."""
    if cfg is None:
        return {"enabled": False}
    measured, teacher = measure()
    return gate_check(stage, cfg, measured, teacher, str(output))


def save(output: Path, stage: str, write: Callable[[Path], object], *, tokenizer: Any = None,
         metrics: dict[str, Any] | None = None, source: Path | None = None) -> None:
    """Write the model folder `output` of `stage` atomically: `write(folder)` puts the weights (and any
    manifest) in a temporary folder, then the tokenizer, task_meta.json and the model card (with `metrics`)
    are added, and the folder replaces `output` whole. A distributed run's main process writes it."""
    if not is_main_process():
        return
    with atomic_dir(output) as folder:
        write(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        write_bundle(folder, stage, metrics=metrics, source=source)
    log.info("%s: saved %s", stage, output)


def params(declared: tuple[str, ...]) -> Params:
    """The validated params.yaml for a recipe's `PARAMS`, the entries of its dvc.yaml `params:` (a section,
    `seed`, or one key such as `model.arch`, which brings its section): the sections it did not declare are
    None, so it cannot read them by mistake (tests/test_dvc_deps.py checks PARAMS against dvc.yaml)."""
    sections = dict.fromkeys(entry.split(".")[0] for entry in declared if entry not in TOP_LEVEL_KEYS)
    return stage_params(*sections)
