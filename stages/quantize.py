"""Stage quantize: models/pruned -> dynamic INT8 -> models/quantized, metrics/quantize.json.

    dvc repro quantize

Reads the `quantize` section of params.yaml (and `seed`); fails without writing anything if the
int8 coverage is below quantize.min_coverage. Load the result with
`lmforge.compression.quantize.load_quantized("models/quantized")`.
"""

from lmforge import paths, stage
from lmforge.compression.quantize import quantize
from lmforge.config import stage_params


def main() -> None:
    params = stage_params("quantize")
    metrics = quantize(params)
    stage.write_metrics(paths.METRICS / "quantize.json", metrics)


if __name__ == "__main__":
    stage.run(main)
