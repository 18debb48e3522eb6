"""Accuracy of models/teacher (a sequence classifier) on the task's validation and test splits, run in a
pipeline folder after the transfer stage: python <path to this file> (a quick check, not evaluate)."""
import torch
from datasets import load_from_disk
from transformers import AutoModelForSequenceClassification, AutoTokenizer
tok = AutoTokenizer.from_pretrained("models/teacher")
model = AutoModelForSequenceClassification.from_pretrained("models/teacher").eval()
task = load_from_disk("data/processed/task")
for split in ("validation", "test"):
    d = task[split]; right = 0
    for i in range(0, len(d), 64):
        b = d[i:i + 64]
        enc = tok(b["text"], padding=True, truncation=True, max_length=64, return_tensors="pt")
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            pred = model(**enc).logits.argmax(-1)
        right += (pred == torch.tensor(b["label"])).sum().item()
    print(split, len(d), round(right / len(d), 4))
