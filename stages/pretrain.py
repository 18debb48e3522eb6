"""Pre-train the general model on the general corpus (progressive pre-training, step one).

    dvc repro pretrain            # or, from the repository root: python stages/pretrain.py
"""

from lmforge import paths, stage
from lmforge.config import stage_params


def main() -> None:
    params = stage_params("model", "pretrain")
    from lmforge.training.lm import pretrain  # validated first: importing it takes seconds

    stage.write_metrics(paths.METRICS / "pretrain.json", pretrain(params))


if __name__ == "__main__":
    stage.run(main)
