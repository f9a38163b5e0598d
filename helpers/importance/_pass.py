"""Machinery shared by the importance passes of this package (private to ``helpers.importance``): streaming
aggregation (sequence inside a hook, batch across hooks, no host sync until the end), the joint head statistic,
input checks and the hooked loop over calibration batches."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .. import architecture as arch
from ..hardware import autocast as fast_autocast

AGGREGATIONS: tuple[str, ...] = ("mean", "l2", "var")
HEAD_SCORES: tuple[str, ...] = ("output", "input")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def aggregate_sequence(x: Tensor, how: str) -> Tensor:
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


class BatchStat:
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



class HeadGram:
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


def as_ids(batch: Any, device: torch.device) -> Tensor:
    ids = batch["input_ids"] if isinstance(batch, dict) else batch
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.is_floating_point():
        raise TypeError(f"Calibration batches must be LongTensors [batch, seq]; got {type(ids).__name__}")
    return ids.to(device)


@contextmanager
def removed_after(handles: list) -> Iterator[None]:
    """Remove the hook ``handles`` on exit, even on error."""
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def hooked_pass(model: PreTrainedModel, batches: Iterable[Tensor], handles: list, autocast: bool, progress: bool,
                desc: str, after_batch: Any = None) -> tuple[int, int]:
    """Run the decoder stack (no LM head) over ``batches`` with the forward hooks ``handles`` attached (removed
    afterwards, even on error); ``after_batch(ids)`` runs after each batch. Returns (samples, tokens).
    ``ValueError`` when there is no batch; ids are checked against the vocabulary first."""
    device, n_samples, n_tokens = model.device, 0, 0
    with removed_after(handles), torch.inference_mode(), fast_autocast(device, enabled=autocast):
        for batch in tqdm(batches, desc=desc, disable=not progress):
            ids = as_ids(batch, device)
            arch.check_token_ids(model, ids, "calibration batch")
            arch.base(model)(input_ids=ids, use_cache=False)
            if after_batch is not None:
                after_batch(ids)
            n_samples, n_tokens = n_samples + ids.shape[0], n_tokens + ids.numel()
    if n_samples == 0:
        raise ValueError("No calibration batches were given.")
    return n_samples, n_tokens
