"""Width pruning: a NEW, narrower, valid Hugging Face model; the input model is never changed.

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

head_dim never changes (RoPE rotates within a head) and is written explicitly into the config. Which heads stay is
decided in ``heads.py``: by score, or as sets when the scores carry ``head_gram`` (activation importance does by
default). Every pruned model carries ``workbook_steps`` (what was pruned, with which scores) for its recipe.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn
from transformers import PreTrainedModel

from .. import architecture as arch
from ..importance import Importance
from ._surgery import check_importance, head_rows, slice_norm, sliced_linear, target_size, top_indices
from .heads import select_heads, select_heads_joint
from .lineage import log_step

__all__ = ["prune_width"]


def _targets(config: Any, hidden_size: Any, intermediate_size: Any, num_attention_heads: Any,
             num_key_value_heads: Any) -> dict[str, int]:
    """The validated sizes after pruning (``None`` keeps a size): GQA-consistent, and a valid HF config."""
    H, KV = config.num_attention_heads, config.num_key_value_heads
    kv = target_size("num_key_value_heads", num_key_value_heads, KV)
    heads = kv * (H // KV) if num_attention_heads is None else \
        target_size("num_attention_heads", num_attention_heads, H)
    if heads % kv or heads // kv > H // KV:
        allowed = [kv * q for q in range(1, H // KV + 1)]
        raise ValueError(f"num_attention_heads={heads} must be a multiple of num_key_value_heads={kv} with at most "
                         f"{H // KV} query heads per KV group; allowed: {allowed}")
    targets = {"hidden_size": target_size("hidden_size", hidden_size, config.hidden_size),
               "intermediate_size": target_size("intermediate_size", intermediate_size, config.intermediate_size),
               "num_attention_heads": heads, "num_key_value_heads": kv, "head_dim": arch.head_dim(config)}
    arch.check_config(config, **targets)
    return targets


def _kept_heads(importance: Importance, layer: int, config: Any, heads: int, kv: int) -> tuple[Tensor, Tensor]:
    """Weight rows of the kept query heads and of the kept KV heads of one layer."""
    if importance.head_gram is not None:
        q_heads, kv_heads = select_heads_joint(importance.head_gram[layer], config.num_key_value_heads, heads, kv)
    else:
        q_heads, kv_heads = select_heads(importance.heads[layer], config.num_key_value_heads, heads, kv)
    hd = arch.head_dim(config)
    return head_rows(q_heads, hd), head_rows(kv_heads, hd)


def _prune_layer(layer: nn.Module, q_rows: Tensor | None, kv_rows: Tensor | None, neurons: Tensor | None,
                 channels: Tensor | None, t: dict[str, int]) -> None:
    """Replace one decoder layer's projections (and norms) by sliced copies; set its size attributes."""
    attn, mlp = arch.attention(layer), arch.mlp(layer)
    attn.q_proj = sliced_linear(attn.q_proj, q_rows, channels)
    attn.k_proj = sliced_linear(attn.k_proj, kv_rows, channels)
    attn.v_proj = sliced_linear(attn.v_proj, kv_rows, channels)
    attn.o_proj = sliced_linear(attn.o_proj, channels, q_rows)
    mlp.gate_proj = sliced_linear(mlp.gate_proj, neurons, channels)
    mlp.up_proj = sliced_linear(mlp.up_proj, neurons, channels)
    mlp.down_proj = sliced_linear(mlp.down_proj, channels, neurons)
    attn.num_key_value_groups = t["num_attention_heads"] // t["num_key_value_heads"]
    for obj, name, value in ((attn, "num_heads", t["num_attention_heads"]),
                             (attn, "num_key_value_heads", t["num_key_value_heads"]),
                             (mlp, "intermediate_size", t["intermediate_size"]), (mlp, "hidden_size", t["hidden_size"]),
                             (layer, "hidden_size", t["hidden_size"])):
        if hasattr(obj, name):
            setattr(obj, name, value)
    if channels is not None:
        for norm in arch.layer_norms(layer):
            slice_norm(norm, channels)


def _prune_embeddings(model: PreTrainedModel, channels: Tensor) -> None:
    """Keep ``channels`` of embed_tokens, the final norm and lm_head (the tie, if any, survives)."""
    tied, embed = arch.is_tied(model), arch.embed_tokens(model)
    new_embed = nn.Embedding(embed.num_embeddings, len(channels), embed.padding_idx, device="meta")
    new_embed.weight = nn.Parameter(embed.weight.detach()[:, channels.to(embed.weight.device)].clone(),
                                    requires_grad=embed.weight.requires_grad)
    arch.base(model).embed_tokens = new_embed
    slice_norm(arch.final_norm(model), channels)
    model.lm_head = sliced_linear(model.lm_head, None, channels)
    if tied:
        model.lm_head.weight = new_embed.weight  # keep the tie: one tensor, as tie_word_embeddings says


def prune_width(
    model: PreTrainedModel,
    importance: Importance | None,
    hidden_size: int | None = None,
    intermediate_size: int | None = None,
    num_attention_heads: int | None = None,
    num_key_value_heads: int | None = None,
) -> PreTrainedModel:
    """A new model keeping the top-scoring units (``None`` = keep that size). Giving only
    ``num_key_value_heads`` keeps the query heads per group, so num_attention_heads shrinks with it.
    Sizes are integers of any kind (int, numpy, 0-d tensor) in 1..current."""
    c = model.config
    arch.check_supported(c)
    t = _targets(c, hidden_size, intermediate_size, num_attention_heads, num_key_value_heads)
    prune_heads = (t["num_attention_heads"], t["num_key_value_heads"]) != (c.num_attention_heads,
                                                                          c.num_key_value_heads)
    prune_hidden, prune_mlp = t["hidden_size"] != c.hidden_size, t["intermediate_size"] != c.intermediate_size
    needed = [n for n, on in (("channels", prune_hidden), ("neurons", prune_mlp), ("heads", prune_heads)) if on]
    check_importance(importance, model, needed)

    new = copy.deepcopy(model)
    channels = top_indices(importance.channels, t["hidden_size"]) if prune_hidden else None
    for i, layer in enumerate(arch.layers(new)):
        q_rows, kv_rows = _kept_heads(importance, i, c, t["num_attention_heads"], t["num_key_value_heads"]) \
            if prune_heads else (None, None)
        neurons = top_indices(importance.neurons[i], t["intermediate_size"]) if prune_mlp else None
        _prune_layer(layer, q_rows, kv_rows, neurons, channels, t)
    if channels is not None:
        _prune_embeddings(new, channels)
    for key, value in t.items():
        setattr(new.config, key, value)
    before = {k: v for k, v in arch.model_sizes(c).items() if k in t}
    return log_step(model, new, {"op": "prune_width", "before": before, "after": t,
                                 "importance": None if importance is None else importance.metadata()})
