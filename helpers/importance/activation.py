"""Which heads, MLP neurons, hidden channels and layers matter: activation-based importance (Minitron).

Width scores come from ONE forward pass with hooks over a small calibration set (Muralidharan et al.
2024, "Compact Language Models via Pruning and Knowledge Distillation", section 2.2)::

    head i of layer l     ||W_O[:, head i] z_i||_2 (its output into the residual stream)  per token -> [layers, heads]
                          or Minitron's ||z_i||_2, z_i = slice of head i of the o_proj input (head_score="input")
    neuron i of layer l   |activation entering down_proj|_i        per token   -> [layers, intermediate]
    channel i             |output of a layer norm|_i, summed over all 2*layers+1 norms -> [hidden]

Each per-token value is reduced over the sequence, then over the batch ("mean", "l2" or "var" each);
Minitron's best is mean over sequence, L2 over batch. All scores are magnitudes (we take |x| before
reducing): NVIDIA ModelOpt's Minitron hooks do the same (``input.abs().mean(seq)``, then L2 over batch),
because SwiGLU activations are signed and a signed mean lets a neuron's large positive and negative
activations cancel, ranking a busy neuron as idle. Higher score = more important, for every criterion.

Head scores: Minitron scores head i by the norm of its attention output z_i before ``o_proj``. That ignores
what ``o_proj`` does with it: a head can write a large z_i that ``o_proj`` maps to almost nothing. The default
here (``head_score="output"``) is the norm of what the head actually adds to the residual stream,
||W_O[:, head i] z_i||, read by the same hook. Measured on the embedded teacher (issue 3 note, notebook 02): when
only one query head per KV group is kept, the Minitron score is worse than random, while the output score is far
better than random and level with weight magnitude; elsewhere the two are close. Both are offered.

Heads are removed in sets, and one head's score cannot say what removing several does: heads of a layer write
into the same residual stream, and their outputs can cancel or add up. So the same pass also records, per layer,
``head_gram`` [heads, heads] (``head_gram=True``, the default)::

    head_gram[l, h, g] = mean over tokens t of  <o_h(t), o_g(t)> / ms(x_t)     o_h = W_O[:, head h] z_h

with x_t the residual stream that ``post_attention_layernorm`` reads (ms = mean square, RMSNorm's divisor).
Removing a set R of heads changes what that norm reads by sum_{h in R} o_h(t), so to first order the
mean squared change of its output is sum_{h, g in R} head_gram[l, h, g]: the diagonal prices one head, the
off-diagonal terms price removing heads together. Pruning then removes the set with the smallest joint error
(``helpers.pruning.select_heads_joint``) instead of the heads with the smallest scores. This is the
layer-wise reconstruction error of OBS-style pruning (Hassibi & Stork 1993; Frantar & Alistarh 2023, SparseGPT,
eq. 1) restricted to removing whole heads without updating the others. Measured on the embedded teacher in
notebook 02, it is what lets activation importance beat weight magnitude when one query head per KV group is kept.

Depth criteria live in ``layers.py``; the magnitude and random baselines in ``baselines.py``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor
from transformers import PreTrainedModel

from .. import architecture as arch
from ._pass import AGGREGATIONS, HEAD_SCORES, BatchStat, HeadGram, aggregate_sequence, check_choice, hooked_pass
from .probe import ResidualProbe
from .results import Importance

__all__ = ["head_norms", "estimate_importance"]


def head_norms(z: Tensor, o_proj: torch.nn.Linear, num_heads: int, head_dim: int, head_score: str = "output") -> Tensor:
    """Per-token norm of each head: ``z`` [B, S, heads * head_dim] (the o_proj input) -> [B, S, heads] float32.

    "input": ||z_h|| (Minitron). "output": ||W_h z_h|| with W_h = o_proj.weight[:, head h] [hidden, head_dim], the
    head's contribution to the residual stream, computed as sqrt(z_h^T G_h z_h) with G_h = W_h^T W_h
    [head_dim, head_dim]: no [B, S, heads, hidden] tensor, and head_dim / hidden of the o_proj matmul's cost.
    """
    zh = z.view(*z.shape[:2], num_heads, head_dim)
    if head_score == "input":
        return torch.linalg.vector_norm(zh, dim=-1, dtype=torch.float32)
    w = o_proj.weight.float().view(-1, num_heads, head_dim)  # [hidden, heads, head_dim]
    gram = torch.einsum("nhd,nhe->hde", w, w)  # [heads, head_dim, head_dim]
    zh = zh.float()
    return (torch.einsum("bshd,hde->bshe", zh, gram) * zh).sum(-1).clamp_min(0).sqrt()


class _WidthScores:
    """The hooks of the width pass and what they accumulate: per layer, head and neuron statistics (and
    ``head_gram``); per layer norm (2 per layer + the final one), channel statistics."""

    def __init__(self, model: PreTrainedModel, seq_agg: str, batch_agg: str, head_score: str, head_gram: bool):
        self.model, self.seq_agg, self.head_score = model, seq_agg, head_score
        self.layers = arch.layers(model)
        self.n_heads, self.head_dim = model.config.num_attention_heads, arch.head_dim(model.config)
        self.heads = [BatchStat(batch_agg) for _ in self.layers]
        self.neurons = [BatchStat(batch_agg) for _ in self.layers]
        self.norms = [BatchStat(batch_agg) for _ in range(2 * len(self.layers) + 1)]
        self.grams = [HeadGram() for _ in self.layers] if head_gram else None

    def _head_hook(self, i: int):
        def hook(module, args):  # o_proj input [B, S, heads * head_dim]
            per_token = head_norms(args[0], module, self.n_heads, self.head_dim, self.head_score)
            self.heads[i].add(aggregate_sequence(per_token, self.seq_agg))  # [B, S, heads] -> [B, heads]
            if self.grams:
                self.grams[i].keep_input(args[0])
        return hook

    def _input_hook(self, stat: BatchStat):
        return lambda module, args: stat.add(aggregate_sequence(args[0], self.seq_agg))  # down_proj input

    def _output_hook(self, stat: BatchStat):
        return lambda module, args, out: stat.add(aggregate_sequence(out, self.seq_agg))  # norm output

    def _gram_hook(self, i: int, norm: torch.nn.Module):
        eps = float(getattr(norm, "variance_epsilon", getattr(norm, "eps", 1e-6)))
        return lambda module, args: self.grams[i].add(args[0], eps)  # post_attention_layernorm input

    def attach(self) -> list:
        handles = []
        for i, layer in enumerate(self.layers):
            handles.append(arch.attention(layer).o_proj.register_forward_pre_hook(self._head_hook(i)))
            if self.grams:
                post_norm = arch.layer_norms(layer)[1]
                handles.append(post_norm.register_forward_pre_hook(self._gram_hook(i, post_norm)))
            handles.append(arch.mlp(layer).down_proj.register_forward_pre_hook(self._input_hook(self.neurons[i])))
            for j, norm in enumerate(arch.layer_norms(layer)):
                handles.append(norm.register_forward_hook(self._output_hook(self.norms[2 * i + j])))
        handles.append(arch.final_norm(self.model).register_forward_hook(self._output_hook(self.norms[-1])))
        return handles

    def result(self, **fields) -> Importance:
        grams = None
        if self.grams:
            grams = torch.stack([g.result(arch.attention(layer).o_proj, self.n_heads, self.head_dim)
                                 for g, layer in zip(self.grams, self.layers)]).cpu()
        return Importance(heads=torch.stack([s.result() for s in self.heads]).cpu(), head_gram=grams,
                          neurons=torch.stack([s.result() for s in self.neurons]).cpu(),
                          channels=torch.stack([s.result() for s in self.norms]).sum(0).cpu(),
                          head_score=self.head_score, seq_agg=self.seq_agg, sizes=arch.model_sizes(self.model),
                          **fields)


def estimate_importance(
    model: PreTrainedModel,
    batches: Iterable[Tensor],
    seq_agg: str = "mean",
    batch_agg: str = "l2",
    autocast: bool = True,
    progress: bool = True,
    block_importance: bool = False,
    head_score: str = "output",
    head_gram: bool = True,
) -> Importance:
    """Every width score (heads, ``head_gram``, neurons, channels) from one hooked pass.

    ``batches``: LongTensors [batch, seq] of packed token ids. Only the decoder stack runs (no LM head:
    the scores need no logits). ``head_score``: "output" (default) or "input" (Minitron), see
    :func:`head_norms`. ``block_importance=True`` adds the depth criterion Block Importance (``layers["bi"]``,
    the same as ``layer_importance(criteria=["bi"])``) to this pass; its hooks' cost is measured by
    ``benchmarks/importance_overhead.py --block-importance``.
    ``head_gram=False`` skips the joint head statistic (module docstring); pruning then ranks heads one by one.
    The model is not modified; hooks are removed even on error. ``FloatingPointError`` naming the layer when a
    score is NaN or inf (non-finite weights or activations).
    """
    arch.check_supported(model)
    check_choice("seq_agg", seq_agg, AGGREGATIONS)
    check_choice("batch_agg", batch_agg, AGGREGATIONS)
    check_choice("head_score", head_score, HEAD_SCORES)
    scores = _WidthScores(model, seq_agg, batch_agg, head_score, head_gram)
    handles = scores.attach()
    probe = ResidualProbe(len(scores.layers), angular_tokens=None)
    if block_importance:
        handles += probe.attach(scores.layers)
    n_samples, n_tokens = hooked_pass(model, batches, handles, autocast, progress, "importance")
    return scores.result(layers={"bi": probe.block_importance()} if block_importance else {}, batch_agg=batch_agg,
                         n_samples=n_samples, n_tokens=n_tokens).check_finite()
