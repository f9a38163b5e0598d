"""Parameter budgets: the exact parameter count of a config, and the smaller architectures near a target count.

:func:`count_parameters` counts a Llama/Mistral/Qwen2 config exactly, without building a model;
:func:`candidate_architectures` enumerates the sizes a pruned model could have (Minitron section 2.4) and keeps
those near a parameter budget. The surgery that builds such a model lives in :mod:`helpers.pruning`.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Iterable

from transformers import PretrainedConfig

from . import architecture as arch
from .importance import model_sizes

KINDS: tuple[str, ...] = ("width", "depth", "both")
SEARCHED: tuple[str, ...] = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                             "num_hidden_layers")


# ----------------------------------------------------------------------------------------------------
# Parameter counts


def _biases(config: PretrainedConfig) -> tuple[bool, bool, bool]:
    """(q/k/v bias, o_proj bias, MLP biases) exactly as each family's modeling file builds them."""
    family = arch.check_supported(config)
    if family == "qwen2":
        return True, False, False
    if family == "llama":
        return bool(config.attention_bias), bool(config.attention_bias), bool(getattr(config, "mlp_bias", False))
    return False, False, False  # mistral


def _count(s: dict[str, int], vocab: int, tied: bool, biases: tuple[bool, bool, bool]) -> int:
    h, i, hd = s["hidden_size"], s["intermediate_size"], s["head_dim"]
    q, kv = s["num_attention_heads"] * hd, s["num_key_value_heads"] * hd
    qkv_bias, o_bias, mlp_bias = biases
    attention = h * (q + 2 * kv) + q * h + qkv_bias * (q + 2 * kv) + o_bias * h
    mlp = 3 * h * i + mlp_bias * (2 * i + h)
    per_layer = attention + mlp + 2 * h  # + input_layernorm, post_attention_layernorm
    return vocab * h * (1 if tied else 2) + s["num_hidden_layers"] * per_layer + h  # + final norm


def count_parameters(config: PretrainedConfig) -> int:
    """Exact parameter count of a Llama/Mistral/Qwen2 config (tied embeddings counted once)."""
    return _count(model_sizes(config), config.vocab_size, bool(config.tie_word_embeddings), _biases(config))


# ----------------------------------------------------------------------------------------------------
# Validation (of a pruned config; also used by the surgery in helpers.pruning)


def _check_config(config: PretrainedConfig, **updates: Any) -> PretrainedConfig:
    """A validated copy of ``config`` with ``updates``; transformers' own checks name what is wrong
    (e.g. Llama requires hidden_size to be a multiple of num_attention_heads)."""
    new = copy.deepcopy(config)
    for key, value in updates.items():
        setattr(new, key, value)
    try:
        if hasattr(new, "validate"):
            new.validate()
    except Exception as err:  # strict-dataclass errors wrap the real ValueError
        raise ValueError(f"The pruned {config.model_type} config would be invalid ({updates}): {err}") from err
    return new


# ----------------------------------------------------------------------------------------------------
# Search space for a parameter budget (Minitron section 2.4: enumerate, keep those near the budget)


def candidate_architectures(
    config: PretrainedConfig,
    target_params: int,
    tolerance: float = 0.05,
    kinds: Iterable[str] = KINDS,
    hidden_multiple: int | None = None,
    intermediate_multiple: int | None = None,
    prune_kv_heads: bool = False,
) -> list[dict[str, Any]]:
    """Configs within ``target_params * (1 ± tolerance)``, sorted by distance to the target.

    Grids: hidden_size and intermediate_size in multiples of ``hidden_multiple`` / ``intermediate_multiple``
    (plus the current values; default: 64 as in Minitron, or the largest power of two <= size / 8 for
    small models, so every axis has at least 8 steps); query heads per KV group 1..current (``prune_kv_heads``: KV groups too);
    num_hidden_layers 1..current. 'width' changes only widths, 'depth' only layers, 'both' both. Each
    dict: kind, the five sizes, params, error (params / target - 1). Configs transformers rejects are skipped.
    """
    arch.check_supported(config)
    kinds = tuple(kinds)
    for kind in kinds:
        if kind not in KINDS:
            raise ValueError(f"Unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    full = count_parameters(config)
    if not 0 < target_params < full:
        raise ValueError(f"target_params={target_params} must be between 0 and the current {full} parameters.")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance={tolerance} must be in (0, 1).")
    s = model_sizes(config)
    H, KV, L = s["num_attention_heads"], s["num_key_value_heads"], s["num_hidden_layers"]
    def grid(step: int | None, size: int) -> list[int]:
        step = step or min(64, 1 << max(0, (size // 8).bit_length() - 1))
        return sorted(set(range(step, size + 1, step)) | {size})

    head_options = [(g * q, g) for g in (range(1, KV + 1) if prune_kv_heads else [KV]) for q in range(1, H // KV + 1)]
    valid: dict[tuple[int, int, int], bool] = {}
    out = []
    for hidden, inter, (heads, kv), layers in itertools.product(
        grid(hidden_multiple, s["hidden_size"]), grid(intermediate_multiple, s["intermediate_size"]),
        head_options, range(1, L + 1)
    ):
        width = (hidden, inter, heads, kv) != (s["hidden_size"], s["intermediate_size"], H, KV)
        kind = "both" if width and layers < L else "width" if width else "depth" if layers < L else None
        if kind not in kinds:
            continue
        sizes = {**s, "hidden_size": hidden, "intermediate_size": inter, "num_attention_heads": heads,
                 "num_key_value_heads": kv, "num_hidden_layers": layers}
        params = _count(sizes, config.vocab_size, bool(config.tie_word_embeddings), _biases(config))
        if abs(params / target_params - 1) > tolerance:
            continue
        if (hidden, heads, kv) not in valid:
            try:
                _check_config(config, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                              head_dim=s["head_dim"])
                valid[(hidden, heads, kv)] = True
            except ValueError:
                valid[(hidden, heads, kv)] = False
        if valid[(hidden, heads, kv)]:
            out.append({"kind": kind, **{k: sizes[k] for k in SEARCHED}, "params": params,
                        "error": params / target_params - 1})
    return sorted(out, key=lambda d: (abs(d["error"]), KINDS.index(d["kind"])))
