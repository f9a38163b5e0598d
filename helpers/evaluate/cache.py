"""Measure each baseline once per scale: perplexities remembered under ``runs/<scale>/evals/``.

The teacher and the pruned students are evaluated by several notebooks on the same windows; on a CPU without bf16
every such evaluation costs minutes. :func:`cached_perplexity` keys a result by a fingerprint of the model's
weights and of the evaluated token ids (and labels), so a notebook reuses the number another one measured, and a
changed model or changed windows are measured anew, never confused with the old ones.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

from ..io import write_json_atomically
from ..workbook.runs import runs_dir
from .perplexity import Perplexity, perplexity

__all__ = ["model_fingerprint", "cached_perplexity"]


@torch.no_grad()
def model_fingerprint(model: nn.Module) -> str:
    """A short hash of a model's architecture and weights (names, shapes and the float64 sum and sum of squares of
    every parameter): equal for the same weights, different after any pruning or training step."""
    h = hashlib.sha256(type(model).__name__.encode())
    for name, p in model.named_parameters():
        x = p.detach().double()
        h.update(f"{name}{tuple(p.shape)}{x.sum().item():.12e}{x.square().sum().item():.12e}".encode())
    return h.hexdigest()[:16]


def _tokens_fingerprint(blocks: torch.Tensor, labels: torch.Tensor | None) -> str:
    h = hashlib.sha256(blocks.to(torch.int64).contiguous().numpy().tobytes())
    h.update(str(tuple(blocks.shape)).encode())
    if labels is not None:
        h.update(labels.to(torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_perplexity(name: str, model: nn.Module, blocks: torch.Tensor, labels: torch.Tensor | None = None,
                      batch_size: int = 4, progress: bool = False) -> Perplexity:
    """``perplexity(model, blocks, labels=labels)``, read from ``runs/<scale>/evals/`` when this model (same
    weights) was already measured on these windows; ``name`` only labels the file. Autocast as the protocol's default.
    """
    key = f"{name}-{model_fingerprint(model)}-{_tokens_fingerprint(blocks, labels)}"
    path = runs_dir() / "evals" / f"{key}.json"
    try:
        record = json.loads(path.read_text())
        return Perplexity(**{**record, "window_nll": tuple(record["window_nll"]),
                             "window_tokens": tuple(record["window_tokens"])})
    except (OSError, ValueError, TypeError, KeyError):
        pass  # not measured yet (or a corrupt record: measured again)
    result = perplexity(model, blocks, batch_size=batch_size, progress=progress, labels=labels)
    write_json_atomically(path, result.as_dict())
    return result
