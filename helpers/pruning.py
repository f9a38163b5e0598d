"""Structured pruning surgery: a NEW, smaller, valid Hugging Face model; the input model is never changed.

Width (Muralidharan et al. 2024, "Compact Language Models via Pruning and Knowledge Distillation";
Sreenivas et al. 2024, "LLM Pruning and Distillation in Practice") is uniform across layers, so one HF
config still describes the model. Each unit is removed from the layer that produces it and the layers
that consume it::

    unit             producer (rows kept)                     consumer (columns kept)        config field
    MLP neuron       gate_proj, up_proj                       down_proj                      intermediate_size
    query head       q_proj (+bias)                           o_proj                         num_attention_heads
    KV group         k_proj, v_proj (+bias), its query heads  o_proj                         num_key_value_heads
    hidden channel   embed_tokens, o_proj, down_proj          q/k/v/gate/up, lm_head         hidden_size
                     (and every RMSNorm weight, final norm)

head_dim never changes (RoPE rotates within a head) and is written explicitly into the config. With GQA
(query head h reads KV head h // (heads / kv_heads)), query heads are pruned evenly inside each KV group,
or whole groups go, ranked by their query heads' summed score. When the scores carry ``head_gram`` (activation
importance does by default), heads are chosen as sets instead: the kept groups and heads are those whose removed
complement has the smallest joint error (``select_heads_joint``).

Depth removes decoder layers, renumbers ``self_attn.layer_idx`` (the KV cache is indexed by it) and
fixes ``num_hidden_layers`` and per-layer config lists (``layer_types``, Qwen2's ``max_window_layers``).
Every pruned model carries ``workbook_steps`` (what was pruned, with which scores) for its recipe.

Parameter counts and the candidate architectures for a parameter budget are in :mod:`helpers.budget`.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Any, Iterable

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from . import architecture as arch
from .budget import _check_config
from .budget import count_parameters
from .importance import Importance, model_sizes


# ----------------------------------------------------------------------------------------------------
# Validation


def _check_importance(importance: Importance | None, model: PreTrainedModel, needed: Iterable[str]) -> None:
    needed = list(needed)
    if importance is None:
        if needed:
            raise ValueError(f"Pruning {', '.join(needed)} needs an Importance (estimate_importance, "
                             "magnitude_importance or random_importance).")
        return
    sizes = model_sizes(model)
    wrong = {k: v for k, v in importance.sizes.items() if k in sizes and sizes[k] != v}
    if wrong:
        raise ValueError(f"These scores were computed for other sizes {wrong}; this model has {sizes}. "
                         "Re-estimate importance on the model you prune.")
    for name in needed:
        if getattr(importance, name) is None:
            raise ValueError(f"The importance has no {name} scores; use estimate_importance, "
                             "magnitude_importance or random_importance.")


def _target(name: str, value: int | None, current: int) -> int:
    if value is None:
        return current
    if not isinstance(value, int) or not 1 <= value <= current:
        raise ValueError(f"{name}={value!r} is not allowed: pruning keeps 1..{current} (the current size).")
    return value


# ----------------------------------------------------------------------------------------------------
# Width


def _top(scores: Tensor, k: int) -> Tensor:
    """Indices of the ``k`` highest scores, in their original order (ties: lower index first)."""
    return torch.argsort(scores.float(), descending=True, stable=True)[:k].sort().values


def select_heads(scores: Tensor, num_key_value_heads: int, num_heads: int, num_kv: int) -> tuple[Tensor, Tensor]:
    """GQA-aware choice for one layer: ``scores`` [heads] -> (kept query heads [num_heads], kept KV heads
    [num_kv]). Whole KV groups are ranked by summed query-head score; inside each kept group the
    ``num_heads // num_kv`` best query heads stay."""
    per_group = scores.numel() // num_key_value_heads
    grouped = scores.float().view(num_key_value_heads, per_group)  # query head h is in group h // per_group
    groups = _top(grouped.sum(1), num_kv)
    queries = [g * per_group + _top(grouped[g], num_heads // num_kv) for g in groups.tolist()]
    return torch.cat(queries), groups


EXHAUSTIVE_LIMIT = 4096  # subsets tried one by one up to this many; beyond, greedy backward elimination


def removal_error(gram: Tensor, removed: list[int]) -> float:
    """Joint error of removing the units ``removed``: the sum of ``gram``'s [removed, removed] block (gram [n, n],
    e.g. one layer of ``Importance.head_gram``, whose module docstring derives it)."""
    return float(gram[removed][:, removed].sum()) if removed else 0.0


def _keep_subset(gram: Tensor, keep: int) -> list[int]:
    """The ``keep`` units (of gram [n, n]) whose removed complement R has the smallest sum(gram[R, R]).

    Every subset when there are at most EXHAUSTIVE_LIMIT of them, else greedy backward elimination: remove, one at
    a time, the unit whose removal adds the least to the error of the units already removed."""
    n = gram.shape[0]
    units = list(range(n))
    if math.comb(n, keep) <= EXHAUSTIVE_LIMIT:
        best = min(itertools.combinations(units, keep),
                   key=lambda kept: removal_error(gram, [u for u in units if u not in kept]))
        return list(best)
    removed: list[int] = []
    while len(removed) < n - keep:
        alive = [u for u in units if u not in removed]
        removed.append(min(alive, key=lambda u: removal_error(gram, removed + [u])))
    return [u for u in units if u not in removed]


def select_heads_joint(gram: Tensor, num_key_value_heads: int, num_heads: int, num_kv: int) -> tuple[Tensor, Tensor]:
    """GQA-aware choice of heads as sets, for one layer: ``gram`` [heads, heads] (``Importance.head_gram``) ->
    (kept query heads [num_heads], kept KV heads [num_kv]), as :func:`select_heads` returns them.

    KV groups: the kept ``num_kv`` groups minimise the joint error of all query heads in the removed groups
    (group gram = the [per_group, per_group] blocks summed). Then inside each kept group, the kept
    ``num_heads // num_kv`` query heads minimise the joint error of the group's removed heads."""
    per_group = gram.shape[0] // num_key_value_heads
    g = gram.double().view(num_key_value_heads, per_group, num_key_value_heads, per_group)
    groups = _keep_subset(g.sum((1, 3)), num_kv)
    queries = [grp * per_group + torch.tensor(_keep_subset(g[grp, :, grp, :], num_heads // num_kv)) for grp in groups]
    return torch.cat(queries), torch.tensor(groups)


def _rows(units: Tensor, size: int) -> Tensor:
    """Unit indices -> weight-row indices when each unit owns ``size`` consecutive rows (a head)."""
    return (units[:, None] * size + torch.arange(size)).flatten()


def _linear(linear: nn.Linear, out_idx: Tensor | None = None, in_idx: Tensor | None = None) -> nn.Linear:
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


def _slice_norm(norm: nn.Module, idx: Tensor) -> None:
    norm.weight = nn.Parameter(norm.weight.detach()[idx.to(norm.weight.device)].clone(),
                               requires_grad=norm.weight.requires_grad)


def _log_step(parent: PreTrainedModel, child: PreTrainedModel, step: dict[str, Any]) -> PreTrainedModel:
    child.workbook_steps = [*getattr(parent, "workbook_steps", []), step]
    return child


def prune_width(
    model: PreTrainedModel,
    importance: Importance | None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
) -> PreTrainedModel:
    """A new model keeping the top-scoring units (``None`` = keep that size). Giving only
    ``num_key_value_heads`` keeps the query heads per group, so num_attention_heads shrinks with it."""
    c = model.config
    arch.check_supported(c)
    H, KV, hd = c.num_attention_heads, c.num_key_value_heads, arch.head_dim(c)
    kv = _target("num_key_value_heads", num_key_value_heads, KV)
    heads = kv * (H // KV) if num_attention_heads is None else _target("num_attention_heads", num_attention_heads, H)
    if heads % kv or heads // kv > H // KV:
        allowed = [kv * q for q in range(1, H // KV + 1)]
        raise ValueError(f"num_attention_heads={heads} must be a multiple of num_key_value_heads={kv} with at most "
                         f"{H // KV} query heads per KV group; allowed: {allowed}")
    hidden = _target("hidden_size", hidden_size, c.hidden_size)
    inter = _target("intermediate_size", intermediate_size, c.intermediate_size)
    prune_heads = (heads, kv) != (H, KV)
    needed = [n for n, on in (("channels", hidden != c.hidden_size), ("neurons", inter != c.intermediate_size),
                              ("heads", prune_heads)) if on]
    _check_importance(importance, model, needed)
    targets = {"hidden_size": hidden, "intermediate_size": inter, "num_attention_heads": heads,
               "num_key_value_heads": kv, "head_dim": hd}
    _check_config(c, **targets)

    new = copy.deepcopy(model)
    channels = _top(importance.channels, hidden) if hidden != c.hidden_size else None
    for l, layer in enumerate(arch.layers(new)):
        attn, mlp = arch.attention(layer), arch.mlp(layer)
        q_rows = kv_rows = None
        if prune_heads:
            if importance.head_gram is not None:
                q_heads, kv_heads = select_heads_joint(importance.head_gram[l], KV, heads, kv)
            else:
                q_heads, kv_heads = select_heads(importance.heads[l], KV, heads, kv)
            q_rows, kv_rows = _rows(q_heads, hd), _rows(kv_heads, hd)
        neurons = _top(importance.neurons[l], inter) if inter != c.intermediate_size else None
        attn.q_proj = _linear(attn.q_proj, q_rows, channels)
        attn.k_proj = _linear(attn.k_proj, kv_rows, channels)
        attn.v_proj = _linear(attn.v_proj, kv_rows, channels)
        attn.o_proj = _linear(attn.o_proj, channels, q_rows)
        mlp.gate_proj = _linear(mlp.gate_proj, neurons, channels)
        mlp.up_proj = _linear(mlp.up_proj, neurons, channels)
        mlp.down_proj = _linear(mlp.down_proj, channels, neurons)
        attn.num_key_value_groups = heads // kv
        for obj, name, value in ((attn, "num_heads", heads), (attn, "num_key_value_heads", kv),
                                 (mlp, "intermediate_size", inter), (mlp, "hidden_size", hidden),
                                 (layer, "hidden_size", hidden)):
            if hasattr(obj, name):
                setattr(obj, name, value)
        if channels is not None:
            for norm in arch.layer_norms(layer):
                _slice_norm(norm, channels)
    if channels is not None:
        tied, embed = arch.is_tied(new), arch.embed_tokens(new)
        new_embed = nn.Embedding(embed.num_embeddings, hidden, embed.padding_idx, device="meta")
        new_embed.weight = nn.Parameter(embed.weight.detach()[:, channels.to(embed.weight.device)].clone(),
                                        requires_grad=embed.weight.requires_grad)
        arch.base(new).embed_tokens = new_embed
        _slice_norm(arch.final_norm(new), channels)
        new.lm_head = _linear(new.lm_head, None, channels)
        if tied:
            new.lm_head.weight = new_embed.weight  # keep the tie: one tensor, as tie_word_embeddings says
    for key, value in targets.items():
        setattr(new.config, key, value)
    before = {k: v for k, v in model_sizes(c).items() if k in targets}
    return _log_step(model, new, {"op": "prune_width", "before": before, "after": targets,
                                  "importance": None if importance is None else importance.describe()})


# ----------------------------------------------------------------------------------------------------
# Depth


def choose_layers_to_drop(importance: Importance, num_drop: int, criterion: str | None = None,
                          contiguous: bool = False) -> list[int]:
    """The ``num_drop`` layers with the lowest scores of ``importance.layers[criterion]``; ``contiguous``:
    the block of consecutive layers with the lowest summed score. ``criterion="angular"`` picks the
    block of smallest angular distance (``angular_<num_drop>``, Gromov et al. 2024); it is contiguous."""
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


def prune_depth(
    model: PreTrainedModel,
    layers_to_drop: Iterable[int] | None = None,
    num_layers: int | None = None,
    importance: Importance | None = None,
    criterion: str | None = None,
    contiguous: bool = False,
) -> PreTrainedModel:
    """A new model without some decoder layers: either explicit ``layers_to_drop`` indices, or
    ``num_layers`` to KEEP, chosen from ``importance`` by ``choose_layers_to_drop``."""
    c = model.config
    arch.check_supported(c)
    L = c.num_hidden_layers
    if (layers_to_drop is None) == (num_layers is None):
        raise ValueError("Give either layers_to_drop (indices) or num_layers (how many to keep) with importance.")
    if num_layers is not None:
        num_layers = _target("num_hidden_layers", num_layers, L)
        if importance is None and num_layers < L:
            raise ValueError("num_layers needs an importance (layer_importance, magnitude or random) to choose from.")
        if importance is not None:
            _check_importance(importance, model, [])
            if criterion is None and len(importance.layers) == 1:
                criterion = next(iter(importance.layers))
        contiguous = contiguous or criterion == "angular"
        drop = choose_layers_to_drop(importance, L - num_layers, criterion, contiguous) if num_layers < L else []
    else:
        drop = list(layers_to_drop)
        bad = [i for i in drop if not isinstance(i, int) or not 0 <= i < L]
        if bad or len(set(drop)) != len(drop):
            raise ValueError(f"layers_to_drop {drop} must be distinct indices in 0..{L - 1}; bad: {bad}")
        if len(drop) == L:
            raise ValueError(f"Cannot drop all {L} layers; keep at least one.")
    keep = [i for i in range(L) if i not in set(drop)]
    updates: dict[str, Any] = {"num_hidden_layers": len(keep)}
    if isinstance(getattr(c, "layer_types", None), list):
        updates["layer_types"] = [c.layer_types[i] for i in keep]
    if isinstance(getattr(c, "max_window_layers", None), int):  # Qwen2: layers >= this index slide
        updates["max_window_layers"] = sum(i < c.max_window_layers for i in keep)
    _check_config(c, **updates)

    new = copy.deepcopy(model)
    base = arch.base(new)
    base.layers = nn.ModuleList([base.layers[i] for i in keep])
    for j, layer in enumerate(base.layers):
        arch.attention(layer).layer_idx = j  # the KV cache slot of this layer
    for key, value in updates.items():
        setattr(new.config, key, value)
    if hasattr(base, "has_sliding_layers"):
        base.has_sliding_layers = "sliding_attention" in (new.config.layer_types or [])
    return _log_step(model, new, {"op": "prune_depth", "dropped_layers": sorted(drop), "criterion": criterion,
                                  "contiguous": contiguous, "before": {"num_hidden_layers": L},
                                  "after": {"num_hidden_layers": len(keep)},
                                  "importance": None if importance is None else importance.describe()})


def pruning_recipe(model: PreTrainedModel, parent: str, **extra: Any) -> dict[str, Any]:
    """The ``recipe`` for ``helpers.models.save_model``: parent, the pruning steps, the parameter count."""
    return {"parent": str(parent), "steps": list(getattr(model, "workbook_steps", [])),
            "params": count_parameters(model.config), **extra}
