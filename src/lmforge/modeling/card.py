"""What makes a model folder usable without the repository: its task and a model card.

Every stage saves a model through `save_folder`, which calls `write_bundle` on the folder before it is
renamed into place, so a model folder of the chain always holds, next to its weights and tokenizer:

    task_meta.json   the task: prompt, label words, label token ids, block_size and max_prompt_tokens
                     (what `lmforge predict` needs to turn a review into the prompt the model was trained on)
    README.md        a Hugging Face model card: YAML front matter (base model, datasets, metrics, tags,
                     and an `lmforge` block: stage and its parameters from params.yaml; no git revision:
                     a folder is the same bytes whenever the stage's inputs are; dvc.lock records provenance)
                     + prose

The card's metrics are the stage's own validation metrics, without the run-dependent ones (`card_metrics`):
evaluate runs after the models are saved and must not modify them (they are DVC outputs). `lmforge info`
adds evaluate's test metrics when the folder sits in a repository with metrics/evaluate.json.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from lmforge import paths
from lmforge.artifacts import atomic_dir, read_json, write_json, write_text
from lmforge.config import PARAMS_FILE, load_params
from lmforge.locks import is_main_process

TASK_FILE = "task_meta.json"
CARD_FILE = "README.md"
DVC_YAML = Path("dvc.yaml")
# Trainer.save_model writes its TrainingArguments as a pickle; a model folder carries safetensors and JSON only.
PICKLES = ("training_args.bin",)
DESCRIPTIONS = {
    "base": "the pretrained checkpoint, converted once to safetensors",
    "pretrain": "the general model: causal LM pre-training on the general corpus",
    "finetune": "the teacher: the general model adapted to the domain and the task, with general replay",
    "distill": "the student: a smaller model distilled from the teacher (KD on full-vocabulary logits + CE)",
    "prune": "the pruned student, with a short KD recovery",
    "quantize": "the pruned student with dynamic INT8 linear layers (load with `lmforge` or "
                "`lmforge.compression.quantize.load_quantized`)",
}


# Numbers that differ between two runs of the same inputs: timings (the precision probe's, run times, latencies,
# throughput, speed-ups), the step a run resumed from, dates and load averages. A model folder is a DVC output
# that the next stage depends on: one of these in its card would change its hash on a rerun that changed no
# weight, and DVC would rerun everything downstream. They stay in metrics/<stage>.json.
RUN_DEPENDENT = re.compile(r"(^|\.)probe(\.|$)|(_ms|_s|_seconds|_per_s)$|runtime|speedup|resumed_from_step"
                           r"|(^|\.|_)(time|date|started|finished|timestamp|load_?avg\w*|load_average\w*)(\.|_|$)")


def card_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers of `metrics` a model card carries (flat dotted keys): those that are a pure function of the
    stage's inputs, so that the folder is the same bytes whenever its inputs are."""
    return {k: v for k, v in _flat(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and not RUN_DEPENDENT.search(k)}


def write_bundle(folder: str | Path, stage: str, *, metrics: dict[str, Any] | None = None,
                 source: str | Path | None = None) -> None:
    """Add task_meta.json and README.md to the model folder `folder` written by `stage`, and drop pickles.

    `source` is the model folder the stage started from: its task_meta.json is carried over when the
    stage does not read data/processed (quantize). `metrics` are the stage's own numbers.
    """
    folder = Path(folder)
    for name in PICKLES:
        (folder / name).unlink(missing_ok=True)
    task = _task(source)
    if task is not None:
        write_json(folder / TASK_FILE, task)
    write_text(folder / CARD_FILE, model_card(folder, stage, _stage_params(stage), metrics or {}, task, source))


def _task(source: str | Path | None) -> dict[str, Any] | None:
    for candidate in ([Path(source) / TASK_FILE] if source else []) + [paths.TASK_META]:
        if candidate.is_file():
            task = read_json(candidate)
            # preprocess keeps the end of a review that is too long, leaving one position for the label word
            task.setdefault("max_prompt_tokens", task["block_size"] - 1)
            task.setdefault("truncation_side", "left")
            return task
    return None  # the base stage runs before preprocess: there is no task yet


def _stage_params(stage: str) -> dict[str, Any]:
    """The params.yaml sections the stage depends on, as dvc.yaml lists them (the single list of them)."""
    if not (DVC_YAML.is_file() and Path(PARAMS_FILE).is_file()):
        return {}
    sections = yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["stages"].get(stage, {}).get("params", [])
    raw = load_params()
    return {name: raw[name] for name in sections if isinstance(name, str) and name in raw}


def _origin() -> tuple[str | None, list[str]]:
    """(base_model, datasets) for the front matter, from the model and data sections of params.yaml."""
    if not Path(PARAMS_FILE).is_file():
        return None, []
    raw = load_params()
    model, data = raw.get("model", {}), raw.get("data", {})
    base = None
    if model.get("init") == "pretrained":
        base = model.get("name_or_path") or Path(str(model.get("gguf_file"))).name
    if data.get("source") == "synthetic":
        return base, [f"lmforge-synthetic (generated from seed {raw.get('seed')})"]
    datasets = []
    for corpus in ("general", "domain", "task"):
        spec = data.get(corpus)
        if spec:
            datasets.append(spec["path"] if data.get("source") == "hub" else ", ".join(spec.get("files") or
                                                                                       spec.get("label_files")))
    return base, datasets


def model_card(folder: Path, stage: str, params: dict[str, Any], metrics: dict[str, Any],
               task: dict[str, Any] | None, source: str | Path | None = None) -> str:
    base, datasets = _origin()
    numbers = card_metrics(metrics)
    perplexities = {k: v for k, v in numbers.items() if k.endswith("_perplexity")}
    # a folder `from_pretrained` loads is a transformers model; the int8 artifact needs lmforge's loader
    hf_weights = (folder / "model.safetensors").is_file() or any(folder.glob("model-*-of-*.safetensors"))
    library = "transformers" if hf_weights else "lmforge"
    front: dict[str, Any] = {"library_name": library, "pipeline_tag": "text-generation",
                             "tags": ["lmforge", stage, "causal-lm", "sentiment"]}
    if base:
        front["base_model"] = base
    if datasets:
        front["datasets"] = datasets
    if perplexities:
        front["model-index"] = [{"name": folder.name if not folder.name.startswith(".") else stage, "results": [
            {"task": {"type": "text-generation", "name": "language modelling"},
             "dataset": {"name": "validation split of the training corpora", "type": "lmforge"},
             "metrics": [{"type": "perplexity", "name": k, "value": v} for k, v in perplexities.items()]}]}]
    front["lmforge"] = {"stage": stage, "source": Path(source).as_posix() if source else None,
                        "params": params, "metrics": numbers}

    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
             f"# lmforge model: {stage}", "", f"Produced by the `{stage}` stage of lmforge: "
             f"{DESCRIPTIONS.get(stage, stage)}.", ""]
    if task:
        words = ", ".join(f"`{w.strip()}`" for w in task["label_words"])
        lines += ["## Use", "", f"Sentiment classification cast as text: review + `{task['prompt']}` + one of "
                  f"{words}; the label is the most likely label word.", "",
                  "    lmforge predict . \"a great film, but far too long\"",
                  "    lmforge generate . \"The movie\" --max-new-tokens 30",
                  "    lmforge info .", ""]
    if numbers:
        lines += ["## Metrics of the stage (validation)", "", "| metric | value |", "| --- | ---: |"]
        lines += [f"| {k} | {v:g} |" for k, v in numbers.items()]
        lines += ["", "Test-set accuracy, size and latency of every model of the chain are in the run's "
                  "metrics/evaluate.json and reports/summary.md (`lmforge info` shows them).", ""]
    return "\n".join(lines)


def read_card(folder: str | Path) -> dict[str, Any]:
    """The YAML front matter of a model folder's README.md ({} when there is none)."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return {}
    text = path.read_text(encoding="utf-8")
    if not text.startswith("---\n"):
        return {}
    end = text.find("\n---", 4)
    front = yaml.safe_load(text[4:end]) if end > 0 else None
    return front if isinstance(front, dict) else {}


def _flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def save_folder(output: Path, stage: str, write: Callable[[Path], object], *, tokenizer: Any = None,
                metrics: dict[str, Any] | None = None, source: Path | None = None) -> None:
    """Write the model folder `output` of `stage` atomically, the one saver of every stage and format:
    `write(folder)` puts the weights (and any manifest) in a temporary folder, then the tokenizer,
    task_meta.json and the model card (with `metrics`) are added, and the folder replaces `output` whole. A
    distributed run's main process writes it (under FSDP, lmforge.training.runner.model_writer has gathered the
    weights on every rank first)."""
    if not is_main_process():
        return
    with atomic_dir(output) as folder:
        write(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        write_bundle(folder, stage, metrics=metrics, source=source)
    logging.getLogger("lmforge").info("%s: saved %s", stage, output)

