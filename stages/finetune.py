"""Adapt the general model to the domain and the task, with general replay: the teacher.

    dvc repro finetune            # or, from the repository root: python stages/finetune.py

The recipe: load models/general -> (task.head=classifier: turn it into a sequence classifier whose LM head
serves the replay only) -> train on the mixture of domain text, task examples and general replay -> save (in
`fit`) -> metrics.
"""

from __future__ import annotations

from typing import Any

from lmforge import paths, stage
from lmforge.config import Params

PARAMS = ("seed", "task", "finetune")


def main(params: Params) -> dict[str, Any]:
    # imported once stage.run has validated the parameters: importing torch and transformers takes seconds,
    # and a bad parameter should fail at once
    from lmforge.data import processed as data
    from lmforge.modeling.checks import load_hf
    from lmforge.training.objectives import attach_replay_head, detach_replay_head, to_classifier
    from lmforge.training.runner import fingerprint, fit

    cfg, head, seed = params.finetune, params.task.head, params.seed
    source = paths.model_dir("general")

    # load inputs: first the model, so a missing, truncated or NaN input stops here
    model = load_hf(source)
    tokenizer = data.load_tokenizer()
    if head == "classifier":
        lm = model
        model = to_classifier(lm, data.task_meta()["label_words"], tokenizer.pad_token_id, seed)
        attach_replay_head(model, lm)
        del lm
    train_set = data.mixture_train_set(cfg.mixture, cfg.max_steps * cfg.batch_size * cfg.grad_accum_steps, seed,
                                       head=head)
    eval_sets = data.eval_sets(cfg.eval_max_examples, with_task=True, head=head)

    # train; `fit` saves models/teacher without the replay head (no gate: this model is the reference)
    run_id = fingerprint({"seed": seed, "finetune": cfg, "task": params.task}, [source, paths.PROCESSED])
    metrics = fit("finetune", model, tokenizer, train_set, eval_sets, cfg, seed, run_id, paths.model_dir("teacher"),
                  finalize=detach_replay_head)

    stage.write_metrics(paths.METRICS / "finetune.json", metrics)
    return metrics


if __name__ == "__main__":
    stage.run(lambda: main(stage.params(PARAMS)))
