"""The corpus as conversations: (prompt, response) pairs, chat-templated examples and packed chat blocks.

:func:`chat_prompt` is the one place that wraps a user message in the tokenizer's chat template (generation,
corpus building and training all call it), so every stage sees prompts exactly as the teacher did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .packing import load_blocks, pack
from .sources import load_records

__all__ = ["ChatPair", "chat_prompt", "chat_pairs", "chat_examples", "chat_blocks", "training_blocks", "prompt_ids",
           "pad_examples"]


def chat_prompt(tokenizer, message: str) -> str:
    """``message`` as the user turn of the tokenizer's chat template, ending with the assistant's generation
    prompt (text, not ids). A tokenizer without a chat template gets ``message`` unchanged."""
    if not getattr(tokenizer, "chat_template", None):
        return message
    return tokenizer.apply_chat_template([{"role": "user", "content": message}], add_generation_prompt=True,
                                         tokenize=False)


@dataclass(frozen=True)
class ChatPair:
    """A (prompt, response) pair from the embedded corpus, for sequence-level KD / SDG."""

    prompt: str
    response: str
    topic: str
    style: str


def chat_pairs(split: str = "train") -> list[ChatPair]:
    return [ChatPair(r["prompt"], r["text"], r["topic"], r["style"]) for r in load_records(split)]


def chat_examples(pairs: list[ChatPair], tokenizer, max_length: int | None = 512) -> list[dict[str, torch.Tensor]]:
    """Chat-template each pair; labels are -100 on the prompt so only the response is learned.

    Returns dicts of ``input_ids`` / ``labels`` ``[seq]`` (seq <= max_length; None = no cut).
    """
    return [_chat_example(p, tokenizer, max_length) for p in pairs]


def prompt_ids(tokenizer, message: str) -> list[int]:
    """The token ids of ``message`` as the user turn of the chat template, ending with the generation prompt
    (what the teacher saw before it answered; no special tokens added beyond the template's own)."""
    return tokenizer(chat_prompt(tokenizer, message), add_special_tokens=False)["input_ids"]


def _chat_example(p: ChatPair, tokenizer, max_length: int | None) -> dict[str, torch.Tensor]:
    p_ids = prompt_ids(tokenizer, p.prompt)
    r_ids = tokenizer(p.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p_ids + r_ids)[:max_length]
    labels = ([-100] * len(p_ids) + r_ids)[:max_length]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


def chat_blocks(tokenizer, split: str = "train", block_size: int = 512, max_blocks: int | None = None
                ) -> dict[str, torch.Tensor]:
    """The embedded corpus as the teacher wrote it: each response after its chat-templated prompt, packed.

    Like :func:`helpers.data.token_blocks`, examples (prompt + response + EOS) are concatenated and cut into
    ``[n_blocks, block_size]`` ``input_ids``; ``labels`` (same shape, unshifted) are ``-100`` on the prompt
    tokens, so a loss or a perplexity counts only the responses, each scored with its prompt in context.
    """
    examples = (_chat_example(pair, tokenizer, None) for pair in chat_pairs(split))
    ids, labels = pack(((e["input_ids"].tolist(), e["labels"].tolist()) for e in examples), block_size, max_blocks)
    return {"input_ids": ids, "labels": labels}


def training_blocks(tokenizer, block_size: int = 512, max_blocks: int | None = None, chat: bool = True
                    ) -> dict[str, torch.Tensor]:
    """Training inputs from the embedded train split for :func:`helpers.distill.distill`.

    ``chat=True``: :func:`chat_blocks` (``input_ids`` and ``labels``, each response after its prompt);
    ``chat=False``: the responses alone, packed by :func:`helpers.data.load_blocks` (``input_ids`` only).
    Shapes ``[n, block_size]``.
    """
    if chat:
        return chat_blocks(tokenizer, split="train", block_size=block_size, max_blocks=max_blocks)
    return {"input_ids": load_blocks(tokenizer, split="train", block_size=block_size, max_blocks=max_blocks)}


def pad_examples(examples: list[dict[str, torch.Tensor]], pad_token_id: int, length: int | None = None
                 ) -> dict[str, torch.Tensor]:
    """Right-pad examples (``input_ids`` / ``labels`` ``[seq]`` from :func:`chat_examples`) to one length.

    Returns ``input_ids``, ``attention_mask`` and ``labels`` ``[n, length]`` (``length`` None: the longest
    example; longer examples are cut); padding has attention 0 and label -100, so nothing scores it. This is the
    per-example layout of sequence-level KD and on-policy runs, where each row is one prompt and its answer.
    """
    if not examples:
        raise ValueError("pad_examples got no examples")
    longest = max(len(e["input_ids"]) for e in examples)
    length = longest if length is None else length
    if length < 2:
        raise ValueError(f"length must be >= 2 tokens, got {length}")
    out = {"input_ids": torch.full((len(examples), length), pad_token_id, dtype=torch.long),
           "attention_mask": torch.zeros(len(examples), length, dtype=torch.long),
           "labels": torch.full((len(examples), length), -100, dtype=torch.long)}
    for row, e in enumerate(examples):
        n = min(len(e["input_ids"]), length)
        out["input_ids"][row, :n] = e["input_ids"][:n]
        out["attention_mask"][row, :n] = 1
        out["labels"][row, :n] = e["labels"][:n]
    return out
