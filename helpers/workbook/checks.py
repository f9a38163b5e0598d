"""Verification cells: a notebook's hand-written computation checked against the tested helper."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["check_close"]


def check_close(name: str, ours: Any, reference: Any, atol: float = 1e-5, rtol: float = 1e-4) -> str:
    """Raise if a hand-written result differs from the helper's (tensors or numbers); else a short OK line."""
    a, b = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(reference, dtype=torch.float64)
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    err = (a - b).abs().max().item() if a.numel() else 0.0
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        raise AssertionError(f"{name}: max abs difference {err:.3g} exceeds atol={atol}, rtol={rtol}")
    return f"{name}: OK (max abs difference {err:.2g})"
