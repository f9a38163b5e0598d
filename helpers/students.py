"""The two pruned students every later notebook uses, at ~60% of the teacher's parameters.

Notebook 02 saves ``width_pruned`` and notebook 03 ``depth_pruned`` under ``runs/<scale>/models``; any later
notebook calls :func:`load_or_build_student`, which loads the saved one or, when it is missing, recreates it
quickly at the current scale with the same recipe (DESIGN.md section 6: notebooks run standalone).

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

from . import data
from .budget import candidate_architectures, count_parameters
from .importance import estimate_importance
from .layer_importance import layer_importance
from .models import load_model, save_model
from .pruning import prune_depth, prune_width, pruning_recipe
from .runs import by_scale, model_dir

KINDS = ("width", "depth")
TARGET_RATIO = 0.6  # of the teacher's parameters
DEPTH_CRITERION = "drop_one"
WIDTH_AXES = ("hidden_size", "intermediate_size", "num_attention_heads")


def student_name(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"Unknown student kind {kind!r}; use one of {KINDS}.")
    return f"{kind}_pruned"


def calibration_settings(scale: str) -> dict[str, int]:
    """Calibration size per scale: ``n_samples`` blocks of ``block_size`` tokens, in batches of ``batch_size``."""
    return by_scale(
        scale,
        smoke={"n_samples": 8, "block_size": 128, "batch_size": 4},
        laptop={"n_samples": 128, "block_size": 512, "batch_size": 8},
        gpu={"n_samples": 1024, "block_size": 2048, "batch_size": 8},
    )


def calibration_batches(tokenizer: PreTrainedTokenizerBase, scale: str, seed: int = 0) -> list[torch.Tensor]:
    """Seeded calibration batches ``[batch, block]`` from the embedded training split."""
    s = calibration_settings(scale)
    blocks = data.load_blocks(tokenizer, split="train", block_size=s["block_size"], max_blocks=4 * s["n_samples"])
    return data.calibration_batches(blocks, s["n_samples"], s["batch_size"], seed=seed)


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

    def unevenness(c: dict[str, Any]) -> float:
        fractions = [c[a] / getattr(config, a) for a in WIDTH_AXES]
        return max(fractions) - min(fractions)

    best_width = min(width, key=lambda c: (round(unevenness(c), 2), abs(c["error"])))
    return {"width": best_width, "depth": depth[0]}


def build_student(
    kind: str, teacher: PreTrainedModel, batches: list[torch.Tensor], ratio: float = TARGET_RATIO
) -> PreTrainedModel:
    """Prune a new student of ``kind`` from ``teacher`` (unchanged) with activation importance on ``batches``."""
    student_name(kind)
    target = target_architectures(teacher.config, ratio)[kind]
    if kind == "width":
        imp = estimate_importance(teacher, batches, progress=False)
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
    parent: str = "smollm2-135m-instruct",
) -> tuple[PreTrainedModel, Path]:
    """The saved ``<kind>_pruned`` student of this scale, or a recreated (and saved) one when missing."""
    path = model_dir(student_name(kind))
    if (path / "config.json").is_file():
        student, _ = load_model(str(path), device=teacher.device)
        return student, path
    print(f"{path} is missing: recreating the {kind}-pruned student at the {scale!r} scale ...")
    student = build_student(kind, teacher, calibration_batches(tokenizer, scale))
    return student, save_student(kind, student, tokenizer, parent, scale=scale)
