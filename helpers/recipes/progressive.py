"""Progressive shrinking (notebook 08): a teacher assistant between the teacher and the student (Mirzadeh et al.
2020, "Improved knowledge distillation via teacher assistant"), and width students of several sizes for the
capacity-gap curves.

:func:`width_sizes` is a width candidate's sizes (``hidden_size``, ``intermediate_size``, ``num_attention_heads``,
``num_key_value_heads``). :func:`assistant_sizes` picks the assistant's architecture near ``ratio`` x the
teacher's parameters whose every axis is at least the student's, so the student can later be pruned *from the
assistant* to exactly the architecture of the directly pruned student. :func:`prune_width_to` prunes any model to
given sizes with activation importance measured on that model.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel

from ..importance import estimate_importance
from ..pruning import candidate_architectures, count_parameters, prune_width
from .scores import cached_importance
from .students import WIDTH_AXES, _unevenness

__all__ = ["width_sizes", "assistant_sizes", "prune_width_to"]


def width_sizes(candidate: dict[str, Any]) -> dict[str, int]:
    """The four width sizes of a candidate (``candidate_architectures`` / ``target_architectures`` row)."""
    return {a: int(candidate[a]) for a in (*WIDTH_AXES, "num_key_value_heads")}


def assistant_sizes(config: PretrainedConfig, student: dict[str, int], ratio: float = 0.8,
                    tolerance: float = 0.15) -> dict[str, int]:
    """Width sizes nearest ``ratio`` x the parameters of ``config`` (within ``tolerance``) with every axis >=
    ``student``'s; ties go to the most even keep-fractions. Only such an assistant can be pruned to exactly the
    student's architecture. (SmolLM2-135M: hidden sizes must be multiples of the head count, so the nearest
    assistant holding the 60% student is larger than 80%.) ValueError when none fits."""
    if not 0 < ratio < 1:
        raise ValueError(f"ratio={ratio} must be in (0, 1)")
    target = int(ratio * count_parameters(config))
    fits = [c for c in candidate_architectures(config, target, tolerance=tolerance, kinds=("width",))
            if all(c[a] >= student[a] for a in (*WIDTH_AXES, "num_key_value_heads"))]
    if not fits:
        raise ValueError(f"No width candidate within {tolerance:.0%} of {target:,} parameters ({ratio:.0%} of the "
                         f"teacher) keeps every axis at least the student's {student}: raise ratio or tolerance")
    return width_sizes(min(fits, key=lambda c: (round(abs(c["error"]), 2), round(_unevenness(config, c), 2))))


def prune_width_to(model: PreTrainedModel, batches: list[torch.Tensor], sizes: dict[str, int],
                   name: str | None = None) -> PreTrainedModel:
    """A new model: ``model`` (unchanged) pruned to ``sizes`` by activation importance measured on ``model``
    itself with ``batches`` (``[batch, block]`` token ids). ``name`` (the teacher's alias, Hub id or folder) reuses
    the scores :func:`~helpers.recipes.scores.cached_importance` stored for these weights and batches; leave it out
    for a model trained in this session (its scores are measured)."""
    scores = (cached_importance(model, batches, name) if name
              else estimate_importance(model, batches, progress=False))
    return prune_width(model, scores, **sizes)
