"""Synthetic data from the teacher (SDG, sequence-level KD: Kim & Rush 2016): the teacher answers a prompt set.

:func:`sample_answers` is batched generation with the chat template and the KV cache, seeded per batch, so the
same model, prompts, settings and seed give the same answers. :func:`synthetic_pairs` keeps the (prompt,
response) pairs as a ``datasets.Dataset`` under a folder and reuses it while its fingerprint (model weights,
prompts, generation settings) matches; the folder is written atomically. :func:`pair_inputs` turns pairs into
the per-example rows :func:`helpers.distill.distill` trains on, the prompt tokens masked (label -100).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from ..architecture import as_int
from ..data import ChatPair, chat_examples, pad_examples
from ..evaluate import generate, model_fingerprint
from ..io import recover_folder, write_folder_atomically

__all__ = ["GenerationSettings", "sample_answers", "synthetic_pairs", "pair_inputs", "preference_inputs"]

_FINGERPRINT_FILE = "workbook_fingerprint.json"


@dataclass(frozen=True)
class GenerationSettings:
    """How answers are sampled: ``greedy`` or nucleus sampling (``temperature``, ``top_p``), ``max_new_tokens``
    per answer, ``batch_size`` prompts per ``generate`` call (left-padded), ``seed`` (batch i uses seed + i)."""

    max_new_tokens: int = 128
    greedy: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    batch_size: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_new_tokens", "batch_size"):
            if as_int(name, getattr(self, name)) < 1:
                raise ValueError(f"GenerationSettings.{name}={getattr(self, name)!r} is invalid; allowed: an integer >= 1")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationSettings: temperature={self.temperature!r} must be > 0 and top_p="
                             f"{self.top_p!r} in (0, 1]")


def sample_answers(model, tokenizer, prompts: list[str], settings: GenerationSettings = GenerationSettings(),
                   progress: bool = True, desc: str = "generating") -> list[str]:
    """One answer per prompt (new text only), generated in batches of ``settings.batch_size`` with the chat
    template; deterministic for a given model, prompts, settings and seed. A progress bar counts batches."""
    if not prompts or not all(isinstance(p, str) and p.strip() for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty strings")
    size = settings.batch_size
    starts = range(0, len(prompts), size)
    answers: list[str] = []
    for i, start in enumerate(tqdm(starts, desc=desc, disable=not progress, unit="batch")):
        answers += generate(model, tokenizer, prompts[start:start + size], max_new_tokens=settings.max_new_tokens,
                            greedy=settings.greedy, temperature=settings.temperature, top_p=settings.top_p,
                            seed=settings.seed + i)
    return answers


def _fingerprint(model, prompts: list[str], settings: GenerationSettings) -> dict[str, Any]:
    digest = hashlib.sha256(json.dumps(prompts).encode()).hexdigest()
    return {"model": model_fingerprint(model), "prompts_sha256": digest, "n_prompts": len(prompts),
            "settings": asdict(settings)}


def synthetic_pairs(model, tokenizer, prompts: list[str], folder: str | Path,
                    settings: GenerationSettings = GenerationSettings(), progress: bool = True):
    """The teacher's answers to ``prompts`` as a ``datasets.Dataset`` with columns ``prompt`` and ``response``,
    generated once and kept in ``folder`` (``save_to_disk``). Reused while the model's weights, the prompts and the
    settings are the same; anything else regenerates it. Returns ``(dataset, reused)``."""
    import datasets

    folder = recover_folder(folder)
    wanted = _fingerprint(model, prompts, settings)
    stamp = folder / _FINGERPRINT_FILE
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return datasets.load_from_disk(str(folder)), True
    answers = sample_answers(model, tokenizer, prompts, settings, progress=progress, desc="teacher answers")
    dataset = datasets.Dataset.from_dict({"prompt": list(prompts), "response": answers})

    def fill(tmp: Path) -> None:
        dataset.save_to_disk(str(tmp))
        (tmp / _FINGERPRINT_FILE).write_text(json.dumps(wanted, indent=1))

    write_folder_atomically(folder, fill)
    return datasets.load_from_disk(str(folder)), False


def pair_inputs(prompts: list[str], responses: list[str], tokenizer, max_length: int) -> dict[str, torch.Tensor]:
    """(prompt, response) pairs -> ``input_ids`` / ``attention_mask`` / ``labels`` ``[n, max_length]`` for
    :func:`helpers.distill.distill`: one row per pair (chat-templated prompt, response, EOS), right-padded;
    labels are -100 on the prompt and the padding, so CE and KD learn the response only."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"need as many responses as prompts (>= 1), got {len(prompts)} prompts and "
                         f"{len(responses)} responses")
    pairs = [ChatPair(p, r, "", "") for p, r in zip(prompts, responses)]
    return pad_examples(chat_examples(pairs, tokenizer, max_length), tokenizer.pad_token_id, max_length)


def preference_inputs(prompts: list[str], chosen: list[str], rejected: list[str], tokenizer, max_length: int
                      ) -> dict[str, torch.Tensor]:
    """Preference rows for ``DistillConfig(preference_weight > 0)``: :func:`pair_inputs` of the ``chosen`` answers
    (e.g. the teacher's) plus ``rejected_input_ids`` / ``rejected_attention_mask`` / ``rejected_labels`` of the
    ``rejected`` ones (e.g. the student's own), all ``[n, max_length]``, row i answering ``prompts[i]``."""
    if len(rejected) != len(chosen):
        raise ValueError(f"need one rejected answer per chosen one, got {len(chosen)} and {len(rejected)}")
    rows = pair_inputs(prompts, chosen, tokenizer, max_length)
    other = pair_inputs(prompts, rejected, tokenizer, max_length)
    return rows | {f"rejected_{k}": v for k, v in other.items()}
