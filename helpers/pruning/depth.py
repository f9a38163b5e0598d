"""Depth pruning: a NEW model without some decoder layers; the input model is never changed.

Which layers go comes from a layer criterion of ``helpers.importance.layer_importance`` (lowest scores, a
contiguous block, or the block of smallest angular distance). The surgery removes the layers, renumbers
``self_attn.layer_idx`` (the KV cache is indexed by it) and fixes ``num_hidden_layers`` and per-layer config lists
(``layer_types``, Qwen2's ``max_window_layers``).
"""

from __future__ import annotations

import copy
from typing import Any, Iterable

import torch
from torch import nn
from transformers import PreTrainedModel

from .. import architecture as arch
from ..importance import Importance
from ._surgery import check_importance, target_size
from .lineage import log_step

__all__ = ["choose_layers_to_drop", "prune_depth"]


def choose_layers_to_drop(importance: Importance, num_drop: int, criterion: str | None = None,
                          contiguous: bool = False) -> list[int]:
    """The ``num_drop`` layers with the lowest scores of ``importance.layers[criterion]``; ``contiguous``:
    the block of consecutive layers with the lowest summed score. ``criterion="angular"`` picks the
    block of smallest angular distance (``angular_<num_drop>``, Gromov et al. 2024); it is contiguous."""
    num_drop = arch.as_int("num_drop", num_drop)
    available = sorted(importance.layers)
    if criterion is None:
        if len(available) != 1:
            raise ValueError(f"Choose a criterion among the available layer scores: {available}")
        criterion = available[0]
    if num_drop == 0:
        return []
    if criterion == "angular":
        start = importance.best_block(num_drop)[0]
        return list(range(start, start + num_drop))
    if criterion not in importance.layers:
        raise ValueError(f"Unknown layer criterion {criterion!r}; available: {available + ['angular']}")
    scores = importance.layers[criterion].float()
    if contiguous:
        start = int(scores.unfold(0, num_drop, 1).sum(1).argmin())
        return list(range(start, start + num_drop))
    return sorted(torch.argsort(scores, stable=True)[:num_drop].tolist())


def _explicit_drop(layers_to_drop: Any, num_layers: int) -> list[int]:
    """Validated, distinct layer indices (one integer of any kind, or an iterable of them)."""
    if isinstance(layers_to_drop, (str, bytes)):
        raise TypeError(f"layers_to_drop={layers_to_drop!r} must be a layer index or a list of them")
    items = [layers_to_drop] if not isinstance(layers_to_drop, Iterable) or \
        (isinstance(layers_to_drop, torch.Tensor) and layers_to_drop.dim() == 0) else list(layers_to_drop)
    drop = [arch.as_int("layers_to_drop", i) for i in items]
    bad = [i for i in drop if not 0 <= i < num_layers]
    if bad or len(set(drop)) != len(drop):
        raise ValueError(f"layers_to_drop {drop} must be distinct indices in 0..{num_layers - 1}; bad: {bad}")
    if len(drop) == num_layers:
        raise ValueError(f"Cannot drop all {num_layers} layers; keep at least one.")
    return drop


def _config_updates(config: Any, keep: list[int]) -> dict[str, Any]:
    updates: dict[str, Any] = {"num_hidden_layers": len(keep)}
    if isinstance(getattr(config, "layer_types", None), list):
        updates["layer_types"] = [config.layer_types[i] for i in keep]
    if isinstance(getattr(config, "max_window_layers", None), int):  # Qwen2: layers >= this index slide
        updates["max_window_layers"] = sum(i < config.max_window_layers for i in keep)
    arch.check_config(config, **updates)
    return updates


def prune_depth(
    model: PreTrainedModel,
    layers_to_drop: Iterable[int] | int | None = None,
    num_layers: int | None = None,
    importance: Importance | None = None,
    criterion: str | None = None,
    contiguous: bool = False,
) -> PreTrainedModel:
    """A new model without some decoder layers: either explicit ``layers_to_drop`` indices (one index or a list),
    or ``num_layers`` to KEEP, chosen from ``importance`` by ``choose_layers_to_drop``."""
    c = model.config
    arch.check_supported(c)
    L = c.num_hidden_layers
    if (layers_to_drop is None) == (num_layers is None):
        raise ValueError("Give either layers_to_drop (indices) or num_layers (how many to keep) with importance.")
    if num_layers is not None:
        num_layers = target_size("num_hidden_layers", num_layers, L)
        if importance is None and num_layers < L:
            raise ValueError("num_layers needs an importance (layer_importance, magnitude or random) to choose from.")
        if importance is not None:
            check_importance(importance, model, [])
            if criterion is None and len(importance.layers) == 1:
                criterion = next(iter(importance.layers))
        contiguous = contiguous or criterion == "angular"
        drop = choose_layers_to_drop(importance, L - num_layers, criterion, contiguous) if num_layers < L else []
    else:
        drop = _explicit_drop(layers_to_drop, L)
    keep = [i for i in range(L) if i not in set(drop)]
    updates = _config_updates(c, keep)

    new = copy.deepcopy(model)
    base = arch.base(new)
    base.layers = nn.ModuleList([base.layers[i] for i in keep])
    for j, layer in enumerate(base.layers):
        arch.attention(layer).layer_idx = j  # the KV cache slot of this layer
    for key, value in updates.items():
        setattr(new.config, key, value)
    if hasattr(base, "has_sliding_layers"):
        base.has_sliding_layers = "sliding_attention" in (new.config.layer_types or [])
    return log_step(model, new, {"op": "prune_depth", "dropped_layers": sorted(drop), "criterion": criterion,
                                 "contiguous": contiguous, "before": {"num_hidden_layers": L},
                                 "after": {"num_hidden_layers": len(keep)},
                                 "importance": None if importance is None else importance.metadata()})
