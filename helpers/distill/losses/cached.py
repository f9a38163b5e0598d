"""Forward KL against a *cached* teacher: the teacher's top-k log-probabilities and token ids stored once
(``helpers.distill.build_logit_cache``) instead of its full ``[B, S, V]`` logits recomputed every step.

Shapes: ``B`` batch, ``S`` sequence, ``V`` vocabulary, ``k`` kept tokens per position.

The target is the teacher's top-k distribution renormalised over the k tokens, exactly as ``forward_kl(...,
top_k=k)`` builds it from full logits: the cache holds ``l = z - logsumexp(z)`` at the k largest ``z``, and
``softmax(l / tau)`` over the k equals ``softmax(topk(z) / tau)`` because ``l`` differs from ``z`` by a constant per
position. A teacher temperature ``T`` is applied the same way, by passing ``l / T`` (the top-k set does not change).
So from an fp32 cache this loss equals ``forward_kl(student, teacher, top_k=k)`` up to float rounding; float16
storage (the default) rounds each log-prob to 11 significant bits (~5e-4 relative; the loss moved ~2e-5 in tests).

Cost: with ``renormalize_student=True`` only the k gathered student logits enter the loss, and the gradient
w.r.t. the ``[B, S, V]`` logits is k nonzeros per row (written by the ``gather`` backward); it leaves the student's
mass outside the k tokens unconstrained (see ``logits.py``), so training uses ``renormalize_student=False``
(``DistillConfig``'s choice for forward KL): the student's full-vocabulary ``logsumexp`` is needed (one pass over
``V``, the same as a CE loss). That path runs through ``_FullVocabLogProbs``, whose hand-written backward is one
``softmax`` pass and touches no copy of the ``[N, V]`` logits (selecting the valid rows first, as the renormalised
path does on its ``[N, k]`` gather, costs a copy and a scatter of the full logits every step), so a step costs
about a plain cross-entropy step (``benchmarks/distill_step.py --cache`` measures the ratio).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .logits import resolve_mask

__all__ = ["topk_cached_kl"]


def _check_shapes(student_logits: Tensor, topk_logprobs: Tensor, topk_indices: Tensor, temperature: float) -> None:
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    lead = tuple(student_logits.shape[:-1])
    if student_logits.dim() < 2 or topk_logprobs.shape != topk_indices.shape or \
            tuple(topk_logprobs.shape[:-1]) != lead:
        raise ValueError(f"student logits {tuple(student_logits.shape)} need cached top-k log-probs and indices of "
                         f"shape {(*lead, 'k')}; got {tuple(topk_logprobs.shape)} and {tuple(topk_indices.shape)}")
    if topk_indices.is_floating_point() or not topk_logprobs.is_floating_point():
        raise ValueError(f"topk_indices must be integer and topk_logprobs floating point; got {topk_indices.dtype} "
                         f"and {topk_logprobs.dtype}")
    if not 0 < topk_logprobs.shape[-1] <= student_logits.shape[-1]:
        raise ValueError(f"the cache keeps k={topk_logprobs.shape[-1]} tokens per position; allowed: 1..V="
                         f"{student_logits.shape[-1]} (the student's vocabulary)")


def topk_cached_kl(
    student_logits: Tensor,
    topk_logprobs: Tensor,
    topk_indices: Tensor,
    mask: Tensor | None = None,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    renormalize_student: bool = True,
) -> Tensor:
    """KL(p_t^tau,k || p_s^tau) * tau^2 from a cached teacher, mean over unmasked positions (Hinton et al. 2015).

    ``student_logits``: ``[B, S, V]`` (any float dtype; computed in fp32, fp64 for fp64 inputs);
    ``topk_logprobs``: ``[B, S, k]`` the teacher's log-probs at its k most likely tokens (float16/32);
    ``topk_indices``: ``[B, S, k]`` their token ids (any integer dtype); ``mask`` / ``labels``: ``[B, S]`` as in
    ``forward_kl``. The teacher distribution is ``softmax(topk_logprobs / tau)`` over the k; the student's is
    ``softmax(z_s[idx] / tau)`` (``renormalize_student``, trl's GOLD convention) or its full-vocabulary
    ``log_softmax(z_s / tau)[idx]`` (then the tail mass is pushed down too). Returns a scalar; equals
    ``forward_kl(student, teacher, top_k=k, renormalize_student=...)`` for the teacher the cache came from.
    Masked positions get exactly zero gradient, even when their logits are NaN.
    """
    _check_shapes(student_logits, topk_logprobs, topk_indices, temperature)
    dtype = torch.promote_types(student_logits.dtype, torch.float32)
    vocab, k = student_logits.shape[-1], topk_indices.shape[-1]
    logits = student_logits.reshape(-1, vocab)
    index, target = topk_indices.reshape(-1, k).long(), topk_logprobs.detach().reshape(-1, k)
    valid = resolve_mask(mask, labels)
    valid = None if valid is None or bool(valid.all()) else valid.reshape(-1).bool()
    if renormalize_student:  # gather first (cheap), then keep the valid rows
        rows = None if valid is None else valid.nonzero().squeeze(1)
        s_logp = F.log_softmax(_scaled(_rows(logits.gather(-1, index), rows).to(dtype), temperature), dim=-1)
        index, target = _rows(index, rows), _rows(target, rows)
    else:  # every row in place (no [N, V] copy); invalid rows are dropped below and get zero gradient
        s_logp = _FullVocabLogProbs.apply(logits, index, valid, temperature, dtype)
        if valid is not None:
            s_logp, target = s_logp[valid], target[valid]
    t_logp = F.log_softmax(_scaled(target.to(dtype), temperature), dim=-1).clamp_min(torch.finfo(dtype).min)
    per_position = (t_logp.exp() * (t_logp - s_logp)).sum(-1)  # [n_valid]; invalid rows never enter the graph
    return per_position.sum() / max(per_position.shape[0], 1) * temperature**2


class _FullVocabLogProbs(torch.autograd.Function):
    """``log_softmax(z / tau)[idx]`` for ``z``: ``[N, V]``, ``idx``: ``[N, k]`` -> ``[N, k]`` in ``dtype``, with a
    hand-written backward that never copies ``z`` row-wise: one ``logsumexp`` pass forward, one ``softmax`` pass
    backward, as in a CE loss. The gradient w.r.t. ``z`` is ``(onehot_k(g) - softmax(z / tau) * sum_k g) / tau``;
    rows where ``valid`` is False get exactly zero gradient, even when their logits are NaN.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, index: Tensor, valid: Tensor | None, temperature: float,  # noqa: ANN001
                dtype: torch.dtype) -> Tensor:
        scaled = _scaled(logits.to(dtype), temperature)
        lse = torch.logsumexp(scaled, dim=-1, keepdim=True)  # [N, 1]
        ctx.save_for_backward(logits, index, lse, valid if valid is not None else torch.empty(0, dtype=torch.bool))
        ctx.temperature, ctx.dtype = temperature, dtype
        return scaled.gather(-1, index) - lse

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: ANN001, ANN205
        logits, index, lse, valid = ctx.saved_tensors
        grad = grad.to(ctx.dtype)
        out = torch.softmax(_scaled(logits.to(ctx.dtype), ctx.temperature), dim=-1)  # a fresh [N, V]
        out.mul_(-grad.sum(-1, keepdim=True)).scatter_add_(-1, index, grad)
        if valid.numel():
            out[~valid] = 0.0
        if ctx.temperature != 1.0:
            out.div_(ctx.temperature)
        return out.to(logits.dtype), None, None, None, None


def _rows(x: Tensor, rows: Tensor | None) -> Tensor:
    """``x[rows]`` (the valid positions of ``[N, ...]``), or ``x`` itself when every row is valid."""
    return x if rows is None else x[rows]


def _scaled(x: Tensor, temperature: float) -> Tensor:
    return x if temperature == 1.0 else x / temperature
