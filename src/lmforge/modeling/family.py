"""What kind of model a folder or config holds, and the one class that loads it.

The chain carries four kinds of model, told apart by the class `save_pretrained` recorded in
config.json (`architectures`), so every stage and loader picks the class the same way:

    causal      GPT2LMHeadModel, LlamaForCausalLM, ...   next-token LM (objective clm); task.head=lm
    masked      BertForMaskedLM, MPNetForMaskedLM        encoder with an MLM head (objective mlm)
    pretraining BertForPreTraining                       encoder with MLM + next-sentence heads (mlm_nsp)
    classifier  *ForSequenceClassification               any family with a task head (task.head=classifier):
                                                         logits are (batch, labels), not (batch, seq, vocab)

Only transformers' own classes are ever instantiated (never `trust_remote_code`).
"""

from __future__ import annotations

from typing import Any

ENCODER_TYPES = ("bert", "mpnet")  # model_type values of bidirectional encoders (mpnet: pretrained only)


def is_encoder(model_type: str) -> bool:
    return model_type in ENCODER_TYPES


def kind_of(config: Any) -> str:
    """The kind of a transformers config (or its config.json as a dict), from the class that saved it."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    architectures = get("architectures") or []
    name = architectures[0] if architectures else ""
    if name.endswith("ForSequenceClassification"):
        return "classifier"
    if name.endswith("ForPreTraining"):
        return "pretraining"
    if name.endswith("ForMaskedLM") or is_encoder(get("model_type", "")):  # a bare encoder gets an MLM head
        return "masked"
    return "causal"


def auto_class(config: Any) -> type:
    """The transformers class that builds or loads a model of `config`'s kind (from_config / from_pretrained)."""
    import transformers

    kind = kind_of(config)
    if kind == "pretraining":
        model_type = config.get("model_type") if isinstance(config, dict) else config.model_type
        if model_type != "bert":
            raise ValueError(f"a pretraining (MLM + NSP) model must be a BERT, not {model_type!r}")
        return transformers.BertForPreTraining
    return {"causal": transformers.AutoModelForCausalLM, "masked": transformers.AutoModelForMaskedLM,
            "classifier": transformers.AutoModelForSequenceClassification}[kind]


def new_model(config: Any, **kwargs: Any) -> Any:
    """An untrained model of `config`'s class (`auto_class`), built with transformers' own classes only."""
    cls = auto_class(config)
    # the Auto* classes have from_config; a concrete class (BertForPreTraining) has only _from_config
    return cls.from_config(config, **kwargs) if hasattr(cls, "from_config") else cls._from_config(config, **kwargs)


def kind_of_model(model: Any) -> str:
    """The kind of an in-memory model: its own class says it (`architectures` is only set on save).
    A config (or config.json as a dict) goes to `kind_of`."""
    if not hasattr(model, "config"):
        return kind_of(model)
    name = type(model).__name__
    if not name.endswith(("ForSequenceClassification", "ForPreTraining", "ForMaskedLM", "ForCausalLM",
                          "LMHeadModel")):
        return kind_of(model.config)  # wrappers (ONNX, torch.compile) and bare encoders: go by the config
    return kind_of({"architectures": [name], "model_type": model.config.model_type})


def is_classifier(model: Any) -> bool:
    """A model (or config) whose output is one row of label logits per sequence."""
    return kind_of_model(model) == "classifier"


def head_of(model: Any) -> str:
    """The `task.head` a model of the chain carries: classifier, or lm (the label word scored by the LM head)."""
    return "classifier" if is_classifier(model) else "lm"
