"""Measure every model of the chain and write metrics/evaluate.json, plots/pareto.json and reports/.

    dvc repro evaluate
"""

from lmforge import stage
from lmforge.config import stage_params
from lmforge.evaluation.evaluate import evaluate
from lmforge.report import write_report


def main() -> None:
    params = stage_params("evaluate", "model")  # model.init: whether the base model is measured too
    results = evaluate(params)
    write_report(results)


if __name__ == "__main__":
    stage.run(main)
