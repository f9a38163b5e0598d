"""The answers the variant notebooks (06-08) train on: the teacher's sampled answers to the corpus prompts, kept
once per scale under ``runs/<scale>/sdg/`` (``distill.synthetic_pairs``), so every notebook trains on the same text.
"""

from __future__ import annotations

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..distill import GenerationSettings, synthetic_pairs
from ..workbook import runs_dir

__all__ = ["SDG_TEMPERATURE", "SDG_TOP_P", "teacher_answers"]

SDG_TEMPERATURE = 0.7  # as the embedded corpus was sampled
SDG_TOP_P = 0.9


def teacher_answers(teacher: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str],
                    max_new_tokens: int, batch_size: int = 16, temperature: float = SDG_TEMPERATURE, seed: int = 0,
                    progress: bool = True):
    """``(dataset, reused, settings)``: the teacher's sampled answers to ``prompts`` (a ``datasets.Dataset`` with
    ``prompt`` and ``response``), generated once into ``runs/<scale>/sdg/teacher_<n>x<max_new_tokens>`` and reused
    while the teacher, prompts and settings match."""
    settings = GenerationSettings(max_new_tokens=max_new_tokens, greedy=False, temperature=temperature,
                                  top_p=SDG_TOP_P, batch_size=batch_size, seed=seed)
    folder = runs_dir() / "sdg" / f"teacher_{len(prompts)}x{max_new_tokens}"
    dataset, reused = synthetic_pairs(teacher, tokenizer, prompts, folder, settings, progress=progress)
    return dataset, reused, settings
