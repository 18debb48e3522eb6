"""Progressive pre-training: general causal LM from scratch, then domain + task adaptation with replay."""

from __future__ import annotations

import logging
from typing import Any

from lmforge import paths
from lmforge.config import Params
from lmforge.errors import missing_input
from lmforge.modeling.build import build_model
from lmforge.modeling.checks import load_model
from lmforge.modeling.pretrained import base_checkpoint
from lmforge.training import data
from lmforge.training.runner import fingerprint, fit

log = logging.getLogger(__name__)


def pretrain(params: Params) -> dict[str, Any]:
    """Step one: a GPT-2 built from `model` learns the general corpus (CLM); with model.init=pretrained,
    the checkpoint converted by the base stage continues on it instead (continued pre-training)."""
    cfg = params.pretrain
    base = base_checkpoint(params.model) if params.model.init == "pretrained" else None
    tokenizer = data.load_tokenizer()
    train_set = data.lm_examples(paths.LM_GENERAL, "train")
    eval_sets = {"general": data.lm_examples(paths.LM_GENERAL, "validation", cfg.eval_max_examples)}
    inputs = [paths.LM_GENERAL, paths.TOKENIZER]
    if base is None:
        model = build_model(params.model, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id,
                            seed=params.seed)
    else:
        model = load_model(base)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise missing_input(paths.TOKENIZER, f"{len(tokenizer)} tokens, more than the "
                                f"{model.get_input_embeddings().num_embeddings} embeddings of {base}: data/processed "
                                "was not tokenized with the base model's tokenizer")
        inputs.append(base)
    run_id = fingerprint({"seed": params.seed, "model": params.model, "pretrain": cfg}, inputs)
    return fit("pretrain", model, tokenizer, train_set, eval_sets, cfg, params.seed, run_id,
               paths.model_dir("general"))


def finetune(params: Params) -> dict[str, Any]:
    """Step two: the general model continues on domain text + task examples + general replay."""
    cfg = params.finetune
    source = paths.model_dir("general")
    model = load_model(source)  # first: a missing, truncated or NaN input stops here
    tokenizer = data.load_tokenizer()
    examples = cfg.max_steps * cfg.batch_size * cfg.grad_accum_steps
    train_set = data.mixture_train_set(cfg.mixture, examples, params.seed)
    eval_sets = data.eval_sets(cfg.eval_max_examples, with_task=True)
    run_id = fingerprint({"seed": params.seed, "finetune": cfg}, [source, paths.PROCESSED])
    return fit("finetune", model, tokenizer, train_set, eval_sets, cfg, params.seed, run_id,
               paths.model_dir("teacher"))
