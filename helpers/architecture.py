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

from typing import Any

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

SUPPORTED_FAMILIES: tuple[str, ...] = ("llama", "mistral", "qwen2")


class UnsupportedArchitectureError(ValueError):
    """Raised for model families whose module layout the workbook does not know."""


def check_supported(model_or_config: PreTrainedModel | PretrainedConfig | Any) -> str:
    """Return the ``model_type`` if supported, else raise naming the supported families."""
    config = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_FAMILIES:
        raise UnsupportedArchitectureError(
            f"Architecture {model_type!r} is not supported. Supported Llama-style families: "
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
