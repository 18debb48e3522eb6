"""Distil the teacher into a smaller student (KD on the teacher's outputs + hard-label CE).

    dvc repro distill            # or, from the repository root: python stages/distill.py

The recipe: check the student's shape -> make the student (from the teacher's layers of most influence, fresh, or
a pretrained model of any family with its own tokenizer: student.init) -> distil (KD) on the transfer set with the
teacher's cached outputs (distill.data=transfer) or on the mixture with the teacher run online (mixture) -> gate
against the teacher -> save -> metrics.
"""

from __future__ import annotations

import logging
from typing import Any

from lmforge import paths, stage
from lmforge.config import Params, student_shape
from lmforge.errors import require

PARAMS = ("seed", "model", "student", "distill")
log = logging.getLogger("lmforge.distill")


def main(params: Params) -> dict[str, Any]:
    # imported once stage.run has validated the parameters: importing torch and transformers takes seconds,
    # and a bad parameter should fail at once
    from lmforge.data import processed as data
    from lmforge.evaluation import metrics as measures
    from lmforge.modeling.build import build_student, non_embedding_parameters
    from lmforge.modeling.checks import load_hf
    from lmforge.modeling.family import head_of
    from lmforge.modeling.pretrained import load_pretrained_student
    from lmforge.training.distill import DistillationTrainer, attach_hidden_projection, detach_hidden_projection
    from lmforge.training.runner import fingerprint, fit, model_writer

    cfg, seed = params.distill, params.seed
    source, output = paths.model_dir("teacher"), paths.model_dir("student")
    cached = cfg.data == "transfer"

    # check: a student larger than its teacher fails here, before anything is loaded
    if params.student.init != "pretrained":
        student_shape(params.model, params.student)

    # load inputs: the teacher and the data
    teacher = load_hf(source)  # safetensors only; a truncated file or a non-finite weight stops here
    inputs = [source, paths.PROCESSED] + ([paths.TRANSFER / "examples"] if cached else [])
    for path in inputs[1:]:
        require(path)  # names the stage to rerun
    label_ids = data.task_meta()["label_token_ids"]

    # make the student: from the teacher layers of most influence, fresh, or a pretrained model of any family
    layer_map, influence = None, []
    if params.student.init == "pretrained":
        student, tokenizer = load_pretrained_student(params.student.name_or_path, len(label_ids), seed)
    else:
        tokenizer = data.load_tokenizer()
        layer_map, influence = student_layer_map(teacher, params)
        student = build_student(teacher, params.model, params.student, seed=seed, layer_map=layer_map)
    own = data.own_tokenizer(tokenizer)  # None: the teacher's tokenizer, the stored token ids serve
    ratio = non_embedding_parameters(student) / non_embedding_parameters(teacher)
    log.info("student: %s, %d layers, %d wide, %.1f%% of the teacher's non-embedding parameters%s",
             type(student).__name__, student.config.num_hidden_layers, student.config.hidden_size, 100 * ratio,
             ", its own tokenizer" if own is not None else "")

    # distil on the transfer set (the teacher's cached outputs) or on the mixture (the teacher online)
    head = head_of(teacher)  # the teacher's head, set by finetune's task.head, decides the examples' form
    if cached:
        train_set = data.transfer_train_set(tokenizer)
        log.info("distill: %d transfer-set examples with the teacher's cached outputs (the teacher does not run)",
                 len(train_set))
    else:
        train_set = data.mixture_train_set(cfg.mixture, cfg.max_steps * cfg.batch_size * cfg.grad_accum_steps,
                                           seed, head=head)
    # a classifier student has no LM head: its validation loss is the task's alone
    eval_sets = data.eval_sets(cfg.eval_max_examples, with_task=True, head=head_of(student),
                               with_lm=head_of(student) == "lm", tokenizer=own)
    run_id = fingerprint({"seed": seed, "student": params.student, "distill": cfg}, inputs)
    projected = cfg.alpha_hidden > 0 and attach_hidden_projection(student, teacher)
    metrics = fit("distill", student, tokenizer, train_set, eval_sets, cfg, seed, run_id, None,
                  trainer_cls=DistillationTrainer, teacher=None if cached else teacher, kd=cfg.kd,
                  alpha_hidden=cfg.alpha_hidden, hidden_loss=cfg.hidden_loss, layer_map=layer_map,
                  label_token_ids=label_ids)
    detach_hidden_projection(student)  # a training aid, not part of the student
    metrics["data"] = cfg.data
    metrics["train_examples"] = len(train_set)
    metrics["non_embedding_parameter_ratio"] = round(ratio, 4)
    metrics["student_init"] = {"init": params.student.init, "name_or_path": params.student.name_or_path,
                               "teacher_layers": layer_map, "block_influence": influence}
    metrics["hidden_kd"] = {"alpha_hidden": cfg.alpha_hidden, "loss": cfg.hidden_loss, "projection": projected}

    # gate against the teacher, each reading the validation task in its own tokenizer
    def measure() -> tuple[dict, dict]:
        return (measures.measure(student, data.validation_data(cfg.eval_max_examples, own)),
                measures.measure(teacher, data.validation_data(cfg.eval_max_examples)))

    metrics["gate"] = stage.gate("distill", cfg.gate, output, measure)

    # save (the student's own tokenizer with it), metrics
    stage.save(output, "distill", model_writer(student, "distill"), tokenizer=tokenizer, metrics=metrics)
    stage.write_metrics(paths.METRICS / "distill.json", metrics)
    return metrics


def student_layer_map(teacher, params: Params) -> tuple[list[int] | None, list[float]]:
    """The teacher layers the student starts from, and the measured block influence they were chosen by.

    (None, []) when no layer is copied (a narrower student) or `even` spacing is asked for."""
    from lmforge.compression.calibration import calibrate  # torch: imported after validation, as in main
    from lmforge.data.processed import calibration_blocks
    from lmforge.modeling.arch import most_influential_blocks

    cfg = params.student
    n_layer, _, n_embd = student_shape(params.model, cfg)
    if cfg.init != "teacher" or n_embd != params.model.n_embd or cfg.layer_selection == "even":
        return None, []
    blocks = calibration_blocks(cfg.calibration_samples, params.seed)
    influence = calibrate(teacher, blocks, batch_size=8).block_influence
    layer_map = most_influential_blocks(influence, n_layer)
    log.info("block influence of the teacher's layers on %d calibration blocks: %s", len(blocks),
             " ".join(f"{b:.3f}" for b in influence))
    return layer_map, [round(b, 5) for b in influence]


if __name__ == "__main__":
    stage.run(lambda: main(stage.params(PARAMS)))
