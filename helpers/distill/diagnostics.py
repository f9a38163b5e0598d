"""Comparing a student with its teacher, before or after distillation: which teacher channel each student
channel came from (:func:`match_hidden_channels`, for ``DistillConfig.kept_channels``), how close their next-token
distributions are (:func:`teacher_agreement`) and how similar their hidden states are (:func:`hidden_similarity`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..hardware import autocast
from .config import LayerMap
from .losses import logit_distillation_loss

__all__ = ["match_hidden_channels", "teacher_agreement", "hidden_similarity"]


@torch.no_grad()
def match_hidden_channels(student: PreTrainedModel, teacher: PreTrainedModel, rows: int = 512) -> list[int] | None:
    """For a student whose hidden size was pruned (and not yet trained): the teacher channel each student channel
    came from, found by matching embedding columns exactly on the first ``rows`` tokens; None when some student
    channel matches no teacher channel (e.g. after training). Feed it to ``DistillConfig.kept_channels``."""
    s = student.get_input_embeddings().weight[:rows].detach().float().cpu()  # [rows, H_s]
    t = teacher.get_input_embeddings().weight[:rows].detach().float().cpu()  # [rows, H_t]
    if s.shape[0] != t.shape[0]:
        return None
    dist = torch.cdist(s.T, t.T, compute_mode="donot_use_mm_for_euclid_dist")  # [H_s, H_t], exact
    best = dist.min(dim=1)
    if bool((best.values > 1e-6 * (1 + s.abs().max())).any()) or len(set(best.indices.tolist())) != s.shape[1]:
        return None
    return best.indices.tolist()


@torch.no_grad()
def teacher_agreement(student: PreTrainedModel, teacher: PreTrainedModel, blocks: Tensor, batch_size: int = 2,
                      use_autocast: bool = True) -> dict[str, float]:
    """How close the student's next-token distributions are to the teacher's on ``blocks`` ``[n, L]``: mean forward
    KL(p_t || p_s) in nats per predicted position and the fraction of positions whose top-1 tokens agree."""

    kl_sum, agree, n = 0.0, 0, 0
    device_s, device_t = student.device, teacher.device
    for batch in blocks.split(batch_size):
        with autocast(device_s, enabled=use_autocast):
            s_logits = student(input_ids=batch.to(device_s)).logits[:, :-1]
        with autocast(device_t, enabled=use_autocast):
            t_logits = teacher(input_ids=batch.to(device_t)).logits[:, :-1].to(s_logits.device)
        positions = s_logits.shape[0] * s_logits.shape[1]
        kl_sum += logit_distillation_loss(s_logits, t_logits, "forward_kl").item() * positions
        agree += int((s_logits.argmax(-1) == t_logits.argmax(-1)).sum())
        n += positions
    return {"forward_kl": kl_sum / n, "top1_agreement": agree / n}


@torch.no_grad()
def hidden_similarity(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    blocks: Tensor,
    layer_map: LayerMap,
    projections: dict[str, Tensor] | None = None,
    kept_channels: list[int] | None = None,
) -> list[float]:
    """Mean cosine similarity, per ``(student, teacher)`` pair of ``layer_map``, between the teacher's hidden state
    and the student's mapped to the teacher's width: by the learned ``projections`` (``DistillResult.projections``),
    else by the selection matrix of ``kept_channels``, else unchanged (equal widths). ``blocks``: ``[n, L]`` ids."""
    h_s, h_t = student.config.hidden_size, teacher.config.hidden_size
    weights = []
    for k in range(len(layer_map)):
        if projections is not None:
            key = f"layer_projection.proj.{k}.weight"
            if key not in projections:
                raise ValueError(f"projections lack {key!r}: give those of a run with hidden_loss and this layer map")
            weights.append(projections[key].float())
        elif kept_channels is not None:
            w = torch.zeros(h_t, h_s)
            w[torch.as_tensor(kept_channels), torch.arange(h_s)] = 1.0
            weights.append(w)
        elif h_s == h_t:
            weights.append(None)
        else:
            raise ValueError(f"student width {h_s} != teacher width {h_t}: give projections or kept_channels")
    totals = torch.zeros(len(layer_map), dtype=torch.float64)
    device_s, device_t = student.device, teacher.device
    for batch in blocks.split(4):
        s_states = student(input_ids=batch.to(device_s), output_hidden_states=True).hidden_states
        t_states = teacher(input_ids=batch.to(device_t), output_hidden_states=True).hidden_states
        for k, (s, t) in enumerate(layer_map):
            x = s_states[s + 1].float()
            if weights[k] is not None:
                x = x @ weights[k].to(x.device).T
            cos = torch.nn.functional.cosine_similarity(x, t_states[t + 1].float().to(x.device), dim=-1)
            totals[k] += cos.sum().item()
    return (totals / blocks.numel()).tolist()
