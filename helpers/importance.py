"""Which heads, MLP neurons, hidden channels and layers matter: activation-based importance (Minitron).

Width scores come from ONE forward pass with hooks over a small calibration set (Muralidharan et al.
2024, "Compact Language Models via Pruning and Knowledge Distillation", section 2.2)::

    head i of layer l     ||input of o_proj, slice of head i||_2    per token   -> [layers, heads]
    neuron i of layer l   |activation entering down_proj|_i        per token   -> [layers, intermediate]
    channel i             |output of a layer norm|_i, summed over all 2*layers+1 norms -> [hidden]

Each per-token value is reduced over the sequence, then over the batch ("mean", "l2" or "var" each);
Minitron's best is mean over sequence, L2 over batch. All scores are magnitudes (we take |x| before
reducing): NVIDIA ModelOpt's Minitron hooks do the same (``input.abs().mean(seq)``, then L2 over batch),
because SwiGLU activations are signed and a signed mean lets a neuron's large positive and negative
activations cancel, ranking a busy neuron as idle. Higher score = more important, for every criterion.

Depth scores (``layer_importance``): Block Importance BI = 1 - cos(layer input, layer output) averaged
over tokens (ShortGPT, Men et al. 2024); the LM-loss increase when one layer is skipped (Minitron); and
the angular distance arccos(cos(h_l, h_{l+n}))/pi between the residual stream before and after a block of
n layers (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"), by default on the
LAST token as in that paper (in a causal model it is the only position that has seen the whole block).
"""

from __future__ import annotations

import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from . import architecture as arch
from .hardware import autocast as fast_autocast

AGGREGATIONS: tuple[str, ...] = ("mean", "l2", "var")
LAYER_CRITERIA: tuple[str, ...] = ("bi", "drop_one", "angular")
ANGULAR_TOKENS: tuple[str, ...] = ("last", "all")


@dataclass
class Importance:
    """All scores of one model; higher = more important. Tensors are float32 on CPU.

    ``heads`` [num_hidden_layers, num_attention_heads], ``neurons`` [num_hidden_layers, intermediate_size],
    ``channels`` [hidden_size], ``layers`` criterion -> [num_hidden_layers] (``angular_n``: [L - n + 1],
    the distance of the block of n layers starting at each layer). ``sizes`` records the model's config
    sizes so pruning can refuse scores of another model.
    """

    heads: Tensor | None = None
    neurons: Tensor | None = None
    channels: Tensor | None = None
    layers: dict[str, Tensor] = field(default_factory=dict)
    criterion: str = "activation"  # "activation" | "magnitude" | "random"
    seq_agg: str | None = None
    batch_agg: str | None = None
    n_samples: int = 0
    n_tokens: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """The metadata (no tensors): what a pruning recipe records about the scores it used."""
        keys = ("criterion", "seq_agg", "batch_agg", "n_samples", "n_tokens", "sizes", "extra")
        return {k: getattr(self, k) for k in keys} | {"layer_criteria": sorted(self.layers)}

    def merge(self, other: Importance) -> Importance:
        """A copy with ``other``'s layer scores added and its width scores filling our missing ones."""
        out = replace(self, layers={**self.layers, **other.layers}, extra={**self.extra, **other.extra})
        for name in ("heads", "neurons", "channels"):
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
        tensors = {k: getattr(self, k) for k in ("heads", "neurons", "channels") if getattr(self, k) is not None}
        tensors |= {f"layers.{k}": v for k, v in self.layers.items()}
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        meta = {k: v for k, v in self.describe().items() if k != "layer_criteria"}
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
        return cls(heads=tensors.get("heads"), neurons=tensors.get("neurons"), channels=tensors.get("channels"),
                   layers=layers, **meta)


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


def _hidden_states(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


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


class _ResidualProbe:
    """Forward hooks on the decoder layers: Block Importance sums and (optionally) the residual stream
    at every layer boundary for the angular distance. Boundary l is the input of layer l; boundary L the
    output of the last layer (before the final norm)."""

    def __init__(self, num_layers: int, angular_tokens: str | None) -> None:
        self.cos_sums: list[Tensor | None] = [None] * num_layers
        self.states: list[Tensor | None] = [None] * (num_layers + 1)
        self.n_tokens, self.angular_tokens = 0, angular_tokens
        self._last: tuple[Tensor, Tensor] | None = None  # (previous layer's output, its per-token norms)

    def _cos(self, x_in: Tensor, x_out: Tensor) -> Tensor:
        """Per-token cos [B, S] in float32. Layer l's input is layer l-1's output, so its norms are reused
        (2.5x cheaper on CPU than F.cosine_similarity)."""
        x_in, x_out = x_in.float(), x_out.float()  # the residual stream is float32 already (no copy)
        reuse = self._last is not None and self._last[0] is x_in
        norm_in = self._last[1] if reuse else torch.linalg.vector_norm(x_in, dim=-1)
        norm_out = torch.linalg.vector_norm(x_out, dim=-1)
        self._last = (x_out, norm_out)
        return (x_in * x_out).sum(-1) / (norm_in * norm_out).clamp_min(1e-12)

    def attach(self, decoder_layers: Iterable[torch.nn.Module]) -> list:
        layers = list(decoder_layers)

        def hook(i: int):
            def fn(module, args, kwargs, out):
                x_in, x_out = _hidden_states(args, kwargs), out[0] if isinstance(out, tuple) else out
                cos = self._cos(x_in, x_out)  # [B, S]
                self.cos_sums[i] = cos.sum() if self.cos_sums[i] is None else self.cos_sums[i] + cos.sum()
                if i == 0:
                    self.n_tokens += cos.numel()
                if self.angular_tokens is not None:
                    self.states[i] = self._pick(x_in)
                    if i == len(layers) - 1:
                        self.states[i + 1] = self._pick(x_out)
                if i == len(layers) - 1:
                    self._last = None
            return fn

        return [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers)]

    def _pick(self, x: Tensor) -> Tensor:  # [B, S, hidden] -> unit vectors [B, hidden] or [B, S, hidden]
        return F.normalize((x[:, -1] if self.angular_tokens == "last" else x).float(), dim=-1)

    def angular(self, n: int) -> Tensor:
        """Sum over this batch's tokens of arccos(cos(h_l, h_{l+n}))/pi for every start l -> [L - n + 1]."""
        h = torch.stack(self.states)  # [L + 1, B, (S,) hidden], unit norm
        cos = (h[:-n] * h[n:]).sum(-1).clamp(-1.0, 1.0)
        return (torch.arccos(cos) / math.pi).flatten(1).sum(1)

    def block_importance(self) -> Tensor:
        return 1.0 - torch.stack(self.cos_sums).float().cpu() / self.n_tokens  # [L]


def estimate_importance(
    model: PreTrainedModel,
    batches: Iterable[Tensor],
    seq_agg: str = "mean",
    batch_agg: str = "l2",
    autocast: bool = True,
    progress: bool = True,
    block_importance: bool = True,
) -> Importance:
    """Head, neuron and channel scores plus Block Importance (``layers["bi"]``) from one hooked pass.

    ``batches``: LongTensors [batch, seq] of packed token ids. Only the decoder stack runs (no LM head:
    the scores need no logits). ``block_importance=False`` skips BI (about a quarter of the hooks' cost).
    The model is not modified; hooks are removed even on error.
    """
    _check_choice("seq_agg", seq_agg, AGGREGATIONS)
    _check_choice("batch_agg", batch_agg, AGGREGATIONS)
    decoder_layers, config = arch.layers(model), model.config
    n_heads, hd = config.num_attention_heads, arch.head_dim(config)
    heads = [_BatchStat(batch_agg) for _ in decoder_layers]
    neurons = [_BatchStat(batch_agg) for _ in decoder_layers]
    norms = [_BatchStat(batch_agg) for _ in range(2 * len(decoder_layers) + 1)]
    probe = _ResidualProbe(len(decoder_layers), angular_tokens=None)

    def head_hook(stat: _BatchStat):
        def hook(module, args):  # o_proj input [B, S, heads * head_dim]
            x = args[0]
            per_token = torch.linalg.vector_norm(x.view(*x.shape[:2], n_heads, hd), dim=-1, dtype=torch.float32)
            stat.add(_aggregate_sequence(per_token, seq_agg))  # [B, S, heads] -> [B, heads]
        return hook

    def input_hook(stat: _BatchStat):
        return lambda module, args: stat.add(_aggregate_sequence(args[0], seq_agg))  # down_proj input

    def output_hook(stat: _BatchStat):
        return lambda module, args, out: stat.add(_aggregate_sequence(out, seq_agg))  # norm output

    handles = []
    for i, layer in enumerate(decoder_layers):
        handles.append(arch.attention(layer).o_proj.register_forward_pre_hook(head_hook(heads[i])))
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
        neurons=torch.stack([s.result() for s in neurons]).cpu(),
        channels=torch.stack([s.result() for s in norms]).sum(0).cpu(),
        layers={"bi": probe.block_importance()} if block_importance else {},
        seq_agg=seq_agg, batch_agg=batch_agg, n_samples=n_samples, n_tokens=n_tokens, sizes=model_sizes(model),
    )


# ----------------------------------------------------------------------------------------------------
# Depth


@contextmanager
def skip_layer(layer: torch.nn.Module) -> Iterator[None]:
    """Temporarily turn a decoder layer into the identity (its input passes through); restored on exit."""
    previous = layer.__dict__.get("forward")
    layer.forward = lambda hidden_states, *args, **kwargs: hidden_states
    try:
        yield
    finally:
        del layer.forward
        if previous is not None:
            layer.forward = previous


def _lm_loss(model: PreTrainedModel, batches: list[Tensor], autocast: bool) -> float:
    """Token-weighted mean next-token cross-entropy over ``batches``."""
    device, total, count = _device(model), 0.0, 0
    with torch.inference_mode(), fast_autocast(device, enabled=autocast):
        for batch in batches:
            ids = _as_ids(batch, device)
            n = ids.shape[0] * (ids.shape[1] - 1)
            total, count = total + model(input_ids=ids, labels=ids, use_cache=False).loss.float() * n, count + n
    return float(total / count)


def layer_importance(
    model: PreTrainedModel,
    batches: Iterable[Tensor],
    criteria: Iterable[str] = LAYER_CRITERIA,
    block_sizes: Iterable[int] | None = None,
    angular_tokens: str = "last",
    autocast: bool = True,
    progress: bool = True,
) -> Importance:
    """Depth scores in ``Importance.layers`` (higher = more important: drop the lowest).

    ``bi`` [L]: 1 - mean cos(input, output) of each layer (ShortGPT). ``drop_one`` [L]: LM-loss increase
    when that layer alone is skipped (L + 1 passes over ``batches``; ``extra["base_loss"]`` is the full
    model's). ``angular_n`` [L - n + 1] for each n in ``block_sizes`` (default 1..L-1): mean over
    ``angular_tokens`` ("last" as in Gromov et al., or "all") of arccos(cos(h_l, h_{l+n}))/pi;
    ``Importance.best_block(n)`` gives the start of smallest distance. The model is left unchanged.
    """
    criteria = tuple(criteria)
    for c in criteria:
        _check_choice("layer criterion", c, LAYER_CRITERIA)
    _check_choice("angular_tokens", angular_tokens, ANGULAR_TOKENS)
    decoder_layers = arch.layers(model)
    num_layers = len(decoder_layers)
    block_sizes = tuple(range(1, num_layers)) if block_sizes is None else tuple(int(n) for n in block_sizes)
    if "angular" in criteria and not all(1 <= n < num_layers for n in block_sizes):
        raise ValueError(f"block_sizes {block_sizes} must lie in 1..{num_layers - 1} ({num_layers} layers)")
    batches = list(batches)
    if not batches:
        raise ValueError("No calibration batches were given.")
    device = _device(model)
    device_batches = [_as_ids(b, device) for b in batches]
    result = Importance(n_samples=sum(b.shape[0] for b in device_batches),
                        n_tokens=sum(b.numel() for b in device_batches), sizes=model_sizes(model))

    if "bi" in criteria or "angular" in criteria:
        probe = _ResidualProbe(num_layers, angular_tokens if "angular" in criteria else None)
        sums: dict[int, Tensor] = {}
        with _hooks(probe.attach(decoder_layers)), torch.inference_mode(), fast_autocast(device, enabled=autocast):
            for ids in tqdm(device_batches, desc="layer importance", disable=not progress):
                arch.base(model)(input_ids=ids, use_cache=False)
                if "angular" in criteria:
                    for n in block_sizes:
                        sums[n] = probe.angular(n) + sums.get(n, 0.0)
        if "bi" in criteria:
            result.layers["bi"] = probe.block_importance()
        count = result.n_samples if angular_tokens == "last" else result.n_tokens
        result.layers |= {f"angular_{n}": (s / count).float().cpu() for n, s in sums.items()}

    if "drop_one" in criteria:
        base = _lm_loss(model, device_batches, autocast)
        losses = []
        for layer in tqdm(decoder_layers, desc="drop one layer", disable=not progress):
            with skip_layer(layer):
                losses.append(_lm_loss(model, device_batches, autocast))
        result.layers["drop_one"] = torch.tensor(losses) - base
        result.extra["base_loss"] = base
    return result


# ----------------------------------------------------------------------------------------------------
# Baselines with the same results object


@torch.no_grad()
def magnitude_importance(model: PreTrainedModel) -> Importance:
    """Weight-magnitude scores (no data). Head: Frobenius norm of its o_proj columns. Neuron: product of
    the L2 norms of its gate_proj row, up_proj row and down_proj column. Channel: L2 norm of every weight
    that writes it (embed_tokens, o_proj and down_proj rows) or reads it (lm_head, q/k/v/gate/up
    columns). Layer (``layers["magnitude"]``): L2 norm of all its weights."""
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
                      sizes=model_sizes(model))


def random_importance(model: PreTrainedModel, seed: int = 0) -> Importance:
    """Uniform random scores (seeded): the baseline every criterion must beat."""
    s, g = model_sizes(model), torch.Generator().manual_seed(seed)
    L = s["num_hidden_layers"]
    return Importance(heads=torch.rand(L, s["num_attention_heads"], generator=g),
                      neurons=torch.rand(L, s["intermediate_size"], generator=g),
                      channels=torch.rand(s["hidden_size"], generator=g),
                      layers={"random": torch.rand(L, generator=g)}, criterion="random", sizes=s,
                      extra={"seed": seed})
