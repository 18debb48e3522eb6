"""Distil the teacher into a smaller student (KD on full-vocabulary logits + hard-label CE).

    dvc repro distill            # or, from the repository root: python stages/distill.py
"""

from lmforge import paths, stage
from lmforge.config import stage_params


def main() -> None:
    params = stage_params("model", "student", "distill")
    from lmforge.training.distill import distill  # validated first: importing it takes seconds

    stage.write_metrics(paths.METRICS / "distill.json", distill(params))


if __name__ == "__main__":
    stage.run(main)
