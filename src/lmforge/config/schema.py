"""The schema of params.yaml: one dataclass per section (SECTIONS), and the frozen `Params` they make up.

Schemas carry no defaults on purpose: conf/ is the single source of truth for values. Bounds and allowed
values sit on each field (`spec`) and are checked by lmforge.config.check; rules that relate keys to one
another are in lmforge.config.rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

PARAMS_FILE = "params.yaml"


def spec(*, ge: float | None = None, le: float | None = None, gt: float | None = None,
         lt: float | None = None, choices: tuple | None = None) -> Any:
    """A schema field with bounds or allowed values (checked by `parse_section`)."""
    return field(metadata={"ge": ge, "le": le, "gt": gt, "lt": lt, "choices": choices})


# --------------------------------------------------------------------------------------------------
# Schemas, one per params.yaml section
# --------------------------------------------------------------------------------------------------


# the builders of `datasets.load_dataset` a local corpus (data=local, CorpusConfig.path) may name
LOCAL_FORMATS = ("text", "csv", "tsv", "json", "jsonl", "parquet")


@dataclass
class CorpusConfig:
    """One real corpus, read by `datasets.load_dataset(path, name, data_files=..., split=...)`.

    data=local: `path` is a builder (text, csv, tsv, json, parquet) and `files` / `label_files` are
    globs relative to the repository root. data=hub: `path` is a dataset name and `name` its config.
    """

    path: str = spec()  # builder (text|csv|tsv|json|jsonl|parquet) or hub dataset name
    name: str | None = spec()  # hub dataset config, e.g. wikitext-103-raw-v1
    files: list[str] = spec()  # globs, all pooled; lmforge splits train/validation/test itself
    label_files: list[str] = spec()  # one glob per label, in label_words order (rt-polarity layout)
    splits: list[str] = spec()  # source splits read and pooled, e.g. [train, test]
    sample_by: str = spec(choices=("line", "paragraph", "document"))  # text builder: one doc per ...
    encoding: str = spec()  # text / csv / tsv files
    text_column: str = spec()
    label_column: str | None = spec()  # task corpus without label_files
    label_values: list[str] = spec()  # raw label of each class, in label_words order (compared as text)
    detokenize: str = spec(choices=("none", "wikitext"))  # undo tokenised text (WikiText's " @-@ ")


@dataclass
class DataConfig:
    source: str = spec(choices=("synthetic", "local", "hub"))
    raw: str = spec()  # what dvc.yaml's preprocess depends on: data/raw (local) or the generator's code
    # synthetic: documents generated; local / hub: at most this many read (null: all)
    general_docs: int | None = spec(ge=10)  # documents of the general corpus
    domain_docs: int | None = spec(ge=10)  # unlabelled reviews (domain language modelling)
    task_examples: int | None = spec(ge=20)  # labelled reviews (downstream task)
    general: CorpusConfig | None = spec()  # local / hub only
    domain: CorpusConfig | None = spec()  # null with domain_from_task
    task: CorpusConfig | None = spec()
    domain_from_task: float | None = spec(gt=0.0, lt=1.0)  # share of task reviews used, unlabelled, as domain
    streaming: bool = spec()  # local / hub: read lazily, stop after *_docs (corpora larger than memory)


@dataclass
class PreprocessConfig:
    tokenizer: str = spec(choices=("train", "base"))  # train a BPE, or reuse models/base's tokenizer
    vocab_size: int = spec(ge=300, le=1_000_000)  # tokenizer=train only
    block_size: int = spec(ge=8, le=8192)
    val_fraction: float = spec(gt=0.0, lt=0.5)
    test_fraction: float = spec(gt=0.0, lt=0.5)
    min_chars: int = spec(ge=1)  # documents shorter than this after cleaning are dropped
    max_chars: int | None = spec(ge=1)  # documents longer than this are dropped (null: no limit)
    dedupe: str = spec(choices=("exact", "normalized"))  # normalized: case, punctuation, spacing ignored
    num_proc: int = spec(ge=1, le=256)  # processes for task-example tokenisation (packing: tokenizer threads)
    prompt: str = spec()  # appended to every review, before the label word
    label_words: list[str] = spec()  # index = label id; each must be exactly one token


@dataclass
class ModelConfig:
    # scratch: a GPT-2 of the shape below. pretrained: the checkpoint's own architecture (its model_type
    # must equal arch), with n_layer .. dropout ignored; see lmforge.modeling.pretrained.
    arch: str = spec(choices=("gpt2", "llama", "bert", "mpnet"))  # bert, mpnet: encoders (objective mlm,
    # task.head=classifier); mpnet only pretrained (all-mpnet-base-v2, model=mpnet_base)
    init: str = spec(choices=("scratch", "pretrained"))
    name_or_path: str | None = spec()  # pretrained: hub name or local save_pretrained folder
    gguf_file: str | None = spec()  # pretrained: a .gguf path, or pkg://<package>/<file>
    n_layer: int = spec(ge=1, le=96)
    n_head: int = spec(ge=1, le=128)
    n_embd: int = spec(ge=8, le=16384)
    n_positions: int = spec(ge=8, le=131072)
    dropout: float = spec(ge=0.0, lt=1.0)


@dataclass
class StudentConfig:
    # no upper bounds here: the teacher (model.*) bounds them, checked in `check_across_sections`
    n_layer: int = spec(ge=1)
    n_head: int | None = spec(ge=1)  # null: the teacher's (other than GPT-2: must be the teacher's)
    n_embd: int | None = spec(ge=8)  # null: the teacher's (other than GPT-2: must be the teacher's)
    # teacher: copy embeddings and teacher blocks where widths match | scratch: a fresh model of the shape above |
    # pretrained: the model at name_or_path (any family, its own tokenizer) with a fresh classifier head
    init: str = spec(choices=("teacher", "scratch", "pretrained"))
    name_or_path: str | None = spec()  # init=pretrained: a local save_pretrained folder or pkg://<package>/<folder>
    # which teacher blocks: `influence` keeps the most influential (ShortGPT, measured on calibration
    # blocks of the train split), `even` every k-th (DistilBERT)
    layer_selection: str = spec(choices=("influence", "even"))
    calibration_samples: int = spec(ge=1)  # influence: train-split LM blocks the teacher runs on


@dataclass
class MixtureConfig:
    """Sampling weights of the multi-task mixture; they need not sum to one."""

    domain: float = spec(ge=0.0)
    task: float = spec(ge=0.0)
    general: float = spec(ge=0.0)  # replay of the general corpus, against forgetting


@dataclass
class TrainConfig:
    max_steps: int = spec(ge=1)
    batch_size: int = spec(ge=1)
    grad_accum_steps: int = spec(ge=1)
    learning_rate: float = spec(gt=0.0, le=1.0)
    lr_scheduler: str = spec(choices=("cosine", "linear", "constant_with_warmup"))
    warmup_steps: int = spec(ge=0)
    weight_decay: float = spec(ge=0.0, le=1.0)
    max_grad_norm: float = spec(gt=0.0)
    logging_steps: int = spec(ge=1)
    eval_steps: int = spec(ge=1)
    save_steps: int = spec(ge=1)  # checkpoints for resuming a killed run
    eval_max_examples: int = spec(ge=1)  # cap on validation examples per evaluation
    # Speed switches; precision auto measures, the others default to the CPU's best: SDPA, fused AdamW, eager.
    # auto: bf16 on a GPU, on a CPU only if a start-up probe measures it faster (lmforge.hardware);
    # bf16 / fp16: autocast mixed precision, forced (fp16 needs a GPU)
    precision: str = spec(choices=("auto", "fp32", "bf16", "fp16"))
    attn_implementation: str = spec(choices=("sdpa", "eager", "flash_attention_2"))
    optim: str = spec(choices=("adamw_torch", "adamw_torch_fused"))
    torch_compile: bool = spec()
    # random: examples in a shuffled order; group_by_length: batches of examples of similar length (less padding)
    sampling: str = spec(choices=("random", "group_by_length"))


OBJECTIVES = ("clm", "mlm", "mlm_nsp")


@dataclass
class PretrainConfig(TrainConfig):
    # clm: next-token (causal models); mlm: masked tokens (encoders: 15%, 80/10/10 replacement);
    # mlm_nsp: mlm + next-sentence prediction on sentence pairs of the general corpus (BERT)
    objective: str = spec(choices=OBJECTIVES)


@dataclass
class TaskConfig:
    # lm: the label word scored by the LM head (causal models); classifier: a sequence classification head
    # (AutoModelForSequenceClassification), attached by finetune and carried down the chain
    head: str = spec(choices=("lm", "classifier"))


@dataclass
class FinetuneConfig(TrainConfig):
    mixture: MixtureConfig = spec()


@dataclass
class KDConfig:
    """The distillation loss alpha_kd * T^2 * KL + alpha_ce * CE; one copy in conf/ (distill.kd),
    shared by distill and the prune stage's recovery (prune.recovery.kd: ${distill.kd})."""

    temperature: float = spec(gt=0.0, le=100.0)
    alpha_kd: float = spec(ge=0.0)
    alpha_ce: float = spec(ge=0.0)


@dataclass
class GateConfig:
    """An accuracy gate against the teacher, on the validation split; a null limit is not checked."""

    max_accuracy_drop: float | None = spec(ge=0.0, le=1.0)  # teacher accuracy - model accuracy
    max_ppl_ratio: float | None = spec(ge=1.0)  # model perplexity / teacher perplexity (general and domain)


# What distill and prune's recovery learn from: `transfer` the transfer set with the teacher's cached outputs
# (stage transfer; label logits only, any student), `mixture` the finetune mixture with the teacher run online
# (needed by LM-logit KD and hidden-state KD)
KD_DATA = ("transfer", "mixture")


@dataclass
class AugmentConfig:
    copies: int = spec(ge=0)  # perturbed copies of each text
    word_dropout: float = spec(ge=0.0, lt=1.0)  # each word of a copy dropped with this probability
    ngram: float = spec(ge=0.0, le=1.0)  # probability that a copy is a random span of ngram_min..ngram_max words
    ngram_min: int = spec(ge=1)
    ngram_max: int = spec(ge=1)
    mlm_replace: float = spec(ge=0.0, lt=1.0)  # each word replaced by a masked LM's guess with this probability
    masked_lm: str | None = spec()  # mlm_replace > 0: a local masked-LM folder (e.g. models/general of an encoder)


@dataclass
class TransferConfig:
    task: bool = spec()  # the labelled train split
    domain: bool = spec()  # the unlabelled in-domain documents (data/processed/domain_text)
    max_domain_texts: int | None = spec(ge=1)  # null: all
    augment: AugmentConfig = spec()
    batch_size: int = spec(ge=1)  # the teacher's inference batch
    precision: str = spec(choices=("fp32", "bf16", "auto"))  # the teacher's; auto: bf16 where measured faster


@dataclass
class DistillConfig(FinetuneConfig):
    data: str = spec(choices=KD_DATA)
    kd: KDConfig = spec()
    alpha_hidden: float = spec(ge=0.0)  # weight of the hidden-state term (layer-wise KD); 0: off
    hidden_loss: str = spec(choices=("mse", "cosine"))  # mse (TinyBERT) | cosine: 1 - cos (DistilBERT)
    gate: GateConfig | None = spec()  # null: no gate


@dataclass
class RecoveryConfig(TrainConfig):
    """Short KD fine-tuning from the teacher after pruning, with the pruned structure held fixed: a training run
    of conf/train/base.yaml's keys (conf/prune/common.yaml sets what differs, conf/steps/ the budget), with
    distill's loss and finetune's mixture. A null step count is derived from max_steps, so that a longer or
    shorter recovery (`-S prune.recovery.max_steps=N`) still logs, evaluates and saves in proportion."""

    max_steps: int = spec(ge=0)  # 0: no recovery
    logging_steps: int | None = spec(ge=1)  # null: max_steps // 10 (at least 1)
    eval_steps: int | None = spec(ge=1)  # null: max_steps (one evaluation, at the end)
    save_steps: int | None = spec(ge=1)  # null: max_steps // 2 (at least 1)
    data: str = spec(choices=KD_DATA)
    kd: KDConfig = spec()
    mixture: MixtureConfig = spec()

    def train_config(self) -> TrainConfig:
        """The TrainConfig of the recovery run (the runner's), with the null step counts derived."""
        values = {f.name: getattr(self, f.name) for f in fields(TrainConfig)}
        derived = {"logging_steps": max(1, self.max_steps // 10), "eval_steps": self.max_steps,
                   "save_steps": max(1, self.max_steps // 2)}
        return TrainConfig(**{**values, **{k: v for k, v in derived.items() if values[k] is None}})


@dataclass
class CalibrationConfig:
    """Train-split LM blocks run through the model to score weights, channels, heads and blocks."""

    samples: int = spec(ge=1)  # blocks, drawn from the general and domain train splits
    batch_size: int = spec(ge=1)


PRUNE_METHODS = ("l1_unstructured", "wanda", "structured", "lowrank")
# the prune.* keys each method reads; a key no selected method reads must be null (lmforge.config.rules)
PRUNE_METHOD_KEYS = {"l1_unstructured": ("amount",), "wanda": ("amount", "n_m"),
                     "structured": ("heads", "ffn", "layers"), "lowrank": ("rank_ratio", "energy", "activation_aware")}
UNSTRUCTURED_METHODS = ("l1_unstructured", "wanda")  # both zero weights of the same layers: never combined


@dataclass
class PruneConfig:
    """Keys a method does not use must be null (checked by lmforge.config.rules.check_prune)."""

    method: list[str] = spec()  # applied in order, from PRUNE_METHODS, e.g. [structured, lowrank]
    amount: float | None = spec(gt=0.0, lt=1.0)  # l1_unstructured, wanda: fraction of each layer's weights zeroed
    n_m: list[int] | None = spec()  # wanda: [N, M], keep N of every M consecutive weights (amount null)
    heads: float | None = spec(ge=0.0, lt=1.0)  # structured: fraction of attention heads removed per layer
    ffn: float | None = spec(ge=0.0, lt=1.0)  # structured: fraction of FFN channels removed per layer
    layers: float | None = spec(ge=0.0, lt=1.0)  # structured: fraction of blocks removed
    rank_ratio: float | None = spec(gt=0.0, le=1.0)  # lowrank: rank / min(out, in) of each layer
    energy: float | None = spec(gt=0.0, lt=1.0)  # lowrank: smallest rank keeping this share of sigma^2
    activation_aware: bool | None = spec()  # lowrank: scale input columns by activation RMS before the SVD
    calibration: CalibrationConfig = spec()
    # validation LM blocks per corpus and task examples: the recovery run's evaluation, the gate and the metrics
    validation_examples: int = spec(ge=1)
    recovery: RecoveryConfig = spec()
    gate: GateConfig | None = spec()  # null: no gate


# quantize.candidates (onnx_int8): per-channel int8 as is; smoothed first (SmoothQuant); blockwise (MatMulNBits);
# per-channel with the most quantization-sensitive MatMuls left fp32
QUANTIZE_CANDIDATES = ("per_channel", "smooth", "blockwise", "fp32_fallback")


@dataclass
class QuantizeConfig:
    # dynamic_int8: torch, int8 linear layers; onnx_int8: ONNX Runtime; bf16: weights stored and run in bf16
    method: str = spec(choices=("dynamic_int8", "onnx_int8", "bf16"))
    per_channel: bool = spec()  # one scale per output channel rather than per tensor (int8 methods)
    include_lm_head: bool = spec()  # dynamic_int8 (onnx_int8 always quantizes the head, bf16 casts it)
    min_coverage: float = spec(ge=0.0, le=1.0)  # quantized weight parameters / all weight-matrix parameters
    calibration_blocks: int = spec(ge=0)  # onnx_int8: 0 dynamic activations; N static QDQ on N train blocks
    # onnx_int8: null: one scale per output channel and per-tensor activations (MatMulInteger); N: blocks of
    # N input channels, each with its own scale, for weights and activations (ORT MatMulNBits)
    block_size: int | None = spec(ge=16, le=256)
    check_max_blocks: int = spec(ge=1)  # validation LM blocks for the loss check against the input model
    check_max_examples: int = spec(ge=1)  # validation task examples for the accuracy check
    task_model: bool = spec()  # also export the task-only model (last position, label rows of the head)
    gate: GateConfig | None = spec()  # null: no gate
    # onnx_int8: null: one model by per_channel / block_size; a list of QUANTIZE_CANDIDATES (per_channel, smooth,
    # blockwise, fp32_fallback): each built and measured, the fastest within max_accuracy_drop kept
    candidates: list[str] | None = spec()
    max_accuracy_drop: float = spec(ge=0.0, le=1.0)  # candidates: validation accuracy below the input's allowed
    smooth_alpha: float = spec(ge=0.0, le=1.0)  # smooth: s_j = max|x_j|^alpha / max|w_j|^(1 - alpha)
    smooth_blocks: int = spec(ge=1)  # smooth, fp32_fallback: train LM blocks of the activation statistics
    fallback_layers: int = spec(ge=1)  # fp32_fallback: how many of the most sensitive MatMuls stay fp32


@dataclass
class ExternalSetConfig:
    """A labelled test set that is not a split of the training corpora (evaluate.external)."""

    name: str = spec()  # a short identifier: the key in metrics/evaluate.json and the report's column
    source: str = spec(choices=("local", "hub"))  # as data.source: files through a builder, or a hub dataset
    max_examples: int | None = spec(ge=1)  # read at most this many (null: all)
    corpus: CorpusConfig = spec()  # described like data.task: path, files or label_files, columns, label_values


@dataclass
class EvaluateConfig:
    models: list[str] = spec()  # which models of the chain, in order (base is added when model.init=pretrained)
    precision: str = spec(choices=("auto", "fp32", "bf16", "fp16"))  # of the fp32 models (int8 run their own)
    external: list[ExternalSetConfig] = spec()  # labelled test sets from elsewhere, checked for overlap
    threads: int = spec(ge=1, le=256)  # torch threads for latency and throughput
    max_lm_blocks: int = spec(ge=1)  # perplexity on at most this many test blocks per corpus
    max_task_examples: int = spec(ge=1)
    latency_seq_len: int = spec(ge=1)
    latency_warmup: int = spec(ge=0)
    latency_runs: int = spec(ge=1)
    throughput_batch: int = spec(ge=1)
    throughput_runs: int = spec(ge=1)
    gate: GateConfig = spec()  # "as good as the teacher" for the recommended model (the stages' gate checks)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "preprocess": PreprocessConfig,
    "model": ModelConfig,
    "student": StudentConfig,
    "pretrain": PretrainConfig,
    "task": TaskConfig,
    "finetune": FinetuneConfig,
    "transfer": TransferConfig,
    "distill": DistillConfig,
    "prune": PruneConfig,
    "quantize": QuantizeConfig,
    "evaluate": EvaluateConfig,
}

# Top-level scalars of params.yaml besides the sections (each checked in `validate_params`).
TOP_LEVEL_KEYS = ("seed", "launcher")


@dataclass(frozen=True)
class Params:
    """params.yaml, validated: the top-level keys and one typed config per section (SECTIONS).

    `stage_params` fills only the sections a stage declares in dvc.yaml and leaves the others None,
    so that a stage cannot silently depend on a parameter DVC does not track for it.
    """

    seed: int
    launcher: str = "python"
    data: DataConfig | None = None
    preprocess: PreprocessConfig | None = None
    model: ModelConfig | None = None
    student: StudentConfig | None = None
    pretrain: PretrainConfig | None = None
    task: TaskConfig | None = None
    finetune: FinetuneConfig | None = None
    transfer: TransferConfig | None = None
    distill: DistillConfig | None = None
    prune: PruneConfig | None = None
    quantize: QuantizeConfig | None = None
    evaluate: EvaluateConfig | None = None

MODEL_NAMES = ("base", "general", "teacher", "student", "pruned", "quantized")
