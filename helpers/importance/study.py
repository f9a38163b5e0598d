"""Importance under every aggregation and every calibration subset, from ONE hooked pass (notebook 01).

``estimate_importance`` reduces the batch dimension on the fly for one (seq_agg, batch_agg) choice. To compare
the choices, and to ask how many calibration samples are enough, :func:`collect_statistics` keeps instead, for
every chunk of ``chunk_size`` consecutive samples and for every sequence aggregation, the sum S1 and the sum of
squares S2 over the chunk's samples of the per-sample scores v [units]. Any batch aggregation over any union
of chunks with n samples then follows exactly, with no further forward pass::

    mean = S1 / n        l2 = sqrt(S2)        var = S2 / n - (S1 / n)^2

The rank statistics that compare two score sets are in ``ranking.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import Tensor
from transformers import PreTrainedModel

from .. import architecture as arch
from ._pass import AGGREGATIONS, HEAD_SCORES, check_choice, hooked_pass
from .activation import head_norms
from .results import Importance

__all__ = ["UNITS", "ImportanceStats", "collect_statistics"]

UNITS: tuple[str, ...] = ("heads", "neurons", "norms")


@dataclass
class ImportanceStats:
    """Per-chunk sums. ``s1[seq_agg][unit]`` and ``s2[seq_agg][unit]``: [n_chunks, layers_or_norms, units];
    ``counts`` [n_chunks] samples per chunk. ``unit`` is heads [L, H], neurons [L, I] or norms [2L+1, hidden]
    (every layer norm's output; a channel's score is the sum over norms)."""

    s1: dict[str, dict[str, Tensor]]
    s2: dict[str, dict[str, Tensor]]
    counts: Tensor
    chunk_size: int
    n_tokens: int
    sizes: dict[str, int] = field(default_factory=dict)
    head_score: str = "output"

    @property
    def n_chunks(self) -> int:
        return len(self.counts)

    @property
    def n_samples(self) -> int:
        return int(self.counts.sum())

    def importance(self, seq_agg: str = "mean", batch_agg: str = "l2", chunks: Iterable[int] | None = None) -> Importance:
        """The scores ``estimate_importance(seq_agg, batch_agg)`` would give on the samples of ``chunks``
        (default: all)."""
        check_choice("batch_agg", batch_agg, AGGREGATIONS)
        if seq_agg not in self.s1:
            raise ValueError(f"seq_agg {seq_agg!r} was not collected; collected: {sorted(self.s1)}")
        idx = torch.arange(self.n_chunks) if chunks is None else torch.as_tensor(list(chunks), dtype=torch.long)
        if idx.numel() == 0 or idx.min() < 0 or idx.max() >= self.n_chunks:
            raise ValueError(f"chunks must be a non-empty selection of 0..{self.n_chunks - 1}")
        n = self.counts[idx].sum().double()

        def reduce(unit: str) -> Tensor:
            s1, s2 = self.s1[seq_agg][unit][idx].sum(0), self.s2[seq_agg][unit][idx].sum(0)
            if batch_agg == "l2":
                return s2.sqrt().float()
            mean = s1 / n
            return (mean if batch_agg == "mean" else (s2 / n - mean.square()).clamp_min(0)).float()

        return Importance(heads=reduce("heads"), neurons=reduce("neurons"), channels=reduce("norms").sum(0),
                          head_score=self.head_score, seq_agg=seq_agg, batch_agg=batch_agg, n_samples=int(n),
                          n_tokens=int(n) * (self.n_tokens // max(self.n_samples, 1)), sizes=self.sizes,
                          extra={"chunks": idx.tolist()}).check_finite()


class _ChunkSums:
    """Per-chunk sums S1, S2 [layers_or_norms, units] (float64) of per-sample scores, for every sequence
    aggregation and unit; ``offset`` is the index of the first sample of the current batch."""

    def __init__(self, shapes: dict[str, tuple[int, int]], seq_aggs: tuple[str, ...], chunk_size: int) -> None:
        self.shapes, self.seq_aggs, self.chunk_size, self.offset = shapes, seq_aggs, chunk_size, 0
        self.sums: dict[str, dict[str, list[Tensor]]] = {k: {f"{how}.{u}": [] for how in seq_aggs for u in UNITS}
                                                         for k in ("s1", "s2")}

    def add(self, unit: str, row: int, x: Tensor) -> None:
        """``x`` [B, S, units] -> per-sample, per-chunk sums.

        Two moments over the sequence give all three aggregations: m1 = mean |x|, m2 = mean x^2;
        mean = m1, l2 = sqrt(S * m2), var = m2 - m1^2 (torch.var over [B, S, 4h] would cost as much as
        the layer's matmuls). For bf16 x the sums accumulate in float32 and are rounded once to bf16."""
        S = x.shape[1]
        m1 = x.abs().sum(1).double() / S  # [B, units]
        m2 = (x * x).sum(1).double() / S
        per_sample = {"mean": m1, "l2": (S * m2).sqrt(), "var": (m2 - m1.square()).clamp_min(0)}
        chunk_of = (self.offset + torch.arange(x.shape[0])) // self.chunk_size  # [B]
        needed = int(chunk_of.max()) + 1
        for how in self.seq_aggs:
            v = per_sample[how].cpu()
            for k, val in (("s1", v), ("s2", v.square())):
                store = self.sums[k][f"{how}.{unit}"]
                while len(store) < needed:
                    store.append(torch.zeros(self.shapes[unit], dtype=torch.float64))
                for c in chunk_of.unique().tolist():
                    store[c][row] += val[chunk_of == c].sum(0)

    def stacked(self) -> dict[str, dict[str, dict[str, Tensor]]]:
        return {k: {how: {u: torch.stack(self.sums[k][f"{how}.{u}"]) for u in UNITS} for how in self.seq_aggs}
                for k in ("s1", "s2")}


def _attach(model: PreTrainedModel, sums: _ChunkSums, head_score: str) -> list:
    decoder_layers, config = arch.layers(model), model.config
    L, H, hd = len(decoder_layers), config.num_attention_heads, arch.head_dim(config)

    def head_hook(i: int):
        def hook(module, args):  # o_proj input [B, S, heads * head_dim] -> per-head norms [B, S, heads]
            sums.add("heads", i, head_norms(args[0], module, H, hd, head_score))
        return hook

    handles = []
    for i, layer in enumerate(decoder_layers):
        handles.append(arch.attention(layer).o_proj.register_forward_pre_hook(head_hook(i)))
        handles.append(arch.mlp(layer).down_proj.register_forward_pre_hook(
            lambda m, args, i=i: sums.add("neurons", i, args[0])))
        for j, norm in enumerate(arch.layer_norms(layer)):
            handles.append(norm.register_forward_hook(lambda m, a, out, r=2 * i + j: sums.add("norms", r, out)))
    handles.append(arch.final_norm(model).register_forward_hook(lambda m, a, out: sums.add("norms", 2 * L, out)))
    return handles


def collect_statistics(
    model: PreTrainedModel,
    batches: Iterable[Tensor],
    chunk_size: int = 64,
    seq_aggs: Sequence[str] = AGGREGATIONS,
    autocast: bool = True,
    progress: bool = True,
    head_score: str = "output",
) -> ImportanceStats:
    """One hooked pass over ``batches`` (LongTensors [batch, seq]) keeping per-chunk sums (module docstring).

    Chunk sums are kept in float64, so a union of chunks equals a single pass over its samples (in float32,
    to rounding; under bf16 autocast the "var" aggregation, computed here from two moments, can differ from
    ``estimate_importance``'s two-pass variance by about 1%). The model is not modified; hooks are removed even on error.
    """
    arch.check_supported(model)
    seq_aggs = tuple(seq_aggs)
    check_choice("head_score", head_score, HEAD_SCORES)
    for how in seq_aggs:
        check_choice("seq_agg", how, AGGREGATIONS)
    chunk_size = arch.as_int("chunk_size", chunk_size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    c, L = model.config, model.config.num_hidden_layers
    shapes = {"heads": (L, c.num_attention_heads), "neurons": (L, c.intermediate_size),
              "norms": (2 * L + 1, c.hidden_size)}
    sums = _ChunkSums(shapes, seq_aggs, chunk_size)

    def advance(ids: Tensor) -> None:
        sums.offset += ids.shape[0]

    n, n_tokens = hooked_pass(model, batches, _attach(model, sums, head_score), autocast, progress,
                              "importance statistics", after_batch=advance)
    n_chunks = (n + chunk_size - 1) // chunk_size
    counts = torch.tensor([min(chunk_size, n - k * chunk_size) for k in range(n_chunks)])
    stacked = sums.stacked()
    return ImportanceStats(stacked["s1"], stacked["s2"], counts, chunk_size, n_tokens, arch.model_sizes(model),
                           head_score)
