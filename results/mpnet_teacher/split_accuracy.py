"""Accuracy of a model folder of the chain on one task split of data/processed, as evaluate measures the test
split (lmforge.evaluation.metrics.task_accuracy): finetune records only the validation loss.

    PYTHONPATH=src python results/mpnet_teacher/split_accuracy.py models/teacher validation
"""
import sys
import time

from datasets import load_from_disk

from lmforge import paths
from lmforge.data import processed
from lmforge.evaluation.metrics import task_accuracy
from lmforge.modeling.checks import load_hf

t0 = time.time()
folder, split = sys.argv[1], sys.argv[2]
model = load_hf(folder).eval()
ds = load_from_disk(str(paths.TASK))[split]
label_ids = processed.task_meta()["label_token_ids"]
acc = task_accuracy(model, ds["prompt_ids"], ds["label"], label_ids, 32)
print(f"{folder} {split}: accuracy {acc:.4f} on {len(ds)} examples ({time.time() - t0:.0f} s)")
