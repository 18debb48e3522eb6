"""Adapt the general model to the domain and the task, with general replay: the teacher.

    dvc repro finetune            # or, from the repository root: python stages/finetune.py
"""

from lmforge import paths, stage
from lmforge.config import stage_params


def main() -> None:
    params = stage_params("finetune", "task")
    from lmforge.training.lm import finetune  # validated first: importing it takes seconds

    stage.write_metrics(paths.METRICS / "finetune.json", finetune(params))


if __name__ == "__main__":
    stage.run(main)
