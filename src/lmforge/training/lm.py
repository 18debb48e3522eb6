"""Progressive pre-training: general LM from scratch (or continued from a pretrained model), then domain +
task adaptation with replay. The objective follows the family: next-token for causal models, masked tokens
(and next-sentence prediction) for encoders (lmforge.training.objectives)."""

from __future__ import annotations

import logging
from typing import Any

from transformers import BertForMaskedLM, BertForPreTraining, set_seed

from lmforge import paths
from lmforge.config import Params
from lmforge.data import processed as data
from lmforge.errors import missing_input
from lmforge.evaluation import metrics as measures
from lmforge.modeling.build import build_model
from lmforge.modeling.checks import load_model
from lmforge.modeling.pretrained import base_checkpoint
from lmforge.training.objectives import attach_replay_head, detach_replay_head, nsp_pairs, to_classifier
from lmforge.training.runner import fingerprint, fit

log = logging.getLogger(__name__)


def pretrain(params: Params) -> dict[str, Any]:
    """Step one: a model built from `model` learns the general corpus (pretrain.objective); with
    model.init=pretrained, the checkpoint converted by the base stage continues on it instead (continued
    pre-training). An encoder from a checkpoint without the objective's heads gets them initialised from seed."""
    cfg = params.pretrain
    base = base_checkpoint(params.model) if params.model.init == "pretrained" else None
    tokenizer = data.load_tokenizer()
    train_set = data.lm_examples(paths.LM_GENERAL, "train")
    eval_sets = {"general": data.lm_examples(paths.LM_GENERAL, "validation", cfg.eval_max_examples)}
    inputs = [paths.LM_GENERAL, paths.TOKENIZER]
    if base is None:
        model = build_model(params.model, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id, seed=params.seed, objective=cfg.objective)
    else:
        set_seed(params.seed)  # the heads a bare encoder lacks are initialised from it
        encoder_class = {"mlm": BertForMaskedLM, "mlm_nsp": BertForPreTraining}.get(cfg.objective)
        model = load_model(base, model_class=encoder_class)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise missing_input(paths.TOKENIZER, f"{len(tokenizer)} tokens, more than the "
                                f"{model.get_input_embeddings().num_embeddings} embeddings of {base}: data/processed "
                                "was not tokenized with the base model's tokenizer")
        inputs.append(base)
    if cfg.objective == "mlm_nsp":  # sentence pairs, each split's from its own blocks
        train_set = nsp_pairs(train_set, tokenizer.cls_token_id, tokenizer.sep_token_id, params.seed)
        eval_sets = {"general": nsp_pairs(eval_sets["general"], tokenizer.cls_token_id, tokenizer.sep_token_id,
                                          params.seed)}
    run_id = fingerprint({"seed": params.seed, "model": params.model, "pretrain": cfg}, inputs)
    result = fit("pretrain", model, tokenizer, train_set, eval_sets, cfg, params.seed, run_id,
                 paths.model_dir("general"))
    if cfg.objective == "mlm_nsp":
        result["eval_general_nsp_accuracy"] = round(measures.nsp_accuracy(model.cpu(), eval_sets["general"], 16), 4)
        log.info("pretrain: next-sentence accuracy on %d validation pairs %.3f", len(eval_sets["general"]),
                 result["eval_general_nsp_accuracy"])
    return result


def finetune(params: Params) -> dict[str, Any]:
    """Step two: the general model continues on domain text + task examples + general replay. With
    task.head=classifier it becomes a sequence classifier first; its LM head then serves the replay only."""
    cfg, head = params.finetune, params.task.head
    source = paths.model_dir("general")
    model = load_model(source)  # first: a missing, truncated or NaN input stops here
    tokenizer = data.load_tokenizer()
    if head == "classifier":
        lm = model
        model = to_classifier(lm, data.task_meta()["label_words"], tokenizer.pad_token_id, params.seed)
        attach_replay_head(model, lm)
        del lm
    examples = cfg.max_steps * cfg.batch_size * cfg.grad_accum_steps
    train_set = data.mixture_train_set(cfg.mixture, examples, params.seed, head=head)
    eval_sets = data.eval_sets(cfg.eval_max_examples, with_task=True, head=head)
    run_id = fingerprint({"seed": params.seed, "finetune": cfg, "task": params.task}, [source, paths.PROCESSED])
    return fit("finetune", model, tokenizer, train_set, eval_sets, cfg, params.seed, run_id,
               paths.model_dir("teacher"), finalize=detach_replay_head)
