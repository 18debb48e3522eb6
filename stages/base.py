"""The base model: with model.init=pretrained, convert the checkpoint (hub, folder or GGUF) once into
models/base (safetensors + tokenizer); with model.init=scratch, write only a manifest.

    dvc repro base            # or, from the repository root: python stages/base.py
"""

from lmforge import stage
from lmforge.config import stage_params


def main() -> None:
    params = stage_params("model")
    from lmforge.modeling.pretrained import check_source, prepare_base  # importing transformers takes seconds

    check_source(params.model)  # a missing GGUF file or a bad combination fails before any loading
    prepare_base(params.model)


if __name__ == "__main__":
    stage.run(main)
