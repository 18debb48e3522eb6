"""Measurements of one model of the chain: perplexity (next-token, or masked-token for an encoder), task
accuracy, parameter counts, CPU latency, throughput.

Pure functions of a model and token ids. A model is anything whose `forward(input_ids=...,
attention_mask=...)` returns an object with `.logits` of shape (batch, seq, vocab), like `GPT2LMHeadModel` or
any model of `load_quantized` (torch int8, bf16, or an ONNX Runtime session), or (batch, labels) for a
classifier (task.head=classifier). Runs under `torch.inference_mode()` with the model in eval mode, in the
model's own dtype (the caller may add autocast); logits are compared in fp32.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from torch.ao.nn.quantized import dynamic as nnqd

from lmforge.data.examples import MLM_PROBABILITY
from lmforge.data.processed import ValidationData
from lmforge.modeling.family import is_classifier

# GPT-2's token and position embeddings; the Llama family's token embeddings (its positions are rotary);
# BERT's token, position and token-type embeddings
EMBEDDING_NAMES = ("wte", "wpe", "embed_tokens", "word_embeddings", "position_embeddings", "token_type_embeddings")


def pad_right(seqs: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids and attention_mask. The pad value is never seen by a real position:
    it comes after every real token and attention is causal (or masked, in an encoder). A GPT-2 or Llama
    classifier finds its last real token by the pad id, so it gets its own (`pad_id_of`)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids, mask


def _logits(model: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = model(input_ids=ids, attention_mask=mask)
    # BertForPreTraining names its token logits prediction_logits (next to seq_relationship_logits)
    logits = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits
    return logits.float()


def exp_loss(loss: float) -> float:
    """exp(`loss`), infinity where it overflows a float (a mean loss above ~709 nats: a finite but terrible
    model); the metrics writer turns it into null with the non-finite flag, as it does NaN."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


@torch.inference_mode()
def perplexity(model: nn.Module, blocks: Sequence[Sequence[int]] | Dataset, batch_size: int) -> float:
    """exp of the token-weighted mean next-token NLL over `blocks` (labels = input_ids, shifted)."""
    if isinstance(blocks, Dataset):
        blocks = list(blocks["input_ids"])
    if not blocks:
        raise ValueError("perplexity needs at least one block")
    model.eval()
    nll_sum, n_tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids, mask = pad_right(blocks[start : start + batch_size])
        logits = _logits(model, ids, mask)[:, :-1]
        targets = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
        nll_sum += F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                                   ignore_index=-100, reduction="sum").item()
        n_tokens += int(mask[:, 1:].sum())
    return exp_loss(nll_sum / n_tokens)


def pad_id_of(model: nn.Module) -> int:
    return getattr(getattr(model, "config", None), "pad_token_id", None) or 0


@torch.inference_mode()
def masked_perplexity(model: nn.Module, blocks: Sequence[Sequence[int]] | Dataset, batch_size: int,
                      mask_token_id: int, special_ids: Sequence[int], seed: int = 0,
                      probability: float = MLM_PROBABILITY) -> float:
    """Masked-token perplexity of an encoder: exp of the mean NLL of the original tokens at `probability` of
    each block's non-special positions, all replaced by [MASK]. The positions depend on `seed` and the
    blocks only, so every model is scored on the same ones (unlike training's random 80/10/10 masking)."""
    if isinstance(blocks, Dataset):
        blocks = list(blocks["input_ids"])
    if not blocks:
        raise ValueError("masked perplexity needs at least one block")
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    special = torch.tensor(list(special_ids), dtype=torch.long)
    nll_sum, n_tokens = 0.0, 0
    for start in range(0, len(blocks), batch_size):
        ids, mask = pad_right(blocks[start : start + batch_size])
        chosen = (torch.rand(ids.shape, generator=generator) < probability) & (mask == 1) & ~torch.isin(ids, special)
        if not chosen.any():
            continue
        logits = _logits(model, ids.masked_fill(chosen, mask_token_id), mask)
        nll_sum += F.cross_entropy(logits[chosen], ids[chosen], reduction="sum").item()
        n_tokens += int(chosen.sum())
    if n_tokens == 0:
        raise ValueError("masked perplexity: no maskable token in the blocks")
    return exp_loss(nll_sum / n_tokens)


@torch.inference_mode()
def nsp_accuracy(model: nn.Module, pairs: Dataset, batch_size: int) -> float:
    """Share of sentence pairs (lmforge.training.objectives.nsp_pairs) whose next-sentence label the model
    (BertForPreTraining) predicts."""
    model.eval()
    correct = 0
    for start in range(0, len(pairs), batch_size):
        rows = pairs[start : start + batch_size]
        ids = torch.tensor(rows["input_ids"])
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids),
                    token_type_ids=torch.tensor(rows["token_type_ids"]))
        predicted = out.seq_relationship_logits.argmax(-1)
        correct += int((predicted == torch.tensor(rows["next_sentence_label"])).sum())
    return correct / len(pairs)


@torch.inference_mode()
def label_log_probs(model: nn.Module, prompt_ids: Sequence[Sequence[int]], label_token_ids: Sequence[int],
                    batch_size: int, progress: Callable[[int], object] | None = None) -> torch.Tensor:
    """(n_prompts, n_labels) log-probabilities of each label for each prompt, in the order of `prompt_ids`:
    an LM's next-token log-probability (over the whole vocabulary) of each label token after the prompt, or
    a classifier's (logits of shape (batch, labels)) over its labels. `progress(n)` is called after each batch."""
    if not prompt_ids:
        raise ValueError("need at least one prompt")
    model.eval()
    candidates = torch.tensor(list(label_token_ids), dtype=torch.long)
    out = torch.empty(len(prompt_ids), len(candidates))
    # Batching prompts of similar length wastes less compute on padding; the order does not matter.
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        ids, mask = pad_right([prompt_ids[i] for i in idx], pad_id_of(model))
        logits = _logits(model, ids, mask)
        if logits.dim() == 2:  # a classifier: one row of label logits per prompt
            out[idx] = logits.log_softmax(dim=-1)
        else:
            last = mask.sum(dim=1) - 1  # the last real position of each right-padded prompt
            out[idx] = logits[torch.arange(len(idx)), last].log_softmax(dim=-1)[:, candidates]
        if progress is not None:
            progress(len(idx))
    return out


def task_correct(model: nn.Module, prompt_ids: Sequence[Sequence[int]], labels: Sequence[int],
                 label_token_ids: Sequence[int], batch_size: int) -> list[bool]:
    """Per prompt, in the order of `prompt_ids`: whether its most likely label is the right one (among the
    label tokens only, for an LM; the classifier's own prediction, for a classifier). The paired comparisons
    of lmforge.evaluation.statistics need these, not only their mean."""
    if len(prompt_ids) != len(labels) or not labels:
        raise ValueError(f"need as many prompts as labels, and at least one: "
                         f"{len(prompt_ids)} prompts, {len(labels)} labels")
    predicted = label_log_probs(model, prompt_ids, label_token_ids, batch_size).argmax(dim=-1)
    return (predicted == torch.tensor(list(labels))).tolist()


def task_accuracy(model: nn.Module, prompt_ids: Sequence[Sequence[int]], labels: Sequence[int],
                  label_token_ids: Sequence[int], batch_size: int) -> float:
    """Fraction of prompts whose most likely label is the right one (`task_correct`)."""
    correct = task_correct(model, prompt_ids, labels, label_token_ids, batch_size)
    return sum(correct) / len(correct)


def _weight_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of every weight-like tensor, each stored tensor once: the float parameters, and
    the packed int8 weight and bias of dynamic-quantized Linear modules, which are not parameters."""
    seen: set[int] = set()
    tied_output = None
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        tied_output = output if isinstance(output, nnqd.Linear) else None
    for module_name, module in model.named_modules():
        prefix = f"{module_name}." if module_name else ""
        if isinstance(module, nnqd.Linear):
            # A tied output embedding quantized into its own int8 copy is still the one embedding
            # parameter: count only its bias, so that counts match the fp32 source.
            if module is not tied_output:
                yield prefix + "weight", module.weight().dequantize()
            if module.bias() is not None:
                yield prefix + "bias", module.bias()
            continue
        for name, tensor in module.named_parameters(recurse=False):
            if id(tensor) not in seen:  # tied parameters are one tensor
                seen.add(id(tensor))
                yield prefix + name, tensor


def _onnx_counts(model) -> dict[str, int]:
    """The same counts from an ONNX model's weight initializers (int8: a value at the zero point is a zero)."""
    total = non_embedding = nonzero = 0
    for _, values, zero_point, embedding in model.weight_arrays():
        total += values.size
        nonzero += int(np.count_nonzero(values != zero_point))
        non_embedding += 0 if embedding else values.size
    return {"parameters": total, "non_embedding_parameters": non_embedding, "nonzero_parameters": nonzero}


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total, non-embedding (without wte / wpe / embed_tokens) and non-zero parameters, int8 weights included."""
    if hasattr(model, "weight_arrays"):  # an ONNX model (lmforge.compression.onnx_int8.OnnxModel)
        return _onnx_counts(model)
    total = non_embedding = nonzero = 0
    with torch.inference_mode():
        for name, tensor in _weight_tensors(model):
            n = tensor.numel()
            total += n
            nonzero += int(torch.count_nonzero(tensor))
            if not any(part in EMBEDDING_NAMES for part in name.split(".")):
                non_embedding += n
    return {"parameters": total, "non_embedding_parameters": non_embedding, "nonzero_parameters": nonzero}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Fix the intra-op thread count for a measurement, and restore it afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _random_ids(batch: int, seq_len: int, vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, seq_len), generator=generator)
    return ids, torch.ones_like(ids)


def time_ms(fn: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    """Wall time in ms of each of `runs` calls of `fn`, after `warmup` untimed calls: the one timer of lmforge
    (evaluate's latency and throughput, quantize's per-review times, the benchmarks)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


@torch.inference_mode()
def latency(model: nn.Module, seq_len: int, warmup: int, runs: int, vocab_size: int,
            threads: int = 1, seed: int = 0) -> dict[str, float]:
    """p50 / p90 wall time in ms of one full forward pass at batch 1 over `seq_len` tokens."""
    model.eval()
    ids, mask = _random_ids(1, seq_len, vocab_size, seed)
    with torch_threads(threads):
        times = time_ms(lambda: model(input_ids=ids, attention_mask=mask), runs, warmup)
    p50, p90 = np.percentile(times, [50, 90])
    return {"p50_ms": float(p50), "p90_ms": float(p90)}


@torch.inference_mode()
def throughput(model: nn.Module, batch: int, seq_len: int, runs: int, vocab_size: int,
               threads: int = 1, seed: int = 0) -> float:
    """Tokens per second processed by full forward passes over (batch, seq_len), after one warm-up."""
    model.eval()
    ids, mask = _random_ids(batch, seq_len, vocab_size, seed)
    with torch_threads(threads):
        elapsed = sum(time_ms(lambda: model(input_ids=ids, attention_mask=mask), runs)) / 1000
    return batch * seq_len * runs / elapsed


def measure(model: nn.Module, val: ValidationData, batch_size: int = 16) -> dict[str, float | None]:
    """Validation accuracy and perplexities of `model` (left on the CPU, in eval mode), what a compression
    stage compares with the teacher (lmforge.evaluation.gate); a diverged model's perplexity is inf, a
    classifier's None (label logits only)."""
    def ppl(blocks: list[list[int]]) -> float:
        try:
            return round(perplexity(model, blocks, batch_size), 4)
        except OverflowError:
            return math.inf

    if isinstance(model, nn.Module):  # an ONNX Runtime session has no device to move
        model.cpu()  # the Trainer may have left it on a GPU; these measurements build CPU tensors
    accuracy = task_accuracy(model, val.prompts, val.labels, val.label_token_ids, batch_size)
    if is_classifier(model):
        return {"accuracy": round(accuracy, 4), "ppl_general": None, "ppl_domain": None}
    return {"accuracy": round(accuracy, 4), "ppl_general": ppl(val.general), "ppl_domain": ppl(val.domain)}
