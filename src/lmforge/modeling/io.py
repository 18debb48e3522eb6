"""Model folders of the chain, in every format, behind one interface: detect, load, classify, generate.

A format is known by its manifest, the file that identifies it in a folder:

    hf         config.json + model*.safetensors   `save_pretrained` folders (base, general, teacher, student,
                                                  pruned by a method that keeps HF shapes)
    quantized  quantization.json                  lmforge.compression.quantize (models/quantized): torch dynamic
                                                  int8 (model_int8.safetensors), ONNX Runtime int8 (model.onnx) or
                                                  bf16 (model.safetensors), each loaded in its own runtime
    lowrank    lowrank.json                       lmforge.compression.lowrank (models/pruned with prune=lowrank)

A loaded model is anything that `model(input_ids=..., attention_mask=...)` turns into an object with
`.logits` (batch, seq, vocab), the interface lmforge.evaluation.metrics already measures; scoring
the label words and sampling are written once against it. A new format (ONNX, factored low-rank) is
one `register_format(...)` call with a loader that returns such a callable, e.g.

    register_format("onnx", "onnx_manifest.json", ("model.onnx",), load_onnx)  # load_onnx(folder) -> model

A format whose manifest is config.json matches only when no other format's manifest is in the folder.

Folders are read from safetensors and JSON only: no pickle, no `trust_remote_code`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer

from lmforge.artifacts import read_json
from lmforge.data.cleaning import clean_text
from lmforge.data.examples import encode_prompts
from lmforge.errors import DataError, rerun_hint
from lmforge.evaluation import metrics
from lmforge.modeling.arch import context_length
from lmforge.modeling.card import TASK_FILE
from lmforge.modeling.checks import load_hf
from lmforge.modeling.family import kind_of
from lmforge.paths import producer_of

BATCH_SIZE = 32
QUANTIZED_MANIFEST = "quantization.json"  # lmforge.compression.quantize writes it
QUANTIZED_METHODS = ("dynamic_int8", "onnx_int8", "bf16")  # the runtimes a quantized folder is loaded in
GENERIC_MANIFEST = "config.json"  # every format carries one: it identifies a folder only when nothing else does


class ModelFolderError(DataError):
    """A folder that is not a complete model folder of the chain."""


@dataclass(frozen=True)
class ModelFormat:
    name: str
    manifest: str  # the file that identifies the format
    weights: tuple[str, ...]  # globs of the weight files: at least one must match, and they count as its bytes
    load: Callable[[Path], Any]  # folder -> a model called as model(input_ids=, attention_mask=).logits


FORMATS: dict[str, ModelFormat] = {}


def register_format(name: str, manifest: str, weights: tuple[str, ...], load: Callable[[Path], Any]) -> None:
    FORMATS[name] = ModelFormat(name, manifest, weights, load)


def _load_quantized(folder: Path, threads: int | None = None) -> Any:
    from lmforge.compression.quantize import load_quantized

    return load_quantized(folder, threads=threads)  # ONNX Runtime sessions take their thread count up front


def _load_lowrank(folder: Path) -> Any:
    from lmforge.compression.lowrank import load_lowrank

    return load_lowrank(folder)


register_format("hf", GENERIC_MANIFEST, ("model.safetensors", "model-*-of-*.safetensors"), load_hf)
register_format("quantized", QUANTIZED_MANIFEST, ("model_int8.safetensors", "model.onnx", "model.safetensors"),
                _load_quantized)
register_format("lowrank", "lowrank.json", ("model_lowrank.safetensors",), _load_lowrank)


def weights_bytes(path: str | Path) -> int:
    """Bytes of a model folder's weights: safetensors or model.onnx (not the task-only task.onnx)."""
    files = [p for p in Path(path).rglob("*") if p.is_file()
             and (p.suffix == ".safetensors" or p.name == "model.onnx")]
    return sum(p.stat().st_size for p in files)


def method_of(path: str | Path) -> str:
    """The method named by a quantized folder's manifest; DataError naming the file if unreadable."""
    manifest_path = Path(path) / QUANTIZED_MANIFEST
    if not manifest_path.is_file():
        raise DataError(f"{manifest_path}: missing; {path} is not a quantized model folder of lmforge")
    try:
        method = read_json(manifest_path).get("method")
    except (ValueError, AttributeError) as exc:
        raise DataError(f"{manifest_path}: not a JSON object: {exc}") from exc
    if method not in QUANTIZED_METHODS:
        raise DataError(f"{manifest_path}: method {method!r}, expected one of {', '.join(QUANTIZED_METHODS)}")
    return method


def detect_format(folder: str | Path) -> ModelFormat:
    """The format of a model folder, from its manifest; ModelFolderError with the reason when it has none."""
    folder = Path(folder)
    if not folder.exists():
        hint = f" ({rerun_hint(folder)})" if producer_of(folder) else ""
        raise ModelFolderError(f"{folder}: not found{hint}")
    if not folder.is_dir():
        raise ModelFolderError(f"{folder}: not a folder (MODEL is a model folder, e.g. models/quantized)")
    if ".tmp-" in folder.name or ".old-" in folder.name:
        raise ModelFolderError(f"{folder}: a temporary folder left by an interrupted stage, not a model "
                               f"(its model is {folder.parent / folder.name.split('.')[1]}; rerun `dvc repro`)")
    if (folder / "trainer_state.json").is_file():
        raise ModelFolderError(f"{folder}: a training checkpoint of an unfinished or resumable stage, not a "
                               "model of the chain (use the stage's folder under models/)")
    found = [f for f in FORMATS.values() if (folder / f.manifest).is_file()]
    specific = [f for f in found if f.manifest != GENERIC_MANIFEST]
    fmt = specific[0] if specific else (found[0] if found else None)
    if fmt is None:
        if (folder / "base.json").is_file():
            raise ModelFolderError(f"{folder}: holds only the base manifest (model.init=scratch): no model here; "
                                   "the models of the chain are models/general, teacher, student, pruned, quantized")
        names = sorted(p.name for p in folder.iterdir())
        manifests = ", ".join(f"{f.manifest} ({f.name})" for f in FORMATS.values())
        raise ModelFolderError(f"{folder}: not a model folder of lmforge: none of {manifests} in it "
                               f"(found: {', '.join(names[:8]) or 'nothing'}{', ...' if len(names) > 8 else ''})")
    refuse_remote_code(folder)
    if not weight_files(folder, fmt):
        raise ModelFolderError(f"{folder}: has {fmt.manifest} but no weights ({' or '.join(fmt.weights)}): "
                               f"written by an unfinished stage; {rerun_hint(folder)}")
    return fmt


def refuse_remote_code(folder: Path) -> None:
    """A folder whose config or tokenizer names Python code to download and run (`auto_map`), or whose
    architecture transformers does not ship, would load only with `trust_remote_code=True`: lmforge never
    passes it, because that runs arbitrary code from the folder (or the hub) with the user's rights."""
    from transformers import CONFIG_MAPPING

    needs = []
    for name in (GENERIC_MANIFEST, "tokenizer_config.json"):
        try:
            data = read_json(folder / name) if (folder / name).is_file() else {}
        except ValueError:
            continue  # not JSON: the loader names it
        if isinstance(data, dict) and data.get("auto_map"):
            needs.append(f"{name} has auto_map ({', '.join(sorted(data['auto_map']))})")
        if name == GENERIC_MANIFEST and isinstance(data, dict) and data.get("model_type") \
                and data["model_type"] not in CONFIG_MAPPING:
            needs.append(f"model_type {data['model_type']!r} is not an architecture transformers ships")
    if needs:
        raise ModelFolderError(f"{folder}: needs remote code ({'; '.join(needs)}); refused: lmforge never loads "
                               "with trust_remote_code, which would run Python shipped with the model; use a model "
                               "of an architecture transformers includes")


def weight_files(folder: Path, fmt: ModelFormat) -> list[Path]:
    return sorted({p for pattern in fmt.weights for p in folder.glob(pattern) if p.is_file()})


@dataclass
class LoadedModel:
    folder: Path
    format: ModelFormat
    model: Any
    tokenizer: Any
    config: dict[str, Any]
    task: dict[str, Any] | None

    @property
    def context_length(self) -> int | None:
        return context_length(self.config)

    def classify(self, texts: Sequence[str], batch_size: int = BATCH_SIZE,
                 progress: Callable[[int], object] | None = None) -> list[dict[str, Any]]:
        """Label and probability of each text, exactly as preprocess encoded the examples the model was trained
        and evaluated on (lmforge.data.examples.encode_prompts, the one encoder of the task): cleaned text +
        prompt; a text too long for max_prompt_tokens keeps its end, inside an encoder's [CLS] ... [SEP]
        (BERT's pooler reads [CLS]); then the most likely label word at the next position, or the classifier's
        label. The probability is renormalised over the labels; `truncated` says whether the text was cut."""
        task = self.require_task()
        prompts, truncated = encode_prompts([clean_text(t) for t in texts], self.tokenizer, task["prompt"],
                                            task["max_prompt_tokens"] + 1)
        if any(not ids for ids in prompts):
            raise DataError("a text and the prompt encode to no tokens")
        probs = metrics.label_log_probs(self.model, prompts, task["label_token_ids"], batch_size,
                                        progress).softmax(dim=-1)
        labels = [w.strip() for w in task["label_words"]]
        best = probs.argmax(dim=-1)
        return [{"label": labels[int(i)], "probability": round(float(p[i]), 4), "truncated": cut}
                for p, i, cut in zip(probs, best, truncated, strict=True)]

    @torch.inference_mode()
    def generate(self, prompt: str, max_new_tokens: int = 40, temperature: float = 1.0, top_k: int | None = 50,
                 seed: int = 0) -> str:
        """Sample a continuation of `prompt` (temperature 0: greedy), one full forward per token so that
        every format, not only `transformers` models, generates the same way."""
        if kind_of(self.config) != "causal":
            raise ModelFolderError(f"{self.folder}: a {kind_of(self.config)} model "
                                   f"({', '.join(self.config.get('architectures') or ['?'])}) does not generate "
                                   "text; only a causal LM does (`lmforge predict` classifies with this one)")
        ids = self.tokenizer(prompt)["input_ids"] or [self.tokenizer.eos_token_id]
        generator = torch.Generator().manual_seed(seed)
        window = self.context_length or len(ids) + max_new_tokens
        new: list[int] = []
        for _ in range(max_new_tokens):
            context = torch.tensor([(ids + new)[-window:]])
            logits = self.model(input_ids=context, attention_mask=torch.ones_like(context)).logits[0, -1].float()
            if temperature == 0:
                token = int(logits.argmax())
            else:
                logits = logits / temperature
                if top_k:
                    kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
                    logits = logits.masked_fill(logits < kth, float("-inf"))
                token = int(torch.multinomial(logits.softmax(dim=-1), 1, generator=generator))
            if token == self.tokenizer.eos_token_id:
                break
            new.append(token)
        return self.tokenizer.decode(new)

    def require_task(self) -> dict[str, Any]:
        if self.task is None:
            raise ModelFolderError(f"{self.folder}: no {TASK_FILE}, so no prompt and label words to classify with "
                                   "(a model folder written before folders carried their task, or not of the "
                                   "chain: rerun `dvc repro`)")
        return self.task


def load_model(folder: str | Path, *, threads: int | None = None, model_class: type | None = None) -> Any:
    """The model of a folder of the chain in any registered format, in eval mode: the one loader every stage,
    evaluate and the CLI use. `threads`: the intra-op threads of a runtime that fixes them when it loads (ONNX
    Runtime); `model_class`: load an hf folder as that class (a bare encoder with an objective's heads)."""
    folder = Path(folder)
    fmt = detect_format(folder)
    if model_class is not None:
        if fmt.name != "hf":
            raise ModelFolderError(f"{folder}: a {fmt.name} model folder, which loads only as itself")
        model = fmt.load(folder, model_class=model_class)
    else:
        model = fmt.load(folder, threads=threads) if fmt.name == "quantized" else fmt.load(folder)
    return model.eval() if hasattr(model, "eval") else model  # an ONNX session has no train/eval modes


def open_model(folder: str | Path) -> LoadedModel:
    """The model of a folder in any registered format, in eval mode, with its tokenizer and task (`lmforge`)."""
    folder = Path(folder)
    fmt = detect_format(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise ModelFolderError(f"{folder}: no usable tokenizer ({exc}); model folders of the chain carry one, "
                               f"{rerun_hint(folder)}") from exc
    config = read_json(folder / GENERIC_MANIFEST) if (folder / GENERIC_MANIFEST).is_file() else {}
    task = read_json(folder / TASK_FILE) if (folder / TASK_FILE).is_file() else None
    return LoadedModel(folder, fmt, load_model(folder), tokenizer, config, task)
