"""The common frame of every stage recipe (stages/<name>.py): logging, clean exits on user errors, the stage
lock and the params.yaml guard (lmforge.locks), the metrics writer, the gate against the teacher and the
model-folder writer."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lmforge.artifacts import guard_replacements, write_json
from lmforge.config import PARAMS_FILE, TOP_LEVEL_KEYS, GateConfig, Params, stage_params
from lmforge.errors import LmforgeError
from lmforge.evaluation.gate import check as gate_check
from lmforge.locks import is_main_process, lock_stage, release_stage
from lmforge.modeling.card import save_folder

log = logging.getLogger("lmforge")


def _params_digest() -> str | None:
    try:
        return hashlib.sha256(Path(PARAMS_FILE).read_bytes()).hexdigest()
    except OSError:
        return None


# Stages that take their lock here, for their whole run. The training stages take it in
# lmforge.training.runner.fit, in the main process only (every rank of a launcher runs the stage's script).
LOCKED_IN_RUN = ("base", "preprocess", "quantize", "evaluate")


def _close_process_group() -> None:
    """End a launcher run (torchrun / accelerate launch) cleanly: every rank waits for the others, then the
    process group is destroyed before the interpreter exits. Left to interpreter teardown, gloo's worker threads
    can outlive the group and a rank aborts ("terminate called without an active exception", SIGABRT) after its
    work is done, which fails the launch. Only after a successful `main`: on an error the other ranks may never
    reach the barrier. torch is imported by every training stage already; a stage that never loaded
    torch.distributed has no group to close."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def run(main: Callable[[], object]) -> None:
    """Run a stage's `main`; a user error prints one clear line and exits with status 2.

    params.yaml must be the same when an output is replaced and at the end as at the start: if it was
    rewritten meanwhile (by `make params` or a `dvc exp run`), the stage fails before it replaces any more
    outputs (lmforge.artifacts asks the guard before every rename), so DVC records no parameters in dvc.lock
    that the outputs were not made with, and the next `dvc repro` runs the stage again.
    """
    logging.basicConfig(level=os.environ.get("LMFORGE_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    stage = Path(sys.argv[0]).stem
    before = _params_digest()

    def params_unchanged(replacing: Path | None = None) -> None:
        if _params_digest() != before:
            kept = f"{replacing} not replaced (its previous version kept); " if replacing is not None else ""
            raise LmforgeError(f"{PARAMS_FILE} was rewritten while the {stage} stage ran (by `make params` or "
                               f"`dvc exp run`?): {kept}outputs made with the old parameters must not be recorded "
                               "by DVC; run `dvc repro` again")

    lock = None
    try:
        lock = lock_stage(stage) if stage in LOCKED_IN_RUN and is_main_process() else None
        with guard_replacements(params_unchanged):
            main()
            params_unchanged()
        _close_process_group()
    except LmforgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    finally:
        if lock is not None:
            release_stage(lock)


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


# The one model-folder writer (weights, tokenizer, task, card; atomic; main process only), in the modeling layer
# so that the training loop saves through it too.
save = save_folder


def params(declared: tuple[str, ...]) -> Params:
    """The validated params.yaml for a recipe's `PARAMS`, the entries of its dvc.yaml `params:` (a section,
    `seed`, or one key such as `model.arch`, which brings its section): the sections it did not declare are
    None, so it cannot read them by mistake (tests/test_dvc_deps.py checks PARAMS against dvc.yaml)."""
    sections = dict.fromkeys(entry.split(".")[0] for entry in declared if entry not in TOP_LEVEL_KEYS)
    return stage_params(*sections)
