"""Test and validation accuracy of models/teacher as evaluate measures it (the stored prompt ids, the whole
splits, bf16 autocast as `precision: auto` picks on an AMX CPU), without the other models of the chain. Run in a
pipeline folder after the transfer stage: PYTHONPATH=src python <path to this file>."""

from lmforge import hardware, paths
from lmforge.artifacts import read_json
from lmforge.evaluation import metrics
from lmforge.evaluation.evaluate import EVAL_BATCH_SIZE, load_split
from lmforge.modeling.io import load_model

model = load_model(paths.model_dir("teacher"), threads=2)
label_token_ids = read_json(paths.TASK_META)["label_token_ids"]
for split in ("validation", "test"):
    rows = load_split(paths.TASK, split)
    with hardware.autocast("bf16"):
        accuracy = metrics.task_accuracy(model, list(rows["prompt_ids"]), list(rows["label"]), label_token_ids,
                                         EVAL_BATCH_SIZE)
    print(split, len(rows), round(accuracy, 4))
