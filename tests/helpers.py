"""What many test modules need, said once: where the repository is, running a stage as DVC runs it, and a tiny
GPT-2 (the tests that need a whole DVC repository use dvc_repo.py; fixtures live in conftest.py)."""

from __future__ import annotations

import importlib
import os
import re
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"  # real data files beside the checkout; the tests using them skip without


def compose_into(workdir: Path, *overrides: str) -> None:
    """params.yaml of profile=tiny (plus `overrides`) in `workdir`, composed from this checkout's conf/."""
    from lmforge.compose import compose

    compose(workdir / "params.yaml", ["profile=tiny", *overrides], conf_dir=ROOT / "conf")


def stage_env() -> dict[str, str]:
    """The environment of a stage run by a test: this checkout's src, one thread (two test workers share the
    cores)."""
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}


def run_stage(workdir: Path, stage: str, *overrides: str) -> subprocess.CompletedProcess:
    """`python stages/STAGE.py` in `workdir` as DVC runs it (its own process, exit status and stderr as a user
    sees them), after composing params.yaml for profile=tiny with `overrides`."""
    compose_into(workdir, *overrides)
    return subprocess.run([sys.executable, str(ROOT / "stages" / f"{stage}.py")], cwd=workdir, env=stage_env(),
                          capture_output=True, text=True, timeout=600)


def stage_main(stage: str) -> Callable[[], None]:
    """The recipe stages/STAGE.py as `python stages/STAGE.py` runs it (params.yaml of the current directory,
    validated, only the sections the recipe declares), in the test's own process: the current directory is the
    repository root it works in."""
    from lmforge import stage as frame

    recipe = importlib.import_module(f"stages.{stage}")
    return lambda: recipe.main(frame.params(recipe.PARAMS))


def tiny_gpt2(seed: int = 0, **config):
    """A randomly initialised GPT-2 of 2 x 32 (vocabulary 300, 32 positions) in eval mode; `config` overrides
    any GPT2Config value. The same seed gives the same weights."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    values = {"vocab_size": 300, "n_positions": 32, "n_embd": 32, "n_layer": 2, "n_head": 2, "bos_token_id": 0,
              "eos_token_id": 0, **config}
    return GPT2LMHeadModel(GPT2Config(**values)).eval()


def library_noise(stderr: str) -> list[str]:
    """The lines of a stage's stderr that a library printed as a warning: `warnings.warn` output, torch's
    glog-style `W1207 ...` lines, `[transformers]` notes, and WARNING records of any logger but lmforge's.
    A clean log has none (lmforge.quiet silences the known ones where lmforge calls the library)."""
    noise = re.compile(r"\w+Warning: |^W\d{4} |^\[transformers\]|\sWARNING (?!lmforge)")
    return [line for line in stderr.splitlines() if noise.search(line)]


def free_port() -> int:
    """A TCP port free now, for one launcher's rendezvous: torchrun and accelerate both default to 29500, so two
    launches on two test workers at once would collide."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
