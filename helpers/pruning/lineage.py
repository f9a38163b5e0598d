"""What a pruned model remembers: its pruning steps (``workbook_steps``) and the recipe saved beside it."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedModel

from .budget import count_parameters

__all__ = ["log_step", "pruning_recipe"]


def log_step(parent: PreTrainedModel, child: PreTrainedModel, step: dict[str, Any]) -> PreTrainedModel:
    """``child`` with ``parent``'s steps plus ``step`` (a dict saying what was pruned, and with which scores)."""
    child.workbook_steps = [*getattr(parent, "workbook_steps", []), step]
    return child


def pruning_recipe(model: PreTrainedModel, parent: str, **extra: Any) -> dict[str, Any]:
    """The ``recipe`` for ``helpers.models.save_model``: parent, the pruning steps, the parameter count."""
    return {"parent": str(parent), "steps": list(getattr(model, "workbook_steps", [])),
            "params": count_parameters(model.config), **extra}
