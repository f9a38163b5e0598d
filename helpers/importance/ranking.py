"""Rank statistics that compare two score vectors: Spearman, Kendall, top-k overlap.

Width pruning ranks heads and neurons *within each layer* (every layer keeps the same number), so those are
compared layer by layer and averaged; hidden channels are ranked once for the whole model.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .results import Importance

__all__ = ["spearman", "kendall", "topk_overlap", "compare"]


def _ranks(x: Tensor) -> Tensor:
    """Ranks 0..n-1 along the last dim (ties broken by position; scores are continuous)."""
    return x.argsort(dim=-1, stable=True).argsort(dim=-1, stable=True).double()


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman rank correlation along the last dim: [..., n] x [..., n] -> [...]."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(-1, keepdim=True), rb - rb.mean(-1, keepdim=True)
    return ((ra * rb).sum(-1) / (ra.square().sum(-1) * rb.square().sum(-1)).sqrt()).float()


def kendall(a: Tensor, b: Tensor) -> Tensor:
    """Kendall's tau-a along the last dim (O(n^2) memory per row: fine for a few thousand units)."""
    a2, b2 = a.reshape(-1, a.shape[-1]).double(), b.reshape(-1, b.shape[-1]).double()
    out = []
    for x, y in zip(a2, b2):
        s = torch.sign(x[:, None] - x[None, :]) * torch.sign(y[:, None] - y[None, :])
        n = x.numel()
        out.append(s.sum() / (n * (n - 1)))
    return torch.stack(out).view(a.shape[:-1]).float()


def topk_overlap(a: Tensor, b: Tensor, keep: float) -> Tensor:
    """Fraction of the top ``keep`` share of units (by ``a``) that ``b`` also keeps, along the last dim."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep={keep} must be in (0, 1]")
    k = max(1, round(keep * a.shape[-1]))
    ka = torch.zeros_like(a, dtype=torch.bool).scatter_(-1, a.topk(k, -1).indices, True)
    kb = torch.zeros_like(b, dtype=torch.bool).scatter_(-1, b.topk(k, -1).indices, True)
    return ((ka & kb).sum(-1).double() / k).float()


def compare(a: Importance, b: Importance, keep: float = 0.6, method: str = "spearman") -> dict[str, float]:
    """``{"heads", "neurons", "channels"}`` -> agreement of two score sets: rank correlation (``method``
    "spearman" or "kendall"; heads and neurons per layer, averaged) or, with ``method="overlap"``, the
    shared fraction of the units each would keep at ``keep``."""
    fn = {"spearman": spearman, "kendall": kendall,
          "overlap": lambda x, y: topk_overlap(x, y, keep)}.get(method)
    if fn is None:
        raise ValueError(f"Unknown method {method!r}; allowed: spearman, kendall, overlap")
    return {name: float(fn(getattr(a, name), getattr(b, name)).mean()) for name in ("heads", "neurons", "channels")}
