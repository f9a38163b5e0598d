"""Contrastive distillation losses: the teacher's answer against the student's (sequence level), and each
sequence's representation against the others in its batch (representation level). Pure, typed functions.

Sequence level (DPO, Rafailov et al. 2023, Eq. 7, with the *teacher* as the reference model, as in
contrastive/preference distillation: DistiLLM-2, Ko et al. 2025, contrasts teacher- and student-generated answers).
For a prompt x, the teacher's answer y_w is "chosen" and the student's own answer y_l "rejected"::

    margin = beta * [(log p_s(y_w|x) - log p_t(y_w|x)) - (log p_s(y_l|x) - log p_t(y_l|x))]
    L_pref = -log sigmoid(margin)          mean over the batch; ln 2 when y_w == y_l (margin 0)

The student is pushed to raise its likelihood of the teacher's answer *relative to the teacher's own* and to
lower it on its own answer: it learns what separates its text from the teacher's, not just what to imitate.
``log p(y|x)`` is :func:`sequence_logprobs`, the sum over the answer tokens.

Representation level (InfoNCE, van den Oord et al. 2018, Eq. 4; contrastive representation distillation, CRD:
Tian et al. 2020; CoDIR: Sun et al. 2020). Pooled, projected student states ``z_s`` ``[B, D]`` and teacher states
``z_t`` ``[B, D]`` are L2-normalised; row i's positive is teacher row i, the other rows are negatives::

    L_nce = CE(softmax(z_s z_t^T / tau), diagonal)        ln B when the rows are unrelated, -> 0 when matched

:func:`retrieval_accuracy` is the share of rows whose nearest teacher row is their own (chance: 1/B).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["sequence_logprobs", "preference_margin", "preference_loss", "masked_mean_pool", "info_nce",
           "retrieval_accuracy"]


def sequence_logprobs(logits: Tensor, labels: Tensor) -> Tensor:
    """Sum of ``log p(label)`` over each row's scored tokens: ``logits`` ``[B, S, V]``, ``labels`` ``[B, S]``
    *unshifted* (position s predicts token s+1; -100 = not scored) -> ``[B]`` (fp32)."""
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(f"logits [B, S, V] and labels [B, S] expected, got {tuple(logits.shape)} and "
                         f"{tuple(labels.shape)}")
    target = labels[:, 1:]
    scored = target != -100
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # [B, S-1, V]
    picked = logp.gather(-1, target.clamp_min(0).unsqueeze(-1)).squeeze(-1)  # [B, S-1]
    return (picked * scored).sum(-1)


def preference_margin(student_chosen: Tensor, student_rejected: Tensor, teacher_chosen: Tensor,
                      teacher_rejected: Tensor, beta: float = 0.1) -> Tensor:
    """``beta * ((s_w - t_w) - (s_l - t_l))`` per row ``[B]``: sequence log-probs (:func:`sequence_logprobs`) of
    the chosen (teacher's) and rejected (student's) answers under the student and the teacher (reference)."""
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    shapes = {tuple(t.shape) for t in (student_chosen, student_rejected, teacher_chosen, teacher_rejected)}
    if len(shapes) != 1 or len(next(iter(shapes))) != 1:
        raise ValueError(f"the four sequence log-probs must each be [B], got shapes {sorted(shapes)}")
    return beta * ((student_chosen - teacher_chosen.detach()) - (student_rejected - teacher_rejected.detach()))


def preference_loss(student_chosen: Tensor, student_rejected: Tensor, teacher_chosen: Tensor,
                    teacher_rejected: Tensor, beta: float = 0.1) -> Tensor:
    """DPO with the teacher as the reference (module doc): ``-log sigmoid(margin)``, mean over the batch (scalar;
    ``ln 2`` when chosen and rejected are the same answer)."""
    return -F.logsigmoid(preference_margin(student_chosen, student_rejected, teacher_chosen, teacher_rejected,
                                           beta)).mean()


def masked_mean_pool(states: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean of ``states`` ``[B, S, H]`` over the positions where ``mask`` ``[B, S]`` is 1 (all when None) ->
    ``[B, H]``."""
    if mask is None:
        return states.mean(1)
    weights = mask.to(states.dtype).unsqueeze(-1)  # [B, S, 1]
    return (states * weights).sum(1) / weights.sum(1).clamp_min(1.0)


def _similarity(student: Tensor, teacher: Tensor) -> Tensor:
    if student.dim() != 2 or student.shape != teacher.shape or student.shape[0] < 2:
        raise ValueError(f"student and teacher must both be [B >= 2, D], got {tuple(student.shape)} and "
                         f"{tuple(teacher.shape)}: in-batch contrast needs other rows as negatives")
    dtype = torch.promote_types(student.dtype, torch.float32)  # at least fp32 (bf16 states are upcast)
    return F.normalize(student.to(dtype), dim=-1) @ F.normalize(teacher.to(dtype), dim=-1).T  # [B, B] cosines


def info_nce(student: Tensor, teacher: Tensor, temperature: float = 0.1) -> Tensor:
    """In-batch InfoNCE (module doc): ``student``, ``teacher`` ``[B, D]`` (pooled and projected to one width; the
    teacher side gets no gradient) -> scalar, the CE of each student row picking its own teacher row."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = _similarity(student, teacher.detach()) / temperature
    return F.cross_entropy(logits, torch.arange(len(logits), device=logits.device))


@torch.no_grad()
def retrieval_accuracy(student: Tensor, teacher: Tensor) -> Tensor:
    """Share of rows ``[B, D]`` whose most similar teacher row (cosine) is their own (scalar; chance = 1/B)."""
    sims = _similarity(student, teacher)
    return (sims.argmax(-1) == torch.arange(len(sims), device=sims.device)).float().mean()
