"""Frozen all-mpnet-base-v2 + logistic regression on rt-polarity, split exactly as preprocess splits it.

Run from a checkout whose params.yaml was composed with the rt-polarity data (profile=minilm_sentiment or
mpnet_sentiment) and whose data/raw holds the data:
    OMP_NUM_THREADS=2 PYTHONPATH=src python results/mpnet_teacher/frozen_lr.py MODEL_FOLDER [max_length]
        [--bf16] [--train N]
Mean-pooled last hidden states (sentence-transformers' pooling for this model, L2-normalised), C chosen on
validation, test accuracy at that C. --train N: the first N training reviews of a seeded shuffle only (the
validation and test splits are always whole); --bf16: autocast bf16.
"""
import sys
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from transformers import AutoModel, AutoTokenizer

from lmforge.data.preprocess import carve_domain, clean_corpus, load_raw, split_by_hash
from lmforge.stage import params as stage_params

t0 = time.time()
folder = sys.argv[1]
max_length = int(sys.argv[2]) if len(sys.argv) > 2 else 64
p = stage_params(("seed", "data", "preprocess"))
cfg, data_cfg = p.preprocess, p.data
raw = load_raw(data_cfg, p.seed)
task, _ = clean_corpus("task", raw.task_texts, cfg.min_chars, cfg.max_chars, cfg.dedupe, data_cfg.task.detokenize)
if data_cfg.domain_from_task is not None:
    _, task = carve_domain(task, data_cfg.domain_from_task)
labels = {text: raw.task_labels[i] for i, text in task}
splits = split_by_hash("task", [text for _, text in task], cfg.val_fraction, cfg.test_fraction)
if "--train" in sys.argv:
    n = int(sys.argv[sys.argv.index("--train") + 1])
    order = np.random.default_rng(0).permutation(len(splits["train"]))[:n]
    splits["train"] = [splits["train"][i] for i in sorted(order)]
print({k: len(v) for k, v in splits.items()}, flush=True)

tok = AutoTokenizer.from_pretrained(folder)
model = AutoModel.from_pretrained(folder).eval()
print("dtype", next(model.parameters()).dtype, "threads", torch.get_num_threads(), flush=True)


@torch.inference_mode()
def embed(texts, dtype):
    out, rows = [], []
    by_length = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # batches of similar length: less padding
    for i in range(0, len(texts), 64):
        rows += by_length[i:i + 64]
        enc = tok([texts[j] for j in by_length[i:i + 64]], padding=True, truncation=True, max_length=max_length,
                  return_tensors="pt")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            h = model(**enc).last_hidden_state.float()
        m = enc["attention_mask"].unsqueeze(-1).float()
        e = (h * m).sum(1) / m.sum(1)
        out.append(torch.nn.functional.normalize(e, dim=-1))
    embeddings = torch.empty(len(texts), out[0].shape[1])
    embeddings[torch.tensor(rows)] = torch.cat(out)
    return embeddings.numpy()


dtype = torch.bfloat16 if "--bf16" in sys.argv else torch.float32
X, y = {}, {}
for split, texts in splits.items():
    t = time.time()
    X[split], y[split] = embed(texts, dtype), np.array([labels[s] for s in texts])
    print(f"{split}: {len(texts)} embedded in {time.time() - t:.1f} s", flush=True)
t_embed = time.time() - t0
best = None
for C in (0.1, 0.3, 1, 3, 10, 30, 100):
    clf = LogisticRegression(C=C, max_iter=2000).fit(X["train"], y["train"])
    val = clf.score(X["validation"], y["validation"])
    print(f"C={C}: validation {val:.4f}", flush=True)
    if best is None or val > best[0]:
        best = (val, C, clf)
val, C, clf = best
print(f"chosen C={C}: validation {val:.4f}, test {clf.score(X['test'], y['test']):.4f} "
      f"(train {clf.score(X['train'], y['train']):.4f}); embedding {t_embed:.0f} s, total {time.time() - t0:.0f} s")
