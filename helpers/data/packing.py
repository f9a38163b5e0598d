"""Documents -> fixed-length token blocks ``[n_blocks, block_size]``, and seeded batches drawn from them.

Packing (documents joined by EOS and cut into non-overlapping blocks, the remainder dropped) wastes no compute on
padding; every perplexity, calibration set and training set of the workbook is built this way.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

from ..architecture import as_int
from .sources import load_texts

__all__ = ["token_blocks", "load_blocks", "sample_batches", "scored_tokens", "pack"]


def _check_sizes(block_size: int, max_blocks: int | None) -> tuple[int, int | None]:
    block_size = as_int("block_size", block_size)
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    if max_blocks is not None:
        max_blocks = as_int("max_blocks", max_blocks)
        if max_blocks < 1:
            raise ValueError(f"max_blocks must be >= 1 (or None for all), got {max_blocks}")
    return block_size, max_blocks


def pack(documents: Iterable[Sequence[Sequence[int]]], block_size: int, max_blocks: int | None
         ) -> list[torch.Tensor]:
    """Concatenate ``documents`` (each a tuple of equal-length id lists, e.g. ``(input_ids, labels)``) and cut
    each stream into ``[n_blocks, block_size]``, stopping once ``max_blocks`` are filled (remainder dropped)."""
    block_size, max_blocks = _check_sizes(block_size, max_blocks)
    streams: list[list[int]] | None = None
    need = None if max_blocks is None else max_blocks * block_size
    for doc in documents:
        streams = streams or [[] for _ in doc]
        for stream, part in zip(streams, doc):
            stream.extend(part)
        if need is not None and len(streams[0]) >= need:
            break
    total = len(streams[0]) if streams else 0
    n = total // block_size if need is None else min(total // block_size, max_blocks)
    if n == 0:
        raise ValueError(f"Only {total} tokens: not enough for one block of {block_size}.")
    return [torch.tensor(stream[: n * block_size], dtype=torch.long).view(n, block_size) for stream in streams]


def token_blocks(texts: list[str], tokenizer, block_size: int = 512, max_blocks: int | None = None) -> torch.Tensor:
    """Pack documents into ``[n_blocks, block_size]`` token ids.

    Each document is followed by the EOS token, documents are concatenated, and the stream is cut into
    non-overlapping blocks (the remainder is dropped). Packing wastes no compute on padding.
    """
    block_size, max_blocks = _check_sizes(block_size, max_blocks)
    eos = tokenizer.eos_token_id
    docs = ((ids + [eos],) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return pack(docs, block_size, max_blocks)[0]


def load_blocks(
    tokenizer,
    source: str = "embedded",
    split: str = "train",
    block_size: int = 512,
    max_blocks: int | None = None,
    text_field: str = "text",
) -> torch.Tensor:
    """``token_blocks(load_texts(source, split), ...)``: LongTensor ``[n_blocks, block_size]``."""
    _check_sizes(block_size, max_blocks)  # before reading any file
    return token_blocks(load_texts(source, split, text_field), tokenizer, block_size, max_blocks)


def sample_batches(
    blocks: torch.Tensor, n_samples: int = 1024, batch_size: int = 8, seed: int = 0
) -> list[torch.Tensor]:
    """A seeded sample of ``n_samples`` rows of ``blocks`` ``[n, L]`` as a list of ``[batch_size, L]`` batches.

    Minitron calibrates with ~1024 samples; when ``blocks`` has fewer rows, all are used.
    """
    n_samples, batch_size = as_int("n_samples", n_samples), as_int("batch_size", batch_size)
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples and batch_size must be >= 1, got {n_samples}, {batch_size}")
    g = torch.Generator().manual_seed(as_int("seed", seed))
    idx = torch.randperm(len(blocks), generator=g)[: min(n_samples, len(blocks))]
    return list(blocks[idx].split(batch_size))


def scored_tokens(inputs: dict[str, torch.Tensor]) -> int:
    """How many tokens of ``inputs`` (``input_ids`` and optional ``labels``, -100 = not scored) carry a loss."""
    return int((inputs.get("labels", inputs["input_ids"]) != -100).sum())
