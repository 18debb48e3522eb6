"""Label the transfer set with the teacher, once: data/transfer holds every text and the teacher's outputs on it.

    dvc repro transfer            # or, from the repository root: python stages/transfer.py

The recipe: check the augmentation's masked LM -> load the teacher -> build the transfer set (the labelled train
split, the unlabelled in-domain text, augmented copies; lmforge.data.transfer) -> the teacher's outputs on every
text (its label logits, or its LM's log-probabilities of the label words) -> save data/transfer whole -> metrics.

DVC caches data/transfer: distill and prune's recovery read it with distill.data=transfer, so a change to one of
their parameters never runs the teacher again. The teacher runs in `transfer.precision` (fp32 by default: the
cached outputs, a DVC output, are then the same on every machine; auto picks bf16 where it is measured faster).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from lmforge import hardware, paths, stage
from lmforge.config import Params
from lmforge.errors import require

PARAMS = ("seed", "transfer")
log = logging.getLogger("lmforge.transfer")


def main(params: Params) -> dict[str, Any]:
    # imported once stage.run has validated the parameters: torch and transformers take seconds to import
    from tqdm.auto import tqdm

    from lmforge.data import processed as data
    from lmforge.data import transfer
    from lmforge.evaluation.metrics import label_log_probs
    from lmforge.modeling.checks import load_hf

    cfg, seed = params.transfer, params.seed
    teacher_dir = paths.model_dir("teacher")

    # check: the masked LM of the word replacement, before any work
    replace = None
    if cfg.augment.mlm_replace > 0:
        require(Path(cfg.augment.masked_lm) / "config.json")
        replace = transfer.masked_lm_replacer(cfg.augment.masked_lm, cfg.augment.mlm_replace)

    # load inputs: the teacher, the texts
    teacher = load_hf(teacher_dir)  # safetensors only; a truncated file or a non-finite weight stops here
    start = time.perf_counter()
    examples, dropped = transfer.transfer_texts(cfg, seed, replace)
    build_s = time.perf_counter() - start
    counts = {source: examples["source"].count(source) for source in ("task", "domain", "augmented")}
    log.info("transfer set: %d texts (%s); %d equal to a validation or test text dropped", len(examples),
             ", ".join(f"{k} {v}" for k, v in counts.items()), dropped)

    # the teacher's outputs on every text, in the teacher's own prompt (its tokenizer is data/processed's)
    prompts = data.encode_for(data.load_tokenizer(), examples["text"])
    label_ids = data.task_meta()["label_token_ids"]
    precision = hardware.choose_precision(cfg.precision, kind="inference", width=teacher.config.hidden_size)
    start = time.perf_counter()
    with hardware.autocast(precision["precision"]), tqdm(total=len(prompts), desc="transfer: teacher outputs",
                                                         unit="text") as bar:
        outputs = label_log_probs(teacher, prompts, label_ids, cfg.batch_size, progress=bar.update)
    teacher_s = time.perf_counter() - start
    examples = examples.add_column("teacher_logits", outputs.float().tolist())
    labelled = [i for i, label in enumerate(examples["label"]) if label >= 0]
    agreement = (outputs[labelled].argmax(-1) == outputs.new_tensor([examples["label"][i] for i in labelled])
                 ).float().mean().item() if labelled else None

    # save data/transfer whole, then the metrics
    metrics = {"examples": len(examples), "sources": counts, "dropped_as_evaluation_text": dropped,
               "augment": {"copies": cfg.augment.copies, "word_dropout": cfg.augment.word_dropout,
                           "ngram": cfg.augment.ngram, "mlm_replace": cfg.augment.mlm_replace},
               "teacher": teacher_dir.as_posix(), "precision": precision["precision"],
               "teacher_train_accuracy": round(agreement, 4) if agreement is not None else None,
               "build_s": round(build_s, 2), "teacher_s": round(teacher_s, 2),
               "teacher_ms_per_text": round(1000 * teacher_s / len(examples), 3)}
    timing = ("build_s", "teacher_s", "teacher_ms_per_text")  # machine-dependent: metrics only, not the DVC output
    transfer.save(examples, {k: v for k, v in metrics.items() if k not in timing})
    log.info("transfer: the teacher labelled %d texts in %.1f s (%.2f ms a text, %s); it agrees with %s of the "
             "true train labels", len(examples), teacher_s, metrics["teacher_ms_per_text"], precision["precision"],
             f"{agreement:.3f}" if agreement is not None else "none")
    stage.write_metrics(paths.METRICS / "transfer.json", metrics)
    return metrics


if __name__ == "__main__":
    stage.run(lambda: main(stage.params(PARAMS)))
