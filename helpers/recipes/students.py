"""The two pruned students every later notebook uses, at ~60% of the teacher's parameters.

Notebook 02 saves ``width_pruned`` and notebook 03 ``depth_pruned`` under ``runs/<scale>/models``; any later
notebook calls :func:`load_or_build_student`, which loads the saved one or, when it is missing, recreates it
quickly at the current scale with the same recipe (every notebook runs standalone).

Recipe (Minitron, Muralidharan et al. 2024): activation importance on calibration batches of the training
split, then one-shot pruning. Width: the width-only candidate of :func:`helpers.budget.candidate_architectures`
nearest the budget whose axes shrink most evenly. Depth: drop the layers whose removal raises the LM loss
least (``drop_one``), as many as the depth-only candidate nearest the budget requires.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..data import calibration_batches
from ..importance import estimate_importance, layer_importance
from ..models import DEFAULT_TEACHER, load_model, save_model
from ..pruning import candidate_architectures, count_parameters, prune_depth, prune_width, pruning_recipe
from ..workbook import model_dir
from .scores import cached_importance

__all__ = ["STUDENT_KINDS", "TARGET_RATIO", "DEPTH_CRITERION", "WIDTH_AXES", "student_name", "target_architectures",
           "build_student", "save_student", "load_or_build_student"]

STUDENT_KINDS = ("width", "depth")
TARGET_RATIO = 0.6  # of the teacher's parameters
DEPTH_CRITERION = "drop_one"
WIDTH_AXES = ("hidden_size", "intermediate_size", "num_attention_heads")


def student_name(kind: str) -> str:
    if kind not in STUDENT_KINDS:
        raise ValueError(f"Unknown student kind {kind!r}; use one of {STUDENT_KINDS}.")
    return f"{kind}_pruned"


def target_architectures(config: PretrainedConfig, ratio: float = TARGET_RATIO) -> dict[str, dict[str, Any]]:
    """``{"width": candidate, "depth": candidate}`` near ``ratio`` x the parameters of ``config``.

    Width: among width-only candidates within ±5%, the one whose keep-fractions of hidden size, MLP size
    and query heads are most even (then nearest the budget). Depth: the depth-only candidate nearest it.
    """
    if not 0 < ratio < 1:
        raise ValueError(f"ratio={ratio} must be in (0, 1)")
    target = int(ratio * count_parameters(config))
    width = candidate_architectures(config, target, kinds=("width",))
    depth = candidate_architectures(config, target, kinds=("depth",), tolerance=0.1)
    if not width or not depth:
        raise ValueError(f"No width or depth candidate within tolerance of {target:,} parameters.")

    best_width = min(width, key=lambda c: (round(_unevenness(config, c), 2), abs(c["error"])))
    return {"width": best_width, "depth": depth[0]}


def _unevenness(config: PretrainedConfig, candidate: dict[str, Any]) -> float:
    """Spread of the keep-fractions of hidden size, MLP size and query heads (0 = every axis shrinks alike)."""
    fractions = [candidate[a] / getattr(config, a) for a in WIDTH_AXES]
    return max(fractions) - min(fractions)


def build_student(
    kind: str, teacher: PreTrainedModel, batches: list[torch.Tensor], ratio: float = TARGET_RATIO,
    teacher_name: str | None = None,
) -> PreTrainedModel:
    """Prune a new student of ``kind`` from ``teacher`` (unchanged) with activation importance on ``batches``
    (reused from :func:`~helpers.recipes.scores.cached_importance` when ``teacher_name`` names the teacher)."""
    student_name(kind)
    target = target_architectures(teacher.config, ratio)[kind]
    if kind == "width":
        imp = (cached_importance(teacher, batches, teacher_name) if teacher_name
               else estimate_importance(teacher, batches, progress=False))
        sizes = {a: target[a] for a in (*WIDTH_AXES, "num_key_value_heads")}
        return prune_width(teacher, imp, **sizes)
    imp = layer_importance(teacher, batches[:2], criteria=(DEPTH_CRITERION,), progress=False)
    return prune_depth(teacher, num_layers=target["num_hidden_layers"], importance=imp, criterion=DEPTH_CRITERION)


def save_student(
    kind: str, student: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, parent: str, **extra: Any
) -> Path:
    """Save under ``runs/<scale>/models/<kind>_pruned`` with its pruning recipe."""
    return save_model(student, tokenizer, model_dir(student_name(kind)), pruning_recipe(student, parent, **extra))


def load_or_build_student(
    kind: str,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    scale: str,
    parent: str = DEFAULT_TEACHER,
) -> tuple[PreTrainedModel, Path]:
    """The saved ``<kind>_pruned`` student of this scale, or a recreated (and saved) one when missing."""
    path = model_dir(student_name(kind))
    if (path / "config.json").is_file():
        student, _ = load_model(str(path), device=teacher.device)
        return student, path
    print(f"{path} is missing: recreating the {kind}-pruned student at the {scale!r} scale ...")
    student = build_student(kind, teacher, calibration_batches(tokenizer, scale), teacher_name=parent)
    return student, save_student(kind, student, tokenizer, parent, scale=scale)
