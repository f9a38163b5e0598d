"""Measure each baseline once per scale: perplexities remembered under ``runs/<scale>/evals/``.

The teacher and the pruned students are evaluated by several notebooks on the same windows; on a CPU without bf16
every such evaluation costs minutes. :func:`cached_perplexity` keys a result by a fingerprint of the model's
weights and of the evaluated token ids (and labels), so a notebook reuses the number another one measured, and a
changed model or changed windows are measured anew, never confused with the old ones. Each record also keeps a
fingerprint per window, so a subset of windows already measured for these weights (the first 40 of the 106 the
teacher was scored on in notebook 00, say) is read off the record, window by window, instead of measured again.
:func:`remember_perplexity` records a result measured elsewhere (a distillation run's final evaluation).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import torch
from torch import nn

from ..io import write_json_atomically
from ..workbook.runs import runs_dir
from .perplexity import Perplexity, perplexity

__all__ = ["model_fingerprint", "cached_perplexity", "remember_perplexity"]


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
    h = hashlib.sha256(blocks.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    h.update(str(tuple(blocks.shape)).encode())
    if labels is not None:
        h.update(labels.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _window_keys(blocks: torch.Tensor, labels: torch.Tensor | None) -> list[str]:
    """One fingerprint per window ``[n_windows]``: its token ids and, when given, its labels."""
    rows = (blocks if labels is None else torch.cat([blocks, labels.to(blocks.device)], 1)).detach().to("cpu", torch.int64)
    return [hashlib.sha256(row.contiguous().numpy().tobytes()).hexdigest()[:16] for row in rows]


def _from_record(record: dict) -> Perplexity:
    fields = {k: v for k, v in record.items() if k != "window_keys"}
    return Perplexity(**{**fields, "window_nll": tuple(fields["window_nll"]),
                         "window_tokens": tuple(fields["window_tokens"])})


def _from_superset(pattern: str, keys: list[str], window: int) -> Perplexity | None:
    """The windows ``keys`` read off any record of the same weights that measured all of them, else None."""
    for path in sorted((runs_dir() / "evals").glob(pattern)):
        try:
            record = json.loads(path.read_text())
            if record["window_keys"] == keys and record.get("window") == window:
                return _from_record(record)  # the same windows, measured under another name
            where = {k: i for i, k in enumerate(record["window_keys"])}
            rows = [where[k] for k in keys]
            nll = [float(record["window_nll"][i]) for i in rows]
            tokens = [int(record["window_tokens"][i]) for i in rows]
        except (OSError, ValueError, TypeError, KeyError, IndexError):
            continue  # an older record without window keys, a damaged one, or one missing some window
        n_tokens = sum(tokens)
        if n_tokens == 0 or record.get("window") != window:
            continue
        mean = sum(nll) / n_tokens
        return Perplexity(math.exp(mean), mean, n_tokens, len(keys), window, tuple(nll), tuple(tokens))
    return None


def cached_perplexity(name: str, model: nn.Module, blocks: torch.Tensor, labels: torch.Tensor | None = None,
                      batch_size: int = 4, progress: bool = False) -> Perplexity:
    """``perplexity(model, blocks, labels=labels)``, read from ``runs/<scale>/evals/`` when this model (same
    weights) was already measured on these windows, or on a superset of them (the per-window sums of that record,
    so the result equals a fresh measurement up to the order of float additions); ``name`` only labels the file.
    Autocast as the protocol's default.
    """
    weights = model_fingerprint(model)
    path = runs_dir() / "evals" / f"{name}-{weights}-{_tokens_fingerprint(blocks, labels)}.json"
    try:
        return _from_record(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError, KeyError):
        pass  # not measured yet (or a corrupt record: measured again)
    keys = _window_keys(blocks, labels)
    subset = _from_superset(f"*-{weights}-*.json", keys, blocks.shape[1])
    if subset is not None:
        return subset
    result = perplexity(model, blocks, batch_size=batch_size, progress=progress, labels=labels)
    write_json_atomically(path, {**result.as_dict(), "window_keys": keys})
    return result


def remember_perplexity(name: str, model: nn.Module, blocks: torch.Tensor, result: Perplexity,
                        labels: torch.Tensor | None = None) -> Path:
    """Record ``result``, a perplexity of ``model`` (these weights) on ``blocks`` ``[n_windows, window]`` measured
    elsewhere by :func:`perplexity` (a distillation run's final evaluation, say), so that :func:`cached_perplexity`
    of the same weights on these windows or a subset of them reads it instead of measuring again. Returns the file."""
    if len(result.window_nll) != len(blocks):
        raise ValueError(f"result has {len(result.window_nll)} per-window sums for {len(blocks)} windows: "
                         "it was not measured on these blocks")
    path = runs_dir() / "evals" / f"{name}-{model_fingerprint(model)}-{_tokens_fingerprint(blocks, labels)}.json"
    write_json_atomically(path, {**result.as_dict(), "window_keys": _window_keys(blocks, labels)})
    return path
