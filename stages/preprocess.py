"""Preprocess: raw corpora -> data/processed (tokenizer, LM blocks, task examples) + metrics.

    dvc repro preprocess            # or, from the repository root: python stages/preprocess.py
"""

from lmforge import paths, stage
from lmforge.config import stage_params
from lmforge.data.preprocess import preprocess


def main() -> None:
    params = stage_params("data", "preprocess", "model")  # model.arch: an encoder's special tokens
    metrics = preprocess(params)
    stage.write_metrics(paths.METRICS / "preprocess.json", metrics)


if __name__ == "__main__":
    stage.run(main)
