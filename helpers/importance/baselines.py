"""Baseline importance scores with the same ``Importance`` interface: weight magnitude and random.

Every data-driven criterion must beat these (issue 3); pruning accepts them exactly like activation scores.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .. import architecture as arch
from .results import Importance

__all__ = ["magnitude_importance", "random_importance"]


@torch.no_grad()
def magnitude_importance(model: PreTrainedModel) -> Importance:
    """Weight-magnitude scores (no data). Head: Frobenius norm of its o_proj columns. Neuron: product of
    the L2 norms of its gate_proj row, up_proj row and down_proj column. Channel: L2 norm of every weight
    that writes it (embed_tokens, o_proj and down_proj rows) or reads it (lm_head, q/k/v/gate/up
    columns). Layer (``layers["magnitude"]``): L2 norm of all its weights."""
    arch.check_supported(model)
    config, heads, neurons, layer_norms = model.config, [], [], []
    n_heads, hd = config.num_attention_heads, arch.head_dim(config)
    col_sq = arch.embed_tokens(model).weight.float().square().sum(0)  # [hidden]
    if not arch.is_tied(model):
        col_sq += arch.lm_head(model).weight.float().square().sum(0)
    for layer in arch.layers(model):
        attn, mlp = arch.attention(layer), arch.mlp(layer)
        o = attn.o_proj.weight.float()  # [hidden, heads * head_dim]
        heads.append(torch.linalg.vector_norm(o.view(o.shape[0], n_heads, hd), dim=(0, 2)))
        neurons.append(mlp.gate_proj.weight.float().norm(dim=1) * mlp.up_proj.weight.float().norm(dim=1)
                       * mlp.down_proj.weight.float().norm(dim=0))
        for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            col_sq += reader.weight.float().square().sum(0)
        for writer in (attn.o_proj, mlp.down_proj):
            col_sq += writer.weight.float().square().sum(1)
        layer_norms.append(torch.sqrt(sum(p.float().square().sum() for p in layer.parameters())))
    return Importance(heads=torch.stack(heads).cpu(), neurons=torch.stack(neurons).cpu(), channels=col_sq.sqrt().cpu(),
                      layers={"magnitude": torch.stack(layer_norms).cpu()}, criterion="magnitude",
                      sizes=arch.model_sizes(model)).check_finite()


def random_importance(model: PreTrainedModel, seed: int = 0) -> Importance:
    """Uniform random scores (seeded): the baseline every criterion must beat."""
    s, g = arch.model_sizes(model), torch.Generator().manual_seed(arch.as_int("seed", seed))
    L = s["num_hidden_layers"]
    return Importance(heads=torch.rand(L, s["num_attention_heads"], generator=g),
                      neurons=torch.rand(L, s["intermediate_size"], generator=g),
                      channels=torch.rand(s["hidden_size"], generator=g),
                      layers={"random": torch.rand(L, generator=g)}, criterion="random", sizes=s,
                      extra={"seed": seed})
