"""Losses over next-token positions, averaged per example.

A mixture batch holds LM blocks (every token is a target) and task examples (only the label word
is). A token-level mean would give a task example 1/63 of a block's weight, whatever the mixture
says; averaging within each example first makes the mixture weights the share of the gradient
each source gets. For equal-length LM blocks both means are the same, so perplexity is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label value the loss skips


def per_example_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each example's masked positions, then over the examples that have any."""
    mask = mask.to(values.dtype)
    counts = mask.sum(-1)
    has_any = counts > 0
    return ((values * mask).sum(-1)[has_any] / counts[has_any]).mean()


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next token, averaged per example (labels are the inputs, -100 = skip)."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none").view_as(targets)
    return per_example_mean(nll, targets != IGNORE_INDEX)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, attention_mask: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T) at every position whose next token is real, averaged per example.

    The T^2 keeps the soft targets' gradients on the scale of the hard ones (Hinton et al., 2015).
    """
    log_p_student = F.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits[:, :-1].float() / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return temperature**2 * per_example_mean(kl, attention_mask[:, 1:])
