"""Where a model's parameters live: an architecture summary, per-component counts and a plot of them."""

from __future__ import annotations

from collections import Counter

from matplotlib.figure import Figure
from transformers import PreTrainedModel

from .. import architecture as arch
from ..workbook.figures import new_figure

__all__ = ["COMPONENTS", "parameters_by_component", "model_summary", "plot_parameters"]

# Parameter-name fragments -> component, in Hugging Face names (first match wins).
COMPONENTS: tuple[tuple[str, str], ...] = (
    ("embed_tokens", "embed_tokens"),
    ("lm_head", "lm_head"),
    ("q_proj", "q_proj"),
    ("k_proj", "k_proj"),
    ("v_proj", "v_proj"),
    ("o_proj", "o_proj"),
    ("gate_proj", "gate_proj"),
    ("up_proj", "up_proj"),
    ("down_proj", "down_proj"),
    ("norm", "norms"),
)


def parameters_by_component(model: PreTrainedModel) -> dict[str, int]:
    """Parameter count per component over all layers; a tied ``lm_head`` is counted once (as embed_tokens)."""
    arch.check_supported(model)
    counts: Counter[str] = Counter()
    for name, p in model.named_parameters():  # named_parameters() yields a shared (tied) tensor once
        component = next((c for frag, c in COMPONENTS if frag in name), "other")
        counts[component] += p.numel()
    return dict(counts)


def model_summary(model: PreTrainedModel) -> dict:
    """Architecture summary and parameter breakdown of a supported decoder.

    Keys: ``model_type, num_hidden_layers, num_attention_heads, num_key_value_heads, head_dim,
    hidden_size, intermediate_size, vocab_size, tied_embeddings, params_total, params_embedding,
    params_non_embedding, params_by_component`` (counts).
    """
    arch.check_supported(model)
    cfg = model.config
    by_comp = parameters_by_component(model)
    total = sum(by_comp.values())
    embedding = by_comp.get("embed_tokens", 0) + by_comp.get("lm_head", 0)
    return {
        "model_type": cfg.model_type,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": arch.head_dim(cfg),
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "vocab_size": cfg.vocab_size,
        "tied_embeddings": arch.is_tied(model),
        "params_total": total,
        "params_embedding": embedding,
        "params_non_embedding": total - embedding,
        "params_by_component": by_comp,
    }


def plot_parameters(model: PreTrainedModel, title: str | None = None) -> Figure:
    """Horizontal bar chart of parameters (millions) per component."""
    info = model_summary(model)
    comps = sorted(info["params_by_component"].items(), key=lambda kv: kv[1])
    fig, ax = new_figure(7, 3.5)
    ax.barh([c for c, _ in comps], [n / 1e6 for _, n in comps], color="tab:blue")
    for i, (_, n) in enumerate(comps):
        ax.text(n / 1e6, i, f" {n / 1e6:.1f}M ({100 * n / info['params_total']:.0f}%)", va="center", fontsize=8)
    ax.set_xlabel("parameters (millions)")
    ax.set_title(title or f"{info['params_total'] / 1e6:.1f}M parameters, by component")
    ax.margins(x=0.25)
    return fig
