"""Pre-train the general model on the general corpus (progressive pre-training, step one).

    dvc repro pretrain            # or, from the repository root: python stages/pretrain.py

The recipe: load the data -> build the model from `model` (or, with model.init=pretrained, continue from the
checkpoint the base stage converted) -> train on the general corpus by `pretrain.objective` (next-token for
causal models; masked tokens, and next-sentence pairs, for encoders) -> save (in `fit`) -> metrics.
"""

from __future__ import annotations

import logging
from typing import Any

from lmforge import paths, stage
from lmforge.config import Params
from lmforge.errors import missing_input

PARAMS = ("seed", "model", "pretrain")
log = logging.getLogger("lmforge.pretrain")


def main(params: Params) -> dict[str, Any]:
    # imported once stage.run has validated the parameters: importing torch and transformers takes seconds,
    # and a bad parameter should fail at once
    from transformers import AutoModelForMaskedLM, BertForPreTraining, set_seed

    from lmforge.data import processed as data
    from lmforge.data.examples import nsp_pairs
    from lmforge.evaluation import metrics as measures
    from lmforge.modeling.build import build_model
    from lmforge.modeling.checks import load_hf
    from lmforge.modeling.pretrained import base_checkpoint
    from lmforge.training.runner import fingerprint, fit

    cfg, seed = params.pretrain, params.seed

    # check and load inputs: models/base when continuing a pretrained model, the tokenizer, the general corpus
    base = base_checkpoint(params.model) if params.model.init == "pretrained" else None
    tokenizer = data.load_tokenizer()
    train_set = data.lm_examples(paths.LM_GENERAL, "train")
    eval_sets = {"general": data.lm_examples(paths.LM_GENERAL, "validation", cfg.eval_max_examples)}
    inputs = [paths.LM_GENERAL, paths.TOKENIZER]

    # the model: built from `model`, or the base checkpoint (an encoder without the objective's heads gets them
    # initialised from seed)
    if base is None:
        model = build_model(params.model, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, seed=seed, objective=cfg.objective)
    else:
        set_seed(seed)  # the heads a bare encoder lacks are initialised from it
        # mlm: the encoder's own MLM class (BertForMaskedLM, MPNetForMaskedLM); mlm_nsp: BERT only (validate)
        encoder_class = {"mlm": AutoModelForMaskedLM, "mlm_nsp": BertForPreTraining}.get(cfg.objective)
        model = load_hf(base, model_class=encoder_class)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise missing_input(paths.TOKENIZER, f"{len(tokenizer)} tokens, more than the "
                                f"{model.get_input_embeddings().num_embeddings} embeddings of {base}: data/processed "
                                "was not tokenized with the base model's tokenizer")
        inputs.append(base)
    if cfg.objective == "mlm_nsp":  # sentence pairs, each split's from its own blocks
        train_set = nsp_pairs(train_set, tokenizer.cls_token_id, tokenizer.sep_token_id, seed)
        eval_sets = {"general": nsp_pairs(eval_sets["general"], tokenizer.cls_token_id, tokenizer.sep_token_id,
                                          seed)}

    # train; `fit` saves models/general (no gate: nothing to compare against yet)
    run_id = fingerprint({"seed": seed, "model": params.model, "pretrain": cfg}, inputs)
    metrics = fit("pretrain", model, tokenizer, train_set, eval_sets, cfg, seed, run_id, paths.model_dir("general"))

    # metrics
    if cfg.objective == "mlm_nsp":
        metrics["eval_general_nsp_accuracy"] = round(measures.nsp_accuracy(model.cpu(), eval_sets["general"], 16), 4)
        log.info("pretrain: next-sentence accuracy on %d validation pairs %.3f", len(eval_sets["general"]),
                 metrics["eval_general_nsp_accuracy"])
    stage.write_metrics(paths.METRICS / "pretrain.json", metrics)
    return metrics


if __name__ == "__main__":
    stage.run(lambda: main(stage.params(PARAMS)))
