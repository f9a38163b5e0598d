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
(:func:`helpers.pruning.select_heads_joint`) instead of the heads with the smallest scores. This is the
layer-wise reconstruction error of OBS-style pruning (Hassibi & Stork 1993; Frantar & Alistarh 2023, SparseGPT,
eq. 1) restricted to removing whole heads without updating the others. Measured on the embedded teacher in
notebook 02, it is what lets activation importance beat weight magnitude when one query head per KV group is kept.

Depth criteria live in ``layer_importance``; the magnitude and random baselines in ``importance_baselines``.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from . import architecture as arch
from .hardware import autocast as fast_autocast
from .residual_probe import ResidualProbe

AGGREGATIONS: tuple[str, ...] = ("mean", "l2", "var")
HEAD_SCORES: tuple[str, ...] = ("output", "input")


@dataclass
class Importance:
    """All scores of one model; higher = more important. Tensors are float32 on CPU.

    ``heads`` [num_hidden_layers, num_attention_heads] (``head_gram`` [layers, heads, heads]: the joint
    removal error of sets of heads, or None), ``neurons`` [num_hidden_layers, intermediate_size],
    ``channels`` [hidden_size], ``layers`` criterion -> [num_hidden_layers] (``angular_n``: [L - n + 1],
    the distance of the block of n layers starting at each layer). ``sizes`` records the model's config
    sizes so pruning can refuse scores of another model.
    """

    heads: Tensor | None = None
    neurons: Tensor | None = None
    channels: Tensor | None = None
    layers: dict[str, Tensor] = field(default_factory=dict)
    criterion: str = "activation"  # "activation" | "magnitude" | "random"
    head_score: str | None = None  # "output" | "input" (activation only; see HEAD_SCORES)
    head_gram: Tensor | None = None  # [num_hidden_layers, heads, heads], see the module docstring
    seq_agg: str | None = None
    batch_agg: str | None = None
    n_samples: int = 0
    n_tokens: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The metadata (no tensors): what a pruning recipe records about the scores it used."""
        keys = ("criterion", "head_score", "seq_agg", "batch_agg", "n_samples", "n_tokens", "sizes", "extra")
        return ({k: getattr(self, k) for k in keys} | {"layer_criteria": sorted(self.layers)}
                | {"head_selection": "scores" if self.head_gram is None else "joint"})

    def merge(self, other: Importance) -> Importance:
        """A copy with ``other``'s layer scores added and its width scores filling our missing ones."""
        out = replace(self, layers={**self.layers, **other.layers}, extra={**self.extra, **other.extra})
        for name in ("heads", "head_gram", "neurons", "channels"):
            if getattr(out, name) is None:
                setattr(out, name, getattr(other, name))
        return out

    def best_block(self, n: int) -> tuple[int, float]:
        """``(start, distance)`` of the most redundant block of ``n`` layers (smallest angular distance)."""
        key = f"angular_{n}"
        if key not in self.layers:
            raise ValueError(f"No {key!r} scores; available layer criteria: {sorted(self.layers)}")
        start = int(self.layers[key].argmin())
        return start, float(self.layers[key][start])

    def save(self, path: str | Path) -> Path:
        """One safetensors file (tensors + JSON metadata), written to a temp file then renamed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: getattr(self, k) for k in ("heads", "head_gram", "neurons", "channels") if getattr(self, k) is not None}
        tensors |= {f"layers.{k}": v for k, v in self.layers.items()}
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        meta = {k: v for k, v in self.describe().items() if k not in ("layer_criteria", "head_selection")}
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            save_file(tensors, str(tmp), metadata={"workbook_importance": json.dumps(meta, default=str)})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> Importance:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["workbook_importance"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        layers = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("layers.")}
        return cls(heads=tensors.get("heads"), head_gram=tensors.get("head_gram"), neurons=tensors.get("neurons"),
                   channels=tensors.get("channels"), layers=layers, **meta)


def model_sizes(model_or_config: Any) -> dict[str, int]:
    """The config sizes importance scores are tied to."""
    c = getattr(model_or_config, "config", model_or_config)
    return {"num_hidden_layers": c.num_hidden_layers, "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.num_key_value_heads, "head_dim": arch.head_dim(c),
            "hidden_size": c.hidden_size, "intermediate_size": c.intermediate_size}


# ----------------------------------------------------------------------------------------------------
# Streaming aggregation: sequence inside a hook, batch across hooks, no host sync until the end


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def _aggregate_sequence(x: Tensor, how: str) -> Tensor:
    """[B, S, U] activations -> [B, U] float32: mean / L2 norm / variance of |x| over the sequence.

    Speed matters (the hooked pass must cost <= 1.15x a plain forward): on CPU, ``x.abs().sum(1)`` is 2-4x
    faster than ``torch.linalg.vector_norm(x, ord=1, dim=1)``, and abs is exact in bf16, so the default "mean"
    never copies ``x`` to float32. For bf16 ``x`` (autocast) the sum still accumulates in float32 inside the
    kernel, but asking for a bf16 output is 2.4x faster than a float32 one (the MLP activations [B, S, 4h] are
    the largest tensor hooked): the per-sample sum is rounded once to bf16 (relative error <= 2^-8, no larger
    than the rounding already in the bf16 activations it sums). fp16 keeps a float32 output (it could overflow).
    """
    if how == "mean":
        if x.dtype == torch.bfloat16:
            return x.abs().sum(1).float() / x.shape[1]
        return x.abs().sum(1, dtype=torch.float32) / x.shape[1]
    x = x.float()
    return x.square().sum(1).sqrt() if how == "l2" else x.abs().var(1, correction=0)


class _BatchStat:
    """Running sum and sum of squares over samples of per-sample scores v [B, U] -> mean / l2 / var [U]."""

    def __init__(self, how: str) -> None:
        self.how, self.n = how, 0
        self.sum: Tensor | None = None
        self.sumsq: Tensor | None = None

    def add(self, v: Tensor) -> None:
        self.n += v.shape[0]
        if self.how in ("mean", "var"):
            s = v.sum(0)
            self.sum = s if self.sum is None else self.sum.add_(s)
        if self.how in ("l2", "var"):
            q = v.square().sum(0)
            self.sumsq = q if self.sumsq is None else self.sumsq.add_(q)

    def result(self) -> Tensor:
        if self.how == "l2":
            return self.sumsq.sqrt()
        mean = self.sum / self.n
        return mean if self.how == "mean" else (self.sumsq / self.n - mean.square()).clamp_min(0)



class _HeadGram:
    """Streaming ``head_gram`` of one layer: S = sum_t z_t z_t^T / ms(x_t) [heads * head_dim, heads * head_dim]
    (z = the o_proj input, x = the post-attention residual), folded with W_O^T W_O at the end. One
    [tokens, heads * head_dim]^T @ [tokens, heads * head_dim] matmul per batch, the cost of o_proj itself;
    no [tokens, heads, hidden] tensor."""

    def __init__(self) -> None:
        self.z: Tensor | None = None
        self.s: Tensor | None = None
        self.n = 0

    def keep_input(self, z: Tensor) -> None:  # o_proj input [B, S, heads * head_dim]
        self.z = z

    def add(self, residual: Tensor, eps: float) -> None:  # post_attention_layernorm input [B, S, hidden]
        norm = torch.linalg.vector_norm(residual, dim=-1, keepdim=True, dtype=torch.float32)  # [B, S, 1]; fused, no fp32 copy
        inv_rms = torch.rsqrt(norm.square() / residual.shape[-1] + eps)  # 1 / sqrt(ms(x) + eps)
        zw = (self.z * inv_rms.to(self.z.dtype)).flatten(0, 1)  # [B * S, heads * head_dim], bf16 under autocast
        s = (zw.T @ zw).float()  # accumulates in float32 inside the matmul; one rounding of each batch's sum
        self.s = s if self.s is None else self.s.add_(s)
        self.n, self.z = self.n + zw.shape[0], None

    def result(self, o_proj: torch.nn.Linear, num_heads: int, head_dim: int) -> Tensor:
        w = o_proj.weight.detach().float()  # [hidden, heads * head_dim]
        blocks = ((w.T @ w) * self.s).view(num_heads, head_dim, num_heads, head_dim)
        return blocks.sum((1, 3)) / self.n  # [heads, heads]


def _as_ids(batch: Any, device: torch.device) -> Tensor:
    ids = batch["input_ids"] if isinstance(batch, dict) else batch
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise TypeError(f"Calibration batches must be LongTensors [batch, seq]; got {type(ids).__name__}")
    return ids.to(device)


@contextmanager
def _hooks(handles: list) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _device(model: PreTrainedModel) -> torch.device:
    return next(model.parameters()).device


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
    The model is not modified; hooks are removed even on error.
    """
    _check_choice("seq_agg", seq_agg, AGGREGATIONS)
    _check_choice("batch_agg", batch_agg, AGGREGATIONS)
    _check_choice("head_score", head_score, HEAD_SCORES)
    decoder_layers, config = arch.layers(model), model.config
    n_heads, hd = config.num_attention_heads, arch.head_dim(config)
    heads = [_BatchStat(batch_agg) for _ in decoder_layers]
    neurons = [_BatchStat(batch_agg) for _ in decoder_layers]
    norms = [_BatchStat(batch_agg) for _ in range(2 * len(decoder_layers) + 1)]
    grams = [_HeadGram() for _ in decoder_layers] if head_gram else None
    probe = ResidualProbe(len(decoder_layers), angular_tokens=None)

    def head_hook(i: int):
        def hook(module, args):  # o_proj input [B, S, heads * head_dim]
            per_token = head_norms(args[0], module, n_heads, hd, head_score)
            heads[i].add(_aggregate_sequence(per_token, seq_agg))  # [B, S, heads] -> [B, heads]
            if grams:
                grams[i].keep_input(args[0])
        return hook

    def gram_hook(i: int, eps: float):
        return lambda module, args: grams[i].add(args[0], eps)  # post_attention_layernorm input

    def input_hook(stat: _BatchStat):
        return lambda module, args: stat.add(_aggregate_sequence(args[0], seq_agg))  # down_proj input

    def output_hook(stat: _BatchStat):
        return lambda module, args, out: stat.add(_aggregate_sequence(out, seq_agg))  # norm output

    handles = []
    for i, layer in enumerate(decoder_layers):
        handles.append(arch.attention(layer).o_proj.register_forward_pre_hook(head_hook(i)))
        if grams:
            post_norm = arch.layer_norms(layer)[1]
            eps = float(getattr(post_norm, "variance_epsilon", getattr(post_norm, "eps", 1e-6)))
            handles.append(post_norm.register_forward_pre_hook(gram_hook(i, eps)))
        handles.append(arch.mlp(layer).down_proj.register_forward_pre_hook(input_hook(neurons[i])))
        for j, norm in enumerate(arch.layer_norms(layer)):
            handles.append(norm.register_forward_hook(output_hook(norms[2 * i + j])))
    handles.append(arch.final_norm(model).register_forward_hook(output_hook(norms[-1])))
    if block_importance:
        handles += probe.attach(decoder_layers)

    device, n_samples, n_tokens = _device(model), 0, 0
    with _hooks(handles), torch.inference_mode(), fast_autocast(device, enabled=autocast):
        for batch in tqdm(batches, desc="importance", disable=not progress):
            ids = _as_ids(batch, device)
            arch.base(model)(input_ids=ids, use_cache=False)
            n_samples, n_tokens = n_samples + ids.shape[0], n_tokens + ids.numel()
    if n_samples == 0:
        raise ValueError("No calibration batches were given.")
    return Importance(
        heads=torch.stack([s.result() for s in heads]).cpu(),
        head_gram=torch.stack([g.result(arch.attention(layer).o_proj, n_heads, hd)
                               for g, layer in zip(grams, decoder_layers)]).cpu() if grams else None,
        neurons=torch.stack([s.result() for s in neurons]).cpu(),
        channels=torch.stack([s.result() for s in norms]).sum(0).cpu(),
        layers={"bi": probe.block_importance()} if block_importance else {},
        head_score=head_score, seq_agg=seq_agg, batch_agg=batch_agg, n_samples=n_samples, n_tokens=n_tokens, sizes=model_sizes(model),
    )
