"""Shared surgery steps of the pruning package (private to ``helpers.pruning``): argument checks, index selection,
and new ``nn.Linear`` / norm weights keeping chosen rows and columns. The input model is never changed: every
function builds new parameters."""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from .. import architecture as arch
from ..importance import Importance


def check_importance(importance: Importance | None, model: PreTrainedModel, needed: Iterable[str]) -> None:
    needed = list(needed)
    if importance is None:
        if needed:
            raise ValueError(f"Pruning {', '.join(needed)} needs an Importance (estimate_importance, "
                             "magnitude_importance or random_importance).")
        return
    sizes = arch.model_sizes(model)
    wrong = {k: v for k, v in importance.sizes.items() if k in sizes and sizes[k] != v}
    if wrong:
        raise ValueError(f"These scores were computed for other sizes {wrong}; this model has {sizes}. "
                         "Re-estimate importance on the model you prune.")
    for name in needed:
        if getattr(importance, name) is None:
            raise ValueError(f"The importance has no {name} scores; use estimate_importance, "
                             "magnitude_importance or random_importance.")
    importance.check_finite()


def target_size(name: str, value: int | None, current: int) -> int:
    if value is None:
        return current
    value = arch.as_int(name, value)
    if not 1 <= value <= current:
        raise ValueError(f"{name}={value!r} is not allowed: pruning keeps 1..{current} (the current size).")
    return value


def top_indices(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores, in their original order (ties: lower index first)."""
    return torch.argsort(scores.float(), descending=True, stable=True)[:k].sort().values


def head_rows(units: Tensor, size: int) -> Tensor:
    """Unit indices -> weight-row indices when each unit owns ``size`` consecutive rows (a head)."""
    return (units[:, None] * size + torch.arange(size)).flatten()


def sliced_linear(linear: nn.Linear, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> nn.Linear:
    """A new nn.Linear keeping weight rows ``out_idx`` (outputs) and columns ``in_idx`` (inputs)."""
    if out_idx is None and in_idx is None:
        return linear
    w, b = linear.weight, linear.bias
    if out_idx is not None:
        w, b = w[out_idx.to(w.device)], None if b is None else b[out_idx.to(w.device)]
    if in_idx is not None:
        w = w[:, in_idx.to(w.device)]
    new = nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device="meta")  # no wasted init
    new.weight = nn.Parameter(w.detach().clone(), requires_grad=linear.weight.requires_grad)
    if b is not None:
        new.bias = nn.Parameter(b.detach().clone(), requires_grad=linear.bias.requires_grad)
    return new


def slice_norm(norm: nn.Module, idx: Tensor) -> None:
    norm.weight = nn.Parameter(norm.weight.detach()[idx.to(norm.weight.device)].clone(),
                               requires_grad=norm.weight.requires_grad)
