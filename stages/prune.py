"""Prune the student (L1 unstructured over every block linear layer), then recover with KD.

    dvc repro prune            # or, from the repository root: python stages/prune.py
"""

from lmforge import paths, stage
from lmforge.config import stage_params


def main() -> None:
    params = stage_params("prune")
    from lmforge.training.recovery import prune  # validated first: importing it takes seconds

    stage.write_metrics(paths.METRICS / "prune.json", prune(params))


if __name__ == "__main__":
    stage.run(main)
