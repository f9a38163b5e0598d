"""Text sources -> fixed-length token blocks, calibration batches and chat-format (prompt, response) pairs.

One entry point serves every source (DESIGN.md section 3):

- ``"embedded"``: the teacher-generated corpus in ``data/corpus`` (``train`` / ``heldout`` splits);
- a local file or folder: ``.txt`` (one document per blank-line-separated paragraph block) or ``.jsonl``
  (a ``text`` field; ``.gz`` allowed), or a folder saved by ``datasets.Dataset.save_to_disk``;
- any ``datasets`` name, e.g. ``"wikitext:wikitext-2-raw-v1"`` (``name:config``), needing internet.
"""

from __future__ import annotations

import gzip
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

SPLITS = ("train", "heldout")


def data_dir() -> Path:
    """The embedded data folder: ``$WORKBOOK_DATA`` or ``<repo>/data``."""
    return Path(os.environ.get("WORKBOOK_DATA", Path(__file__).resolve().parent.parent / "data"))


def corpus_path(split: str) -> Path:
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; the embedded corpus has {SPLITS}.")
    path = data_dir() / "corpus" / f"{split}.jsonl.gz"
    if not path.is_file():
        raise FileNotFoundError(
            f"The embedded corpus file {path} is missing. Rebuild it with `make corpus` "
            "(the teacher generates it; ~40 min on 2 CPU cores), or restore it with `git checkout data/`."
        )
    return path


def _read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_records(split: str = "train") -> list[dict]:
    """Embedded corpus records: ``id, topic, style, prompt, split, text, n_tokens, finished``."""
    return _read_jsonl(corpus_path(split))


def _texts_from_path(path: Path, text_field: str) -> list[str]:
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file():
            import datasets

            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[next(iter(ds))]
            return list(ds[text_field])
        files = sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".jsonl", ".gz"))
        if not files:
            raise FileNotFoundError(f"{path} holds no .txt/.jsonl files and is not a saved dataset.")
        return [t for p in files for t in _texts_from_path(p, text_field)]
    name = path.name.removesuffix(".gz")
    if name.endswith(".jsonl"):
        rows = _read_jsonl(path)
        if rows and text_field not in rows[0]:
            raise KeyError(f"{path} has no {text_field!r} field; fields: {sorted(rows[0])}")
        return [r[text_field] for r in rows]
    if name.endswith(".txt"):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            return [d.strip() for d in f.read().split("\n\n") if d.strip()]
    raise ValueError(f"Unsupported file {path}; use .txt, .jsonl (optionally .gz) or a saved dataset folder.")


def load_texts(source: str = "embedded", split: str = "train", text_field: str = "text") -> list[str]:
    """Documents from ``source`` (see module docstring). ``split`` names the embedded/datasets split."""
    if source == "embedded":
        return [r["text"] for r in load_records(split)]
    path = Path(source).expanduser()
    if path.exists():
        return _texts_from_path(path, text_field)
    import datasets  # a Hub dataset name: needs internet (or a filled HF cache)

    name, _, config = source.partition(":")
    hf_split = {"heldout": "validation"}.get(split, split)
    try:
        ds = datasets.load_dataset(name, config or None, split=hf_split)
    except Exception as err:  # noqa: BLE001 - re-raised with guidance
        raise ValueError(
            f"Could not load {source!r} as a local path or a `datasets` name ({err}). Use 'embedded', a local "
            ".txt/.jsonl file or folder, or a Hub dataset such as 'wikitext:wikitext-2-raw-v1' (needs internet)."
        ) from err
    return [t for t in ds[text_field] if t and t.strip()]


def _pack(documents, block_size: int, max_blocks: int | None) -> list[torch.Tensor]:
    """Concatenate ``documents`` (each a tuple of equal-length id lists, e.g. ``(input_ids, labels)``) and cut
    each stream into ``[n_blocks, block_size]``, stopping once ``max_blocks`` are filled (remainder dropped)."""
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
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
    if block_size < 2:
        raise ValueError(f"block_size must be >= 2, got {block_size}")
    eos = tokenizer.eos_token_id
    docs = ((ids + [eos],) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"])
    return _pack(docs, block_size, max_blocks)[0]


def load_blocks(
    tokenizer,
    source: str = "embedded",
    split: str = "train",
    block_size: int = 512,
    max_blocks: int | None = None,
    text_field: str = "text",
) -> torch.Tensor:
    """``token_blocks(load_texts(source, split), ...)``: LongTensor ``[n_blocks, block_size]``."""
    return token_blocks(load_texts(source, split, text_field), tokenizer, block_size, max_blocks)


def calibration_batches(
    blocks: torch.Tensor, n_samples: int = 1024, batch_size: int = 8, seed: int = 0
) -> list[torch.Tensor]:
    """A seeded sample of ``n_samples`` rows of ``blocks`` ``[n, L]`` as a list of ``[batch_size, L]`` batches.

    Minitron calibrates with ~1024 samples; when ``blocks`` has fewer rows, all are used.
    """
    if n_samples < 1 or batch_size < 1:
        raise ValueError(f"n_samples and batch_size must be >= 1, got {n_samples}, {batch_size}")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(blocks), generator=g)[: min(n_samples, len(blocks))]
    return list(blocks[idx].split(batch_size))


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
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": p.prompt}], add_generation_prompt=True, tokenize=False
    )
    p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    r_ids = tokenizer(p.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (p_ids + r_ids)[:max_length]
    labels = ([-100] * len(p_ids) + r_ids)[:max_length]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}


def chat_blocks(tokenizer, split: str = "train", block_size: int = 512, max_blocks: int | None = None
                ) -> dict[str, torch.Tensor]:
    """The embedded corpus as the teacher wrote it: each response after its chat-templated prompt, packed.

    Like :func:`token_blocks`, examples (prompt + response + EOS) are concatenated and cut into
    ``[n_blocks, block_size]`` ``input_ids``; ``labels`` (same shape, unshifted) are ``-100`` on the prompt
    tokens, so a loss or a perplexity counts only the responses, each scored with its prompt in context.
    """
    examples = (_chat_example(pair, tokenizer, None) for pair in chat_pairs(split))
    ids, labels = _pack(((e["input_ids"].tolist(), e["labels"].tolist()) for e in examples), block_size, max_blocks)
    return {"input_ids": ids, "labels": labels}


def training_blocks(tokenizer, block_size: int = 512, max_blocks: int | None = None, chat: bool = True
                    ) -> dict[str, torch.Tensor]:
    """Training inputs from the embedded train split for :func:`helpers.distill.distill`.

    ``chat=True``: :func:`chat_blocks` (``input_ids`` and ``labels``, each response after its prompt);
    ``chat=False``: the responses alone, packed by :func:`load_blocks` (``input_ids`` only). Shapes ``[n, block_size]``.
    """
    if chat:
        return chat_blocks(tokenizer, split="train", block_size=block_size, max_blocks=max_blocks)
    return {"input_ids": load_blocks(tokenizer, split="train", block_size=block_size, max_blocks=max_blocks)}


def scored_tokens(inputs: dict[str, torch.Tensor]) -> int:
    """How many tokens of ``inputs`` (``input_ids`` and optional ``labels``, -100 = not scored) carry a loss."""
    return int((inputs.get("labels", inputs["input_ids"]) != -100).sum())
