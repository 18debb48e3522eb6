"""Where each stage reads and writes, relative to the repository root (dvc.yaml lists the same paths).

data/processed/ (preprocess):
    tokenizer/        `PreTrainedTokenizerFast.save_pretrained`; eos = pad = "<|endoftext|>"
    lm_general/       DatasetDict train/validation/test; column `input_ids`: list[int] of block_size
    lm_domain/        same, from the unlabelled reviews
    task/             DatasetDict train/validation/test; columns `text` (str, cleaned review),
                      `label` (int, index into label_words), `prompt_ids` (list[int]: review + prompt)
    domain_text/      Dataset; column `text`: the domain corpus's train documents, unlabelled (the transfer set's
                      in-domain text)
    task_meta.json    {"prompt", "label_words", "label_token_ids", "block_size"}
    text_digests.npy  sorted uint64 `overlap_key` of every kept document, every corpus and split: what an
                      external test set is checked against (numpy .npy, read with allow_pickle=False)
data/transfer/ (transfer):
    examples/         Dataset; columns `text` (str), `source` (task | domain | augmented), `label` (int; -1 where
                      the text has none), `teacher_logits` (list[float], one per label: the teacher's output)
    meta.json         the teacher, the counts per source, the augmentation and the time the teacher took
models/<name>/        `save_pretrained` folders (safetensors + tokenizer); models/quantized has its own
                      manifest and loader (lmforge.compression.quantize.load_quantized)
"""

from pathlib import Path

PROCESSED = Path("data/processed")
TOKENIZER = PROCESSED / "tokenizer"
LM_GENERAL = PROCESSED / "lm_general"
LM_DOMAIN = PROCESSED / "lm_domain"
TASK = PROCESSED / "task"
TASK_META = PROCESSED / "task_meta.json"
TEXT_DIGESTS = PROCESSED / "text_digests.npy"
DOMAIN_TEXT = PROCESSED / "domain_text"
TRANSFER = Path("data/transfer")

MODELS = Path("models")
PARAMS_VALID = MODELS / ".params-valid"  # the validate stage's output, a dependency of every other stage
CHECKPOINTS = Path("checkpoints")  # no DVC output: DVC leaves it alone, so a killed run resumes
DVCLIVE = Path("dvclive")
METRICS = Path("metrics")
PLOTS = Path("plots")
REPORTS = Path("reports")


def model_dir(name: str) -> Path:
    return MODELS / name


# The DVC stage that writes each input of a stage: what "run `dvc repro <stage>`" messages name.
PRODUCED_BY = {PROCESSED: "preprocess", TRANSFER: "transfer", MODELS / "base": "base", MODELS / "general": "pretrain",
               MODELS / "teacher": "finetune", MODELS / "student": "distill", MODELS / "pruned": "prune",
               MODELS / "quantized": "quantize"}


def producer_of(path: str | Path) -> str | None:
    """The stage that writes `path` (a file or folder under one of PRODUCED_BY, relative or absolute)."""
    parts = Path(path).parts
    for output, stage in PRODUCED_BY.items():
        n = len(output.parts)
        if any(parts[i:i + n] == output.parts for i in range(len(parts) - n + 1)):
            return stage
    return None
