"""Model building and the training losses: the student's shape and init, KD's effect, padding."""

import pytest
import torch
from datasets import Dataset
from transformers import GPT2Config, GPT2LMHeadModel, TrainingArguments

from lmforge.compression.calibration import calibrate
from lmforge.config import KDConfig, ModelConfig, StudentConfig
from lmforge.errors import ConfigError
from lmforge.modeling.arch import most_influential_blocks
from lmforge.modeling.build import build_model, build_student, non_embedding_parameters, teacher_layer_map
from lmforge.training.collate import PadCollator
from lmforge.training.distill import DistillationTrainer
from lmforge.training.losses import IGNORE_INDEX, distillation_loss, kd_loss, lm_loss

TEACHER = ModelConfig(arch="gpt2", init="scratch", name_or_path=None, gguf_file=None, n_layer=4, n_head=2,
                      n_embd=32, n_positions=32, dropout=0.0)


def teacher_model(seed: int = 0) -> GPT2LMHeadModel:
    return build_model(TEACHER, vocab_size=50, eos_token_id=0, seed=seed)


def student_config(n_head: int | None = None, n_embd: int | None = None) -> StudentConfig:
    return StudentConfig(n_layer=2, n_head=n_head, n_embd=n_embd, init="teacher", name_or_path=None,
                         layer_selection="even", calibration_samples=8)


def test_model_is_built_from_config_with_the_tokenizer_vocabulary():
    model = teacher_model()
    assert (model.config.n_layer, model.config.n_embd, model.config.vocab_size) == (4, 32, 50)
    assert model.lm_head.weight is model.transformer.wte.weight  # tied, as GPT-2


def test_initial_weights_are_a_function_of_the_seed():
    """A rerun, and a resumed run, must start from the same model: nothing random may escape the seed."""
    torch.manual_seed(123)  # whatever the global RNG was left at
    first = teacher_model(seed=7).state_dict()
    torch.rand(5)
    again = teacher_model(seed=7).state_dict()
    other = teacher_model(seed=8).state_dict()
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(first["transformer.h.0.attn.c_attn.weight"], other["transformer.h.0.attn.c_attn.weight"])
    narrow = student_config(n_head=2, n_embd=16)
    a = build_student(teacher_model(), TEACHER, narrow, seed=3).state_dict()
    b = build_student(teacher_model(), TEACHER, narrow, seed=3).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_student_halves_the_layers_and_copies_alternate_teacher_blocks():
    teacher = teacher_model()
    student = build_student(teacher, TEACHER, student_config(), seed=0)
    assert teacher_layer_map(4, 2) == [0, 2]
    for s, t in enumerate([0, 2]):
        for (name, ps), (_, pt) in zip(student.transformer.h[s].named_parameters(),
                                       teacher.transformer.h[t].named_parameters(), strict=True):
            assert torch.equal(ps, pt), name
    assert torch.equal(student.transformer.wte.weight, teacher.transformer.wte.weight)
    assert non_embedding_parameters(student) <= 0.6 * non_embedding_parameters(teacher)


def test_student_starts_from_the_most_influential_teacher_blocks():
    """Blocks 0 and 2 made identities (zero output projections: output = input, influence 0) must be the
    ones left out, where even spacing would keep exactly them."""
    teacher = teacher_model()
    with torch.no_grad():
        for i in (0, 2):
            for proj in (teacher.transformer.h[i].attn.c_proj, teacher.transformer.h[i].mlp.c_proj):
                proj.weight.zero_()
                proj.bias.zero_()
    blocks = torch.randint(0, 50, (4, 16), generator=torch.Generator().manual_seed(0))
    influence = calibrate(teacher, blocks, batch_size=2).block_influence
    assert influence[0] == pytest.approx(0.0, abs=1e-6) and influence[2] == pytest.approx(0.0, abs=1e-6)
    layer_map = most_influential_blocks(influence, 2)
    assert layer_map == [1, 3] and teacher_layer_map(4, 2) == [0, 2]
    student = build_student(teacher, TEACHER, student_config(), seed=0, layer_map=layer_map)
    for s, t in enumerate(layer_map):
        assert torch.equal(student.transformer.h[s].mlp.c_fc.weight, teacher.transformer.h[t].mlp.c_fc.weight)
    with pytest.raises(ConfigError, match="expected 2 teacher layers"):
        build_student(teacher, TEACHER, student_config(), seed=0, layer_map=[1, 2, 3])


def test_student_of_another_width_starts_from_scratch():
    teacher = teacher_model()
    student = build_student(teacher, TEACHER, student_config(n_head=2, n_embd=16), seed=0)
    assert student.config.n_embd == 16 and student.config.n_layer == 2


def test_kd_loss_is_zero_for_identical_logits_and_scales_with_t_squared():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11)
    mask = torch.ones(2, 5, dtype=torch.long)
    assert kd_loss(logits, logits, mask, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    other = torch.randn(2, 5, 11)
    assert kd_loss(other, logits, mask, 1.0).item() > 0
    # it is T^2 times the KL divergence of the temperature-softened next-token distributions
    reference = torch.nn.functional.kl_div(torch.log_softmax(other[:, :-1] / 4.0, -1),
                                           torch.log_softmax(logits[:, :-1] / 4.0, -1),
                                           log_target=True, reduction="sum") / 8
    assert kd_loss(other, logits, mask, 4.0).item() == pytest.approx(16 * reference.item(), rel=1e-5)
    # padding positions do not count
    padded = mask.clone()
    padded[:, 3:] = 0
    changed = other.clone()
    changed[:, 3:] += 100.0
    assert kd_loss(changed, logits, padded, 2.0).item() == pytest.approx(kd_loss(other, logits, padded, 2.0).item())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_chunked_distillation_losses_equal_the_plain_ones_in_value_and_gradient(family):
    """The memory-bounded KD + CE (chunks of positions, teacher logits from its hidden state) is exact."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if family == "gpt2":
        teacher = teacher_model()
    else:
        teacher = LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                               hidden_size=32, intermediate_size=64, vocab_size=50,
                                               bos_token_id=0, eos_token_id=0, pad_token_id=0)).eval()
    ids = torch.randint(1, 50, (3, 12))
    mask = torch.ones_like(ids)
    mask[2, 9:] = 0  # a padded example
    labels = ids.masked_fill(mask == 0, IGNORE_INDEX)
    labels[1, :-1] = IGNORE_INDEX  # a task example: only its last token is a target
    with torch.no_grad():
        teacher_logits = teacher(input_ids=ids, attention_mask=mask).logits
        hidden = teacher.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
    head = teacher.get_output_embeddings()

    plain_logits = torch.randn(3, 12, 50, requires_grad=True)
    chunked_logits = plain_logits.detach().clone().requires_grad_(True)
    kd, ce = kd_loss(plain_logits, teacher_logits, mask, 2.0), lm_loss(plain_logits, labels)
    # 3 x 50 elements per chunk: one position at a time, eleven chunks
    loss, kd_chunked, ce_chunked = distillation_loss(chunked_logits, hidden, head, labels, mask, 2.0, 0.7, 0.3,
                                                     chunk_elements=150)
    assert kd_chunked.item() == pytest.approx(kd.item(), rel=1e-5)
    assert ce_chunked.item() == pytest.approx(ce.item(), rel=1e-5)
    assert loss.item() == pytest.approx((0.7 * kd + 0.3 * ce).item(), rel=1e-5)
    (0.25 * (0.7 * kd + 0.3 * ce)).backward()  # a scaled loss, as under gradient accumulation
    (0.25 * loss).backward()
    assert torch.allclose(plain_logits.grad, chunked_logits.grad, atol=1e-7)
    assert not head.weight.requires_grad or head.weight.grad is None  # the teacher is not trained


def test_lm_loss_is_hf_loss_for_blocks_and_weighs_every_example_equally():
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=30, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    blocks = torch.randint(0, 30, (3, 8))
    logits = model(input_ids=blocks).logits
    assert lm_loss(logits, blocks).item() == pytest.approx(model(input_ids=blocks, labels=blocks).loss.item(), rel=1e-5)
    # a task example trains one token; it weighs as much as a whole block in the mean
    task = blocks.clone()
    task[1, :-1] = IGNORE_INDEX
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 30), blocks[:, 1:].reshape(-1),
                                            reduction="none").view(3, 7)
    expected = (nll[0].mean() + nll[1, -1] + nll[2].mean()) / 3
    assert lm_loss(logits, task).item() == pytest.approx(expected.item(), rel=1e-5)


def test_pad_collator_masks_padding_out_of_attention_and_loss():
    batch = PadCollator(pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": [IGNORE_INDEX, IGNORE_INDEX, 7]},
                                         {"input_ids": [8], "labels": [8]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 7], [8, IGNORE_INDEX, IGNORE_INDEX]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]


def distill_steps(tmp_path, alpha_kd: float, teacher: GPT2LMHeadModel) -> GPT2LMHeadModel:
    torch.manual_seed(1)
    student = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 50, (32, 12), generator=g).tolist()
    args = TrainingArguments(output_dir=str(tmp_path / f"kd{alpha_kd}"), max_steps=4, per_device_train_batch_size=8,
                             learning_rate=1e-2, report_to="none", save_strategy="no", use_cpu=True,
                             remove_unused_columns=False, seed=0, logging_steps=2, disable_tqdm=True)
    trainer = DistillationTrainer(model=student, args=args, data_collator=PadCollator(0),
                                  train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
                                  teacher=teacher, kd=KDConfig(temperature=2.0, alpha_kd=alpha_kd, alpha_ce=1.0))
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "kd_loss" in entry]
    assert logged and all(entry["kd_loss"] > 0 and entry["ce_loss"] > 0 for entry in logged)
    return student


def test_kd_changes_what_the_student_learns_and_leaves_the_teacher_untouched(tmp_path):
    teacher = teacher_model(seed=3)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    with_kd = distill_steps(tmp_path, alpha_kd=1.0, teacher=teacher)
    without_kd = distill_steps(tmp_path, alpha_kd=0.0, teacher=teacher)
    differs = [not torch.equal(a, b) for a, b in zip(with_kd.parameters(), without_kd.parameters(), strict=True)]
    assert any(differs)
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())


def hidden_distance(student, teacher, layer_map: list[int], ids: torch.Tensor) -> float:
    """Mean 1 - cos between each student block's output and its teacher block's (before the final norm)."""
    from lmforge.training.distill import BlockOutputs

    outputs = BlockOutputs(student, list(range(len(layer_map)))), BlockOutputs(teacher, layer_map)
    for model, blocks in zip((student, teacher), outputs, strict=True):
        blocks.active = True
        with torch.no_grad():
            model(input_ids=ids)
        blocks.active = False
    s, t = (blocks.take() for blocks in outputs)
    return sum(1 - torch.cosine_similarity(a, b, dim=-1).mean().item() for a, b in zip(s, t, strict=True)) / len(s)


def hidden_kd_steps(tmp_path, teacher, student, alpha_hidden: float, hidden_loss: str):
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(1, 50, (32, 12), generator=g).tolist()
    args = TrainingArguments(output_dir=str(tmp_path / f"hidden{alpha_hidden}"), max_steps=6,
                             per_device_train_batch_size=8, learning_rate=1e-2, report_to="none", save_strategy="no",
                             use_cpu=True, remove_unused_columns=False, seed=0, logging_steps=3, disable_tqdm=True)
    trainer = DistillationTrainer(model=student, args=args, data_collator=PadCollator(0),
                                  train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
                                  teacher=teacher, kd=KDConfig(temperature=2.0, alpha_kd=0.5, alpha_ce=0.5),
                                  alpha_hidden=alpha_hidden, hidden_loss=hidden_loss)
    trainer.train()
    return [entry.get("hidden_loss") for entry in trainer.state.log_history if "kd_loss" in entry]


@pytest.mark.parametrize("hidden_loss", ["mse", "cosine"])
def test_hidden_state_kd_brings_the_students_blocks_closer_to_the_teachers(tmp_path, hidden_loss):
    teacher = teacher_model(seed=3)
    ids = torch.randint(1, 50, (8, 12), generator=torch.Generator().manual_seed(5))
    distance = {}
    for alpha in (0.0, 5.0):
        student = build_student(teacher, TEACHER, student_config(), seed=0)  # the same start: teacher blocks 0, 2
        logged = hidden_kd_steps(tmp_path, teacher, student, alpha, hidden_loss)
        assert all((value is not None and value > 0) == (alpha > 0) for value in logged), logged
        distance[alpha] = hidden_distance(student, teacher, teacher_layer_map(4, 2), ids)
    assert distance[5.0] < distance[0.0]


def test_a_narrower_student_is_matched_through_a_projection_that_is_not_saved(tmp_path):
    from lmforge.training.distill import attach_hidden_projection, detach_hidden_projection

    teacher = teacher_model(seed=3)
    student = build_student(teacher, TEACHER, student_config(n_head=2, n_embd=16), seed=0)
    assert attach_hidden_projection(student, teacher)
    before = [p.detach().clone() for p in student.hidden_projection.parameters()]
    assert [p.shape for p in before] == [torch.Size([32, 16])] * 2  # student width 16 -> teacher width 32
    logged = hidden_kd_steps(tmp_path, teacher, student, 1.0, "mse")
    assert logged and all(value > 0 for value in logged)
    assert all(not torch.equal(a, b) for a, b in zip(before, student.hidden_projection.parameters(), strict=True))
    detach_hidden_projection(student)
    assert not any(key.startswith("hidden_projection") for key in student.state_dict())
    assert not attach_hidden_projection(build_student(teacher, TEACHER, student_config(), seed=0), teacher)


def test_cached_kd_reads_an_lm_students_label_words_at_the_last_real_position():
    from lmforge.training.distill import label_logits

    logits = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)  # (batch, positions, vocabulary)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # the first prompt is right-padded
    picked = label_logits(logits, mask, [5, 1])
    assert picked.tolist() == [logits[0, 2, [5, 1]].tolist(), logits[1, 3, [5, 1]].tolist()]
    classifier = torch.randn(2, 3)
    assert label_logits(classifier, mask, None) is classifier  # a classifier's logits are the labels' already
