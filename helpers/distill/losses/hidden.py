"""Hidden-state and embedding losses, and the learned projection they compare through (Minitron).

Intermediate losses (Minitron, Sreenivas et al. 2024): teacher hidden states against a learned linear projection
of the student's (:class:`HiddenProjection`), as cosine (1 - cos), MSE, or MSE normalised by the teacher's
variance; the embedding-output loss is the same on the embedding outputs. Minitron weights the intermediate
loss with ``alpha = L_logits / L_is`` (:func:`dynamic_alpha`, detached).

Shapes: ``B`` batch, ``S`` sequence, ``H_s`` / ``H_t`` student / teacher hidden width. Every loss returns a scalar:
the mean over the unmasked positions (``mask`` ``[B, S]``, True/1 where the position counts).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .logits import masked_mean, resolve_mask

HIDDEN_LOSSES: tuple[str, ...] = ("cosine", "mse", "nmse")


class HiddenProjection(nn.Module):
    """One ``nn.Linear(student_hidden, teacher_hidden, bias=False)`` per mapped layer (weight ``[H_t, H_s]``).

    Identity-initialised when the widths match (so a width-preserving student starts with the plain loss);
    otherwise PyTorch's default init, or :meth:`init_from_channels` when the student's hidden channels are a
    known subset of the teacher's (hidden-size pruning).
    """

    def __init__(self, student_hidden: int, teacher_hidden: int, num_layers: int = 1) -> None:
        super().__init__()
        self.student_hidden, self.teacher_hidden = student_hidden, teacher_hidden
        self.proj = nn.ModuleList(nn.Linear(student_hidden, teacher_hidden, bias=False) for _ in range(num_layers))
        if student_hidden == teacher_hidden:
            with torch.no_grad():
                for linear in self.proj:
                    linear.weight.copy_(torch.eye(teacher_hidden))

    @torch.no_grad()
    def init_from_channels(self, kept_channels: Tensor) -> None:
        """Student channel ``c`` was teacher channel ``kept_channels[c]`` (``[H_s]`` ids): a selection matrix."""
        if kept_channels.shape != (self.student_hidden,):
            raise ValueError(f"kept_channels must have shape ({self.student_hidden},), "
                             f"got {tuple(kept_channels.shape)}")
        for linear in self.proj:
            linear.weight.zero_()
            linear.weight[kept_channels, torch.arange(self.student_hidden)] = 1.0

    def forward(self, states: Sequence[Tensor]) -> list[Tensor]:
        """``states[k]``: ``[B, S, H_s]`` for mapped layer k -> ``[B, S, H_t]``."""
        if len(states) != len(self.proj):
            raise ValueError(f"expected {len(self.proj)} hidden states, got {len(states)}")
        return [linear(h) for linear, h in zip(self.proj, states)]


def cosine_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over unmasked positions of ``1 - cos(student, teacher)``; ``[B, S, H]`` each, fp32."""
    per_position = 1.0 - F.cosine_similarity(student.float(), teacher.detach().float(), dim=-1, eps=1e-8)
    return masked_mean(per_position, mask)


def mse_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean over unmasked positions and channels of ``(student - teacher)^2``; ``[B, S, H]`` each."""
    per_position = (student.float() - teacher.detach().float()).pow(2).mean(-1)
    return masked_mean(per_position, mask)


def nmse_loss(student: Tensor, teacher: Tensor, mask: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """MSE divided by the teacher's variance (per channel over unmasked positions, averaged over channels).

    Scale-free: predicting the teacher's per-channel mean scores about 1, whatever the layer's magnitude.
    """
    t = teacher.detach().float()
    with torch.no_grad():
        flat = t.flatten(0, -2) if mask is None else t[mask.bool()]  # [n_valid, H]
        variance = flat.var(dim=0, unbiased=False).mean() if flat.shape[0] > 1 else t.new_ones(())
    return mse_loss(student, t, mask) / (variance + eps)


HIDDEN_LOSS_FNS = {"cosine": cosine_loss, "mse": mse_loss, "nmse": nmse_loss}


def hidden_state_loss(
    student_states: Sequence[Tensor],
    teacher_states: Sequence[Tensor],
    kind: str = "cosine",
    mask: Tensor | None = None,
    projection: HiddenProjection | None = None,
) -> Tensor:
    """Mean over mapped layers of ``kind`` between ``teacher_states[k]`` and the (projected) ``student_states[k]``.

    ``student_states[k]``: ``[B, S, H_s]`` (or already projected ``[B, S, H_t]`` when ``projection`` is None);
    ``teacher_states[k]``: ``[B, S, H_t]``; ``mask``: ``[B, S]``. Returns a scalar.
    """
    if kind not in HIDDEN_LOSS_FNS:
        raise ValueError(f"Unknown hidden-state loss {kind!r}; allowed: {', '.join(HIDDEN_LOSSES)}")
    if len(student_states) != len(teacher_states) or not student_states:
        raise ValueError(f"need matching, non-empty state lists, got {len(student_states)} vs {len(teacher_states)}")
    if projection is not None:
        student_states = projection(student_states)
    fn, mask = HIDDEN_LOSS_FNS[kind], resolve_mask(mask)
    return torch.stack([fn(s, t, mask) for s, t in zip(student_states, teacher_states)]).mean()


def embedding_loss(
    student_embeds: Tensor,
    teacher_embeds: Tensor,
    kind: str = "cosine",
    mask: Tensor | None = None,
    projection: HiddenProjection | None = None,
) -> Tensor:
    """Loss between the embedding outputs (``hidden_states[0]``), ``[B, S, H_s]`` (projected) vs ``[B, S, H_t]``."""
    return hidden_state_loss([student_embeds], [teacher_embeds], kind, mask, projection)


def dynamic_alpha(logit_loss: Tensor, intermediate_loss: Tensor, eps: float = 1e-8) -> Tensor:
    """Minitron's weight ``alpha = L_logits / L_is``, detached, so ``alpha * L_is`` matches ``L_logits`` in size
    while its gradient is ``alpha * grad(L_is)`` (Muralidharan et al. 2024)."""
    return (logit_loss.detach() / intermediate_loss.detach().clamp_min(eps)).detach()
