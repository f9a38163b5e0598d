"""The corpus as conversations: (prompt, response) pairs, chat-templated examples and packed chat blocks.

:func:`chat_prompt` is the one place that wraps a user message in the tokenizer's chat template (generation,
corpus building and training all call it), so every stage sees prompts exactly as the teacher did.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .packing import load_blocks, pack
from .sources import load_records

__all__ = ["ChatPair", "chat_prompt", "chat_pairs", "chat_examples", "chat_blocks", "training_blocks"]


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


def _chat_example(p: ChatPair, tokenizer, max_length: int | None) -> dict[str, torch.Tensor]:
    p_ids = tokenizer(chat_prompt(tokenizer, p.prompt), add_special_tokens=False)["input_ids"]
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
