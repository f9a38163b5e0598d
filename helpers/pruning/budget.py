"""Parameter budgets: the exact parameter count of a config, and the smaller architectures near a target count.

:func:`count_parameters` counts a Llama/Mistral/Qwen2 config exactly, without building a model;
:func:`candidate_architectures` enumerates the sizes a pruned model could have (Minitron section 2.4) and keeps
those near a parameter budget. The surgery that builds such a model is in ``width.py`` and ``depth.py``.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable

from transformers import PretrainedConfig

from .. import architecture as arch

__all__ = ["ARCHITECTURE_KINDS", "SEARCHED", "count_parameters", "candidate_architectures"]

ARCHITECTURE_KINDS: tuple[str, ...] = ("width", "depth", "both")
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


def count_parameters(config: PretrainedConfig | Any) -> int:
    """Exact parameter count of a Llama/Mistral/Qwen2 config or model (tied embeddings counted once), without
    building a model."""
    config = getattr(config, "config", config)
    return _count(arch.model_sizes(config), config.vocab_size, bool(config.tie_word_embeddings), _biases(config))


# ----------------------------------------------------------------------------------------------------
# Search space for a parameter budget (Minitron section 2.4: enumerate, keep those near the budget)


def _grid(step: int | None, size: int) -> list[int]:
    """Sizes ``step, 2 step, ... <= size`` plus ``size`` (default step: 64, or the largest power of two
    <= size / 8 for small models, so every axis has at least 8 steps)."""
    step = step or min(64, 1 << max(0, (size // 8).bit_length() - 1))
    return sorted(set(range(step, size + 1, step)) | {size})


def _kind(s: dict[str, int], hidden: int, inter: int, heads: int, kv: int, layers: int) -> str | None:
    width = (hidden, inter, heads, kv) != (s["hidden_size"], s["intermediate_size"], s["num_attention_heads"],
                                           s["num_key_value_heads"])
    deeper_cut = layers < s["num_hidden_layers"]
    return "both" if width and deeper_cut else "width" if width else "depth" if deeper_cut else None


def _check_search(config: PretrainedConfig, target_params: Any, tolerance: float, kinds: Iterable[str]
                  ) -> tuple[int, tuple[str, ...]]:
    arch.check_supported(config)
    kinds = tuple(kinds)
    for kind in kinds:
        if kind not in ARCHITECTURE_KINDS:
            raise ValueError(f"Unknown kind {kind!r}; allowed: {', '.join(ARCHITECTURE_KINDS)}")
    target_params, full = arch.as_int("target_params", target_params), count_parameters(config)
    if not 0 < target_params < full:
        raise ValueError(f"target_params={target_params} must be between 0 and the current {full} parameters.")
    if not 0 < tolerance < 1:
        raise ValueError(f"tolerance={tolerance} must be in (0, 1).")
    return target_params, kinds


def candidate_architectures(
    config: PretrainedConfig,
    target_params: int,
    tolerance: float = 0.05,
    kinds: Iterable[str] = ARCHITECTURE_KINDS,
    hidden_multiple: int | None = None,
    intermediate_multiple: int | None = None,
    prune_kv_heads: bool = False,
) -> list[dict[str, Any]]:
    """Configs within ``target_params * (1 ± tolerance)``, sorted by distance to the target.

    Grids: hidden_size and intermediate_size in multiples of ``hidden_multiple`` / ``intermediate_multiple``
    (plus the current values; default: see :func:`_grid`); query heads per KV group 1..current
    (``prune_kv_heads``: KV groups too); num_hidden_layers 1..current. 'width' changes only widths, 'depth' only
    layers, 'both' both. Each dict: kind, the five sizes, params, error (params / target - 1). Configs
    transformers rejects are skipped.
    """
    target_params, kinds = _check_search(config, target_params, tolerance, kinds)
    s = arch.model_sizes(config)
    H, KV, L = s["num_attention_heads"], s["num_key_value_heads"], s["num_hidden_layers"]
    head_options = [(g * q, g) for g in (range(1, KV + 1) if prune_kv_heads else [KV]) for q in range(1, H // KV + 1)]
    valid: dict[tuple[int, int, int], bool] = {}
    out = []
    for hidden, inter, (heads, kv), layers in itertools.product(
        _grid(hidden_multiple, s["hidden_size"]), _grid(intermediate_multiple, s["intermediate_size"]),
        head_options, range(1, L + 1)
    ):
        kind = _kind(s, hidden, inter, heads, kv, layers)
        if kind not in kinds:
            continue
        sizes = {**s, "hidden_size": hidden, "intermediate_size": inter, "num_attention_heads": heads,
                 "num_key_value_heads": kv, "num_hidden_layers": layers}
        params = _count(sizes, config.vocab_size, bool(config.tie_word_embeddings), _biases(config))
        if abs(params / target_params - 1) > tolerance:
            continue
        if (hidden, heads, kv) not in valid:
            valid[(hidden, heads, kv)] = _valid(config, hidden, heads, kv, s["head_dim"])
        if valid[(hidden, heads, kv)]:
            out.append({"kind": kind, **{k: sizes[k] for k in SEARCHED}, "params": params,
                        "error": params / target_params - 1})
    return sorted(out, key=lambda d: (abs(d["error"]), ARCHITECTURE_KINDS.index(d["kind"])))


def _valid(config: PretrainedConfig, hidden: int, heads: int, kv: int, head_dim: int) -> bool:
    try:
        arch.check_config(config, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                          head_dim=head_dim)
        return True
    except ValueError:
        return False
