"""Losses over next-token (or masked-token) positions, averaged per example.

A mixture batch holds LM blocks (every token is a target) and task examples (only the label word
is). A token-level mean would give a task example 1/63 of a block's weight, whatever the mixture
says; averaging within each example first makes the mixture weights the share of the gradient
each source gets. For equal-length LM blocks both means are the same, so perplexity is unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmforge.data.examples import IGNORE_INDEX


def per_example(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of each row's masked values, whether the row has any): a row without targets contributes nothing."""
    mask = mask.to(values.dtype)
    counts = mask.sum(-1)
    return (values * mask).sum(-1) / counts.clamp(min=1), counts > 0


def per_example_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each example's masked positions, then over the examples that have any."""
    rows, has_any = per_example(values, mask)
    return rows[has_any].mean()


def token_nll(logits: torch.Tensor, labels: torch.Tensor, *, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row mean NLL of the targets (labels, -100 = skip): the next token (causal) or the masked token itself
    (encoder), and whether the row has any."""
    if causal:
        logits, labels = logits[:, :-1], labels[:, 1:]
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none").view_as(labels)
    return per_example(nll, labels != IGNORE_INDEX)


def masked_positions_nll(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_nll` of an MLM head run only on the masked positions (~15% of them): the vocabulary
    projection is most of a small encoder's replay cost, and the other positions have no target."""
    picked = labels != IGNORE_INDEX
    nll = F.cross_entropy(head(hidden[picked]).float(), labels[picked], reduction="none")
    rows = picked.nonzero()[:, 0]
    counts = picked.sum(-1)
    sums = torch.zeros(labels.size(0), dtype=nll.dtype, device=nll.device).index_add(0, rows, nll)
    return sums / counts.clamp(min=1), counts > 0


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each next token, averaged per example (labels are the inputs, -100 = skip)."""
    rows, has_any = token_nll(logits, labels, causal=True)
    return rows[has_any].mean()


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the masked tokens, averaged per example (labels -100 except at masked positions)."""
    rows, has_any = token_nll(logits, labels, causal=False)
    return rows[has_any].mean()


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, attention_mask: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher_T || student_T) at every position whose next token is real, averaged per example.

    The T^2 keeps the soft targets' gradients on the scale of the hard ones (Hinton et al., 2015).
    """
    log_p_student = F.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits[:, :-1].float() / temperature, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return temperature**2 * per_example_mean(kl, attention_mask[:, 1:])


def hidden_state_loss(student: list[torch.Tensor], teacher: list[torch.Tensor], attention_mask: torch.Tensor,
                      kind: str, projection: torch.nn.ModuleList | None = None) -> torch.Tensor:
    """Layer-wise KD: the distance between each student block's output and its teacher block's, over
    real positions, averaged per example and then over the matched layers.

    `mse` (TinyBERT) compares the states themselves, `cosine` (DistilBERT) their directions (1 - cos);
    a narrower student's states go through `projection[i]` (learned, student width -> teacher width).
    """
    if len(student) != len(teacher):
        raise ValueError(f"hidden-state KD: {len(student)} student layers, {len(teacher)} teacher layers")
    losses = []
    for i, (s, t) in enumerate(zip(student, teacher, strict=True)):
        s = (projection[i](s) if projection is not None else s).float()
        t = t.float()
        if kind == "mse":
            distance = (s - t).pow(2).mean(-1)
        elif kind == "cosine":
            distance = 1 - F.cosine_similarity(s, t, dim=-1)
        else:
            raise ValueError(f"hidden-state KD: unknown loss {kind!r} (mse or cosine)")
        losses.append(per_example_mean(distance, attention_mask))
    return torch.stack(losses).mean()


# Positions x vocabulary entries one chunk of the distillation loss works on (16 MB of fp32 per temporary).
KD_CHUNK_ELEMENTS = 1 << 22


def distillation_loss(student_logits: torch.Tensor, teacher_hidden: torch.Tensor, teacher_head: torch.nn.Module,
                      labels: torch.Tensor, attention_mask: torch.Tensor, temperature: float, alpha_kd: float,
                      alpha_ce: float, chunk_elements: int = KD_CHUNK_ELEMENTS,
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, kd, ce) with loss = alpha_kd * `kd_loss` + alpha_ce * `lm_loss`, in bounded memory.

    With a real vocabulary (49k-50k tokens) the logits are the memory and time hot spot: the plain
    losses hold the teacher's logits and about five more batch x sequence x vocabulary tensors (two
    log-softmaxes, their exponent, difference and product) until the backward pass, and the backward
    pass makes as many again. Here the teacher's logits are made from its last hidden state a chunk of
    positions at a time, and each chunk's loss terms and their gradient (closed form: softmax minus
    target) are computed together, the gradient written into one buffer the size of the student's
    logits. So besides those logits only that buffer and one chunk's temporaries are alive, and
    nothing is recomputed (the approach of Liger Kernel's fused losses). The values and gradients
    equal the plain losses' (tests/test_training.py); unlike a top-k approximation of the teacher's
    distribution, nothing in the objective changes. `kd` and `ce` are returned detached, for logging.
    """
    loss, kd, ce = _DistillationLoss.apply(student_logits, teacher_hidden, teacher_head.weight,
                                           getattr(teacher_head, "bias", None), labels, attention_mask,
                                           temperature, alpha_kd, alpha_ce, chunk_elements)
    return loss, kd, ce


def _example_weights(mask: torch.Tensor) -> torch.Tensor:
    """Each position's weight in a per-example mean (`per_example_mean`): 1 / (its example's count * examples)."""
    mask = mask.float()
    counts = mask.sum(-1, keepdim=True)
    examples = (counts > 0).sum().clamp(min=1)
    return torch.where(counts > 0, mask / counts.clamp(min=1), 0.0) / examples


class _DistillationLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, teacher_hidden, head_weight, head_bias, labels, attention_mask, temperature,
                alpha_kd, alpha_ce, chunk_elements):
        batch, length, vocab = logits.shape
        targets = labels[:, 1:]
        w_kd = _example_weights(attention_mask[:, 1:])  # KD: every position whose next token is real
        w_ce = _example_weights(targets != IGNORE_INDEX)  # CE: every position with a target
        grad = torch.zeros_like(logits) if ctx.needs_input_grad[0] else None
        kd = logits.new_zeros((), dtype=torch.float32)
        ce = logits.new_zeros((), dtype=torch.float32)
        step = max(1, chunk_elements // (batch * vocab))
        for start in range(0, length - 1, step):
            window = slice(start, min(start + step, length - 1))
            z = logits[:, window].float()
            # a contiguous 2-D input: on a strided 3-D slice F.linear falls back to bmm, ~4x slower than mm
            hidden = teacher_hidden[:, window].reshape(-1, teacher_hidden.size(-1))
            teacher = F.linear(hidden, head_weight, head_bias).float().view(batch, -1, vocab)
            log_p = F.log_softmax(teacher / temperature, dim=-1)
            log_q = F.log_softmax(z / temperature, dim=-1)
            p = log_p.exp()
            kd += ((p * (log_p - log_q)).sum(-1) * w_kd[:, window]).sum()
            log_q1 = log_q if temperature == 1.0 else F.log_softmax(z, dim=-1)
            target = targets[:, window].clamp(min=0).unsqueeze(-1)
            ce -= (log_q1.gather(-1, target).squeeze(-1) * w_ce[:, window]).sum()
            if grad is not None:
                # d(T^2 KL)/dz = T (q_T - p_T);  d(CE)/dz = q - onehot(target)
                g = log_q.exp_().sub_(p).mul_(alpha_kd * temperature * w_kd[:, window, None])
                q1 = log_q1.exp() if temperature != 1.0 else torch.softmax(z, dim=-1)
                q1.scatter_add_(-1, target, torch.full_like(target, -1.0, dtype=q1.dtype))
                g += q1.mul_(alpha_ce * w_ce[:, window, None])
                grad[:, window] = g.to(grad.dtype)
        kd = temperature**2 * kd
        if grad is not None:
            ctx.save_for_backward(grad)
        loss = alpha_kd * kd + alpha_ce * ce
        return loss.to(logits.dtype), kd.detach(), ce.detach()

    @staticmethod
    def backward(ctx, grad_loss, _grad_kd, _grad_ce):
        (grad,) = ctx.saved_tensors
        if not torch.equal(grad_loss, torch.ones_like(grad_loss)):  # e.g. 1 / gradient accumulation steps
            grad = grad.mul_(grad_loss)  # in place: the buffer is this graph's alone (no retain_graph reuse)
        return grad, None, None, None, None, None, None, None, None, None


def class_distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, class_labels: torch.Tensor,
                            temperature: float, alpha_kd: float, alpha_ce: float,
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, kd, ce) of a classifier student (task.head=classifier): T^2 * KL between the label distributions
    on every row (task examples and the mixture's unlabelled text alike: the teacher labels it), plus the
    cross-entropy of the true label on the rows that have one (class_labels -100 elsewhere)."""
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)
    kd = temperature**2 * (log_p.exp() * (log_p - log_q)).sum(-1).mean()
    labelled = class_labels != IGNORE_INDEX
    ce = (F.cross_entropy(student_logits[labelled].float(), class_labels[labelled]) if labelled.any()
          else student_logits.sum() * 0.0)
    return alpha_kd * kd + alpha_ce * ce, kd.detach(), ce.detach()
