"""Architecture adapter: the modules of a Llama-style decoder, by the role they play.

Llama, Mistral and Qwen2 in transformers share one layout (``modeling_llama.py``)::

    model.model.embed_tokens                      [vocab, hidden]
    model.model.layers[i].input_layernorm         RMSNorm(hidden)
    model.model.layers[i].self_attn.{q,k,v,o}_proj
    model.model.layers[i].post_attention_layernorm
    model.model.layers[i].mlp.{gate,up,down}_proj
    model.model.norm                              final RMSNorm(hidden)
    model.lm_head                                 [vocab, hidden] (maybe tied to embed_tokens)

Later modules (importance, pruning, distillation) reach modules only through these functions, so adding a
family means adding it here.
"""

from __future__ import annotations

import copy
import numbers
from typing import Any

import torch
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

__all__ = ["SUPPORTED_FAMILIES", "UnsupportedArchitectureError", "check_supported", "base", "layers", "embed_tokens",
           "final_norm", "lm_head", "attention", "mlp", "layer_norms", "head_dim", "is_tied", "model_sizes",
           "check_config", "as_int", "check_token_ids"]

SUPPORTED_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2")


class UnsupportedArchitectureError(ValueError):
    """Raised for model families whose module layout the workbook does not know."""


def check_supported(model_or_config: PreTrainedModel | PretrainedConfig | Any) -> str:
    """Return the ``model_type`` if supported, else raise naming the supported families.

    Every public entry point that reads a model's modules or config sizes calls this first, so an unsupported
    family always fails with this error, never with an ``AttributeError`` deep inside."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        what = type(model_or_config).__name__
        raise UnsupportedArchitectureError(
            f"Architecture {model_type!r} ({what}) is not supported. Supported Llama-style families: "
            f"{', '.join(SUPPORTED_FAMILIES)}."
        )
    return model_type


def base(model: PreTrainedModel) -> nn.Module:
    """The decoder stack (``model.model``) under the LM head."""
    check_supported(model)
    return model.model


def layers(model: PreTrainedModel) -> nn.ModuleList:
    """The decoder layers, in order."""
    return base(model).layers


def embed_tokens(model: PreTrainedModel) -> nn.Embedding:
    return base(model).embed_tokens


def final_norm(model: PreTrainedModel) -> nn.Module:
    return base(model).norm


def lm_head(model: PreTrainedModel) -> nn.Linear:
    return model.lm_head


def attention(layer: nn.Module) -> nn.Module:
    """``self_attn`` with ``q_proj, k_proj, v_proj, o_proj`` (Qwen2: q/k/v carry a bias)."""
    return layer.self_attn


def mlp(layer: nn.Module) -> nn.Module:
    """``mlp`` with ``gate_proj, up_proj, down_proj``: down(act(gate(x)) * up(x))."""
    return layer.mlp


def layer_norms(layer: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(input_layernorm, post_attention_layernorm)`` of one decoder layer."""
    return layer.input_layernorm, layer.post_attention_layernorm


def head_dim(config: PretrainedConfig) -> int:
    """Per-head width; explicit ``head_dim`` when the config has one, else hidden / heads."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def is_tied(model: PreTrainedModel) -> bool:
    """True when ``lm_head.weight`` is the same tensor as ``embed_tokens.weight``."""
    return lm_head(model).weight is embed_tokens(model).weight


def model_sizes(model_or_config: PreTrainedModel | PretrainedConfig | Any) -> dict[str, int]:
    """The config sizes that importance scores, budgets and pruning are tied to (supported families only)."""
    check_supported(model_or_config)
    c = getattr(model_or_config, "config", model_or_config)
    return {"num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "head_dim": head_dim(c),
            "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size}


def check_config(config: PretrainedConfig, **updates: Any) -> PretrainedConfig:
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


def as_int(name: str, value: Any) -> int:
    """``value`` as a Python int when it is an integer of any kind (int, numpy integer, 0-d integer tensor);
    ``TypeError`` naming ``name`` for floats, bools and everything else (a size of 3.0 or True is a mistake)."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.is_floating_point() \
            and value.dtype != torch.bool:
        return int(value.item())
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value)
    raise TypeError(f"{name}={value!r} ({type(value).__name__}) must be an integer (int, numpy or 0-d torch "
                    "integer); floats and bools are not sizes or indices.")



def check_token_ids(model: PreTrainedModel, ids: torch.Tensor, name: str = "input_ids") -> None:
    """Raise ``ValueError`` naming ``name`` when ``ids`` is not an integer tensor of ids in ``[0, vocab)`` of the
    model's input embedding (an out-of-range id would otherwise fail deep inside as an embedding IndexError)."""
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.dtype == torch.bool:
        got = f"a {ids.dtype} tensor" if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name} must be an integer (LongTensor) tensor of token ids, got {got}.")
    if not ids.numel():
        return
    vocab = model.get_input_embeddings().num_embeddings
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab:
        bad = low if low < 0 else high
        raise ValueError(f"{name} holds token id {bad}, outside the model's vocabulary [0, {vocab}): the ids come from "
                         "another tokenizer or are corrupt. Tokenize with this model's tokenizer.")
