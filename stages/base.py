"""The base model: with model.init=pretrained, convert the checkpoint (hub, folder or GGUF) once into
models/base (safetensors + tokenizer); with model.init=scratch, write only a manifest.

    dvc repro base            # or, from the repository root: python stages/base.py

The recipe: check where the checkpoint comes from (a missing GGUF file or a bad combination fails before any
loading) -> load it in fp32, checked finite, its shape against `model.*` -> save with its manifest -> the
manifest (this stage writes no metrics file).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lmforge import paths, stage
from lmforge.artifacts import atomic_dir, write_json
from lmforge.config import Params

PARAMS = ("model",)
BASE = paths.model_dir("base")
log = logging.getLogger("lmforge.base")


def main(params: Params, out: Path = BASE) -> dict[str, Any]:
    # imported once stage.run has validated the parameters: importing torch and transformers takes seconds,
    # and a bad parameter should fail at once
    from lmforge.modeling.pretrained import MANIFEST, check_source, load_pretrained

    cfg = params.model
    check_source(cfg)
    if cfg.init == "scratch":  # no weights: the manifest keeps the DAG the same for both kinds of start
        manifest: dict[str, Any] = {"init": "scratch"}
        with atomic_dir(out) as tmp:
            write_json(tmp / MANIFEST, manifest)
        return manifest

    start = time.perf_counter()
    model, tokenizer = load_pretrained(cfg)
    manifest = {"init": "pretrained", "name_or_path": cfg.name_or_path, "gguf_file": cfg.gguf_file,
                "model_type": model.config.model_type, "parameters": sum(p.numel() for p in model.parameters()),
                "vocab_size": len(tokenizer)}

    def write(folder: Path) -> None:
        model.save_pretrained(folder)  # safetensors
        write_json(folder / MANIFEST, manifest)

    stage.save(out, "base", write, tokenizer=tokenizer)  # no task yet: preprocess runs after this stage
    log.info("wrote %s (%s, %d parameters) in %.1f s", out, manifest["model_type"], manifest["parameters"],
             time.perf_counter() - start)
    return manifest


if __name__ == "__main__":
    stage.run(lambda: main(stage.params(PARAMS)))
