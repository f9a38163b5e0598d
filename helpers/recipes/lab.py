"""The best-practices lab (notebook 10): each claim of the recipe tested by a measured comparison.

:class:`Claim` names two models and what the claim predicts of them; :func:`claim_verdict` turns their paired
comparison (``workbook.paired_verdict``: bootstrap over the same evaluation windows) into "agrees", "disagrees" or
"within noise". :func:`ensure_models` reuses the checkpoints earlier notebooks saved and runs a notebook only when a
model it produces is missing. :func:`prune_depth_iteratively` removes layers a few at a time, re-scoring after each
removal (the "iterative importance" side of a claim); :func:`scratch_model` is the student's exact architecture with
a fresh random initialisation (the from-scratch baseline of Minitron's headline).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel

from ..evaluate import Perplexity
from ..importance import layer_importance
from ..io import repo_root
from ..pruning import prune_depth
from ..workbook import Verdict, model_dir, paired_verdict
from .students import DEPTH_CRITERION

__all__ = ["VERDICTS", "Claim", "claim_verdict", "ensure_models", "prune_depth_iteratively", "scratch_model"]

VERDICTS = ("agrees", "disagrees", "within noise")


@dataclass(frozen=True)
class Claim:
    """A claim about two models scored on the same windows. ``prediction``: ``"better"`` (``a`` beats ``b``) or
    ``"no_gain"`` (``a``, which adds something to ``b``, does not beat it: within noise agrees too)."""

    text: str
    a: str
    b: str
    prediction: str = "better"
    evidence: str = ""

    def __post_init__(self) -> None:
        if self.prediction not in ("better", "no_gain"):
            raise ValueError(f"Claim.prediction={self.prediction!r}; allowed: 'better', 'no_gain'")


def claim_verdict(claim: Claim, a: Perplexity, b: Perplexity) -> tuple[str, Verdict]:
    """``(verdict, comparison)``: the paired comparison of ``a`` and ``b`` (lower perplexity wins when the
    interval excludes 0), read against the claim. "better": agrees if ``a`` wins, disagrees if ``b`` wins, else
    within noise. "no_gain": disagrees if ``a`` wins, agrees if ``b`` wins, else within noise (consistent with it)."""
    comparison = paired_verdict(claim.a, a, claim.b, b)
    if not comparison.decided or comparison.winner is None:
        return "within noise", comparison
    a_wins = comparison.winner == claim.a
    if claim.prediction == "better":
        return ("agrees" if a_wins else "disagrees"), comparison
    return ("disagrees" if a_wins else "agrees"), comparison


def ensure_models(needed: dict[str, list[str]], scale_name: str) -> list[str]:
    """``needed``: notebook file name -> model names it saves under ``runs/<scale>/models``. Runs (papermill, at
    ``scale_name``) each notebook with a missing model, in order; returns the notebooks it ran. Raises
    ``RuntimeError`` when a notebook fails or still leaves a model missing."""
    from ..workbook.runner import run_notebooks

    ran = []
    for notebook, names in needed.items():
        if all((model_dir(n) / "config.json").is_file() for n in names):
            continue
        os.environ["WORKBOOK_SCALE"] = scale_name
        if run_notebooks(scale_name, [repo_root() / "notebooks" / notebook], clean=True) != 0:
            raise RuntimeError(f"{notebook} failed while producing {names}; see its output under runs/{scale_name}")
        missing = [n for n in names if not (model_dir(n) / "config.json").is_file()]
        if missing:
            raise RuntimeError(f"{notebook} ran but did not save {missing}")
        ran.append(notebook)
    return ran


def prune_depth_iteratively(model: PreTrainedModel, batches: list[torch.Tensor], num_layers: int, steps: int
                            ) -> PreTrainedModel:
    """Remove layers in ``steps`` rounds down to ``num_layers``, re-scoring (drop-one LM loss on ``batches``) the
    current model before each round; the model passed in is unchanged."""
    total = model.config.num_hidden_layers
    if not 1 <= num_layers < total or steps < 1:
        raise ValueError(f"need 1 <= num_layers < {total} and steps >= 1, got num_layers={num_layers}, steps={steps}")
    current = model
    for k in range(1, steps + 1):
        keep = total - round(k * (total - num_layers) / steps)
        if keep >= current.config.num_hidden_layers:
            continue
        imp = layer_importance(current, batches, criteria=(DEPTH_CRITERION,), progress=False)
        current = prune_depth(current, num_layers=keep, importance=imp, criterion=DEPTH_CRITERION)
    return current


def scratch_model(like: PreTrainedModel, seed: int = 0) -> PreTrainedModel:
    """A model with exactly ``like``'s architecture (a copy of its config) and a fresh random initialisation
    (seeded; the global RNG is left as it was), on ``like``'s device."""
    return fresh_model(like.config, seed).to(like.device)


def fresh_model(config, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised model of ``config`` (a copy is used), seeded without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForCausalLM.from_config(copy.deepcopy(config))

