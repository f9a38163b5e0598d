"""Logit distillation losses and the causal-LM CE as pure, typed functions, with their masking helpers.

Shapes: ``B`` batch, ``S`` sequence, ``V`` vocabulary (49152 for SmolLM2), ``H`` hidden width, ``N`` any number of
leading dims. Every loss returns a scalar: the mean over the *unmasked* positions of a per-position value.

Masking. Each loss takes ``mask`` (``[B, S]``, True/1 where the position counts) and/or ``labels`` (``[B, S]``,
``-100`` where it does not), both aligned with the positions of the logits. For causal-LM logits position ``s``
predicts token ``s + 1``, so labels built from the input must be shifted first: :func:`shift_labels` does that
(the same alignment as trl's GKD trainer, which slices ``labels[:, 1:]`` against ``logits[:, :-1]``).

Logit losses, in fp32, with temperature ``tau`` and ``p^tau = softmax(z / tau)``:
- forward KL (Hinton et al. 2015; Minitron's choice, Muralidharan et al. 2024): KL(p_t^tau || p_s^tau) * tau^2;
- reverse KL: KL(p_s^tau || p_t^tau) * tau^2 (mode seeking);
- generalized JSD(beta) (GKD, Agarwal et al. 2024, Eq. 1; same convention as trl's ``generalized_jsd_loss``):
  with the mixture ``m = beta * p_t + (1 - beta) * p_s``,
  ``JSD(beta) = beta * KL(p_t || m) + (1 - beta) * KL(p_s || m)``; symmetric in (s, t) at beta = 0.5.
  The endpoints are replaced by the limits' directions, as trl does: beta = 0 is exactly the forward KL and
  beta = 1 exactly the reverse KL. We also scale JSD by tau^2 (trl does not) so all three share one scale.
The teacher's logits are constants (no gradient flows into them).

Top-k teacher logits (``top_k=k``): the teacher keeps its k most likely tokens per position and is renormalised
over them. With ``renormalize_student=True`` (this function's default; trl's GOLD trainer convention) the student's
logits are gathered at the same k indices and renormalised too, so the divergence is between two k-way
distributions (valid for every loss) -- but blind to how much mass the student keeps outside the k tokens: in
training that mass is free to grow (a cached top-64 forward-KL run went from perplexity 1,090 to 15,767). With
``renormalize_student=False`` the student keeps its full-vocabulary log-probs at those indices: KL(truncated
teacher || full student), which also pushes student mass off the tail; forward KL only, and what
``DistillConfig`` uses for forward KL unless told otherwise.
With k = V both equal the full loss. The same forward KL from a *cached* top-k teacher (no teacher forward) is
``topk_cached_kl`` in ``cached.py``.

Memory and speed: the logit losses walk over the ``[B*S, V]`` logits in row chunks with a fused gradient
(``_chunks.py`` beside this module). Hidden-state and embedding losses are in ``hidden.py``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ._chunks import _autograd_rows, _check, _into, _kl_rows, _log_probs, _row_mean

LOGIT_LOSSES: tuple[str, ...] = ("forward_kl", "reverse_kl", "jsd")
IGNORE_INDEX = -100


# ----------------------------------------------------------------------------------------------------
# Masks and reductions


def shift_labels(labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Align causal-LM labels with logit positions: ``out[:, s] = labels[:, s + 1]``, ``-100`` at the end.

    ``labels``: ``[B, S]`` token ids or ``-100``; ``attention_mask``: ``[B, S]`` (0 = padding, also ignored).
    Returns ``[B, S]`` (the last position predicts nothing we can check, so it is ``-100``).
    """
    if attention_mask is not None:
        labels = labels.masked_fill(attention_mask == 0, IGNORE_INDEX)
    pad = labels.new_full((*labels.shape[:-1], 1), IGNORE_INDEX)
    return torch.cat([labels[..., 1:], pad], dim=-1)


def resolve_mask(mask: Tensor | None = None, labels: Tensor | None = None) -> Tensor | None:
    """Combine a 0/1 ``mask`` and ``labels != -100`` (both ``[B, S]``) into one bool mask, or None for 'all'."""
    if labels is not None:
        from_labels = labels != IGNORE_INDEX
        mask = from_labels if mask is None else mask.bool() & from_labels
    return None if mask is None else mask.bool()


def masked_mean(per_position: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``per_position`` (``[B, S]``) over positions where ``mask`` (``[B, S]`` bool) is True.

    Masked positions are dropped with ``where`` (not multiplied by 0), so NaN/inf there cannot leak in.
    With no valid position the result is 0 (still differentiable).
    """
    if mask is None:
        return per_position.mean()
    mask = mask.bool()
    total = torch.where(mask, per_position, torch.zeros_like(per_position)).sum()
    return total / mask.sum().clamp_min(1)


# ----------------------------------------------------------------------------------------------------
# Logit losses


def forward_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    renormalize_student: bool = True,
) -> Tensor:
    """KL(p_t^tau || p_s^tau) * tau^2, mean over unmasked positions (Hinton et al. 2015).

    ``student_logits``, ``teacher_logits``: ``[B, S, V]`` (any float dtype; computed in fp32);
    ``mask`` / ``labels``: ``[B, S]`` aligned with the logits. Returns a scalar.
    """
    _check(temperature, top_k, student_logits.shape[-1])

    def per_row(s: Tensor, t: Tensor) -> Tensor:
        s_logp, t_logp = _log_probs(s, t, temperature, top_k, renormalize_student)
        return (t_logp.exp() * (t_logp - s_logp)).sum(-1)

    def closed_form(s: Tensor, t: Tensor, grad: Tensor | None) -> Tensor:
        """Full vocabulary: d KL / d z_s = (p_s - p_t) / tau, written straight into ``grad``."""
        s_logp, t_logp = _log_probs(s, t, temperature)
        t_p = t_logp.exp()
        per = (t_p * t_logp.sub_(s_logp)).sum(-1)
        if grad is not None:
            _into(grad, s_logp.exp_().sub_(t_p), temperature)
        return per

    rows_fn = closed_form if top_k is None else _autograd_rows(per_row)
    return _row_mean(rows_fn, student_logits, teacher_logits, resolve_mask(mask, labels)) * temperature**2


def reverse_kl(
    student_logits: Tensor,
    teacher_logits: Tensor,
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> Tensor:
    """KL(p_s^tau || p_t^tau) * tau^2, mean over unmasked positions. Shapes as :func:`forward_kl`.

    With ``top_k`` both distributions are renormalised over the teacher's top-k tokens.
    """
    _check(temperature, top_k, student_logits.shape[-1])

    def per_row(s: Tensor, t: Tensor) -> Tensor:
        s_logp, t_logp = _log_probs(s, t, temperature, top_k, True)
        return _kl_rows(s_logp, t_logp)

    def closed_form(s: Tensor, t: Tensor, grad: Tensor | None) -> Tensor:
        """Full vocabulary: d KL / d z_s = p_s * (log p_s - log p_t - KL) / tau, written straight into ``grad``."""
        s_logp, t_logp = _log_probs(s, t, temperature)
        p_s = s_logp.exp()
        log_ratio = s_logp.sub_(t_logp)  # log p_s - log p_t (s_logp's memory reused)
        per = (p_s * log_ratio).sum(-1)
        if grad is not None:
            _into(grad, log_ratio.sub_(per[:, None]).mul_(p_s), temperature)
        return per

    rows_fn = closed_form if top_k is None else _autograd_rows(per_row)
    return _row_mean(rows_fn, student_logits, teacher_logits, resolve_mask(mask, labels)) * temperature**2


def generalized_jsd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    beta: float = 0.5,
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> Tensor:
    """Generalized JSD(beta) * tau^2 (GKD, Agarwal et al. 2024; trl's convention, see the module docstring).

    ``m = beta p_t + (1 - beta) p_s``; ``beta KL(p_t || m) + (1 - beta) KL(p_s || m)``;
    beta = 0 -> forward KL, beta = 1 -> reverse KL exactly. Shapes as :func:`forward_kl`.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"jsd beta must be in [0, 1] (0 = forward KL, 1 = reverse KL), got {beta}")
    if beta == 0.0:
        return forward_kl(student_logits, teacher_logits, mask, labels, temperature, top_k)
    if beta == 1.0:
        return reverse_kl(student_logits, teacher_logits, mask, labels, temperature, top_k)
    _check(temperature, top_k, student_logits.shape[-1])

    def per_row(s: Tensor, t: Tensor) -> Tensor:
        s_logp, t_logp = _log_probs(s, t, temperature, top_k, True)
        # log m = logaddexp(log(1 - beta) + log p_s, log(beta) + log p_t): stable, no stack
        log_m = torch.logaddexp(s_logp + math.log(1.0 - beta), t_logp + math.log(beta))
        return beta * _kl_rows(t_logp, log_m) + (1.0 - beta) * _kl_rows(s_logp, log_m)

    return _row_mean(_autograd_rows(per_row), student_logits, teacher_logits, resolve_mask(mask, labels)) * temperature**2


def logit_distillation_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    loss: str = "forward_kl",
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    beta: float = 0.5,
    top_k: int | None = None,
    renormalize_student: bool = True,
) -> Tensor:
    """Dispatch on ``loss`` in :data:`LOGIT_LOSSES`; shapes as :func:`forward_kl`."""
    if loss == "forward_kl":
        return forward_kl(student_logits, teacher_logits, mask, labels, temperature, top_k, renormalize_student)
    if not renormalize_student and top_k is not None:
        raise ValueError("renormalize_student=False is only defined for loss='forward_kl'")
    if loss == "reverse_kl":
        return reverse_kl(student_logits, teacher_logits, mask, labels, temperature, top_k)
    if loss == "jsd":
        return generalized_jsd(student_logits, teacher_logits, beta, mask, labels, temperature, top_k)
    raise ValueError(f"Unknown logit loss {loss!r}; allowed: {', '.join(LOGIT_LOSSES)}")


def causal_lm_loss(logits: Tensor, labels: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Next-token cross-entropy in fp32, mean over predicted tokens (the plain fine-tuning / CE term).

    ``logits``: ``[B, S, V]``; ``labels``: ``[B, S]`` *unshifted* (usually the input ids, ``-100`` = ignore);
    ``attention_mask``: ``[B, S]``. Shifting the labels (not the logits) keeps ``logits.flatten(0, 1)`` a view.
    """
    target = shift_labels(labels, attention_mask)
    return F.cross_entropy(logits.flatten(0, 1).float(), target.flatten(), ignore_index=IGNORE_INDEX)
