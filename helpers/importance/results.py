"""The result of any importance criterion: per-unit scores (higher = more important), saved as safetensors."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from ..io import write_file_atomically

__all__ = ["Importance"]


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

    def metadata(self) -> dict[str, Any]:
        """The metadata (no tensors): what a pruning recipe records about the scores it used."""
        keys = ("criterion", "head_score", "seq_agg", "batch_agg", "n_samples", "n_tokens", "sizes", "extra")
        return ({k: getattr(self, k) for k in keys} | {"layer_criteria": sorted(self.layers)}
                | {"head_selection": "scores" if self.head_gram is None else "joint"})

    def check_finite(self) -> Importance:
        """``self`` when every score is finite; else ``FloatingPointError`` naming the first decoder layer (or layer
        criterion, or hidden channel) with a NaN or inf score. Non-finite scores come from NaN/inf weights or
        activations (they spread to every later layer, so the first one is where to look), and pruning from them
        would keep arbitrary units: every estimate and every pruning call checks."""
        first: dict[int, list[str]] = {}
        for name in ("heads", "head_gram", "neurons"):
            scores = getattr(self, name)
            if scores is not None and not torch.isfinite(scores).all():
                bad = (~torch.isfinite(scores)).flatten(1).any(1)  # [layers]
                first.setdefault(int(bad.nonzero()[0]), []).append(name)
        if first:
            layer = min(first)
            raise FloatingPointError(
                f"{self.criterion} importance: the {' and '.join(first[layer])} scores of decoder layer {layer} are "
                f"NaN or inf (the first layer affected). The model has non-finite weights or activations there "
                f"(check model.model.layers[{layer}] and the calibration data); pruning from these scores would be "
                "arbitrary.")
        for criterion, scores in self.layers.items():
            if not torch.isfinite(scores).all():
                entry = int((~torch.isfinite(scores)).nonzero()[0])
                raise FloatingPointError(f"{self.criterion} importance: layer criterion {criterion!r} is NaN or inf "
                                         f"at entry {entry} (decoder layer or block start): the model has "
                                         "non-finite weights or activations.")
        if self.channels is not None and not torch.isfinite(self.channels).all():
            channel = int((~torch.isfinite(self.channels)).nonzero()[0])
            raise FloatingPointError(
                f"{self.criterion} importance: hidden channel {channel} has a NaN or inf score; a layer norm output "
                "is non-finite (NaN/inf weights or activations somewhere in the model). Pruning from it would be "
                "arbitrary.")
        return self

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
        tensors = {k: getattr(self, k) for k in ("heads", "head_gram", "neurons", "channels") if getattr(self, k) is not None}
        tensors |= {f"layers.{k}": v for k, v in self.layers.items()}
        tensors = {k: v.detach().float().cpu().contiguous() for k, v in tensors.items()}
        meta = {k: v for k, v in self.metadata().items() if k not in ("layer_criteria", "head_selection")}
        metadata = {"workbook_importance": json.dumps(meta, default=str)}
        return write_file_atomically(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> Importance:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["workbook_importance"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        layers = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("layers.")}
        return cls(heads=tensors.get("heads"), head_gram=tensors.get("head_gram"), neurons=tensors.get("neurons"),
                   channels=tensors.get("channels"), layers=layers, **meta)
