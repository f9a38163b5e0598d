"""Text sources, token blocks, calibration sampling and chat examples (no network, tiny tokenizer)."""

from __future__ import annotations

import gzip
import json

import datasets
import pytest
import torch

from helpers import data
from tests.test_models import tiny_tokenizer


def words(n: int, start: int = 3) -> str:
    return " ".join(f"t{start + (i % 100)}" for i in range(n))


@pytest.fixture
def tok():
    return tiny_tokenizer()


def test_token_blocks_pack_documents_with_eos(tok):
    blocks = data.token_blocks([words(5), words(6)], tok, block_size=4)
    assert blocks.shape == (3, 4)  # 5 + 1 + 6 + 1 = 13 tokens -> 3 blocks, remainder dropped
    assert blocks.flatten()[5].item() == tok.eos_token_id
    assert data.token_blocks([words(50)], tok, block_size=8, max_blocks=2).shape == (2, 8)
    with pytest.raises(ValueError, match="not enough"):
        data.token_blocks([words(2)], tok, block_size=64)


def test_local_txt_jsonl_and_saved_dataset_give_same_texts(tok, tmp_path):
    docs = [words(20, 3), words(30, 10), words(10, 50)]
    (tmp_path / "a.txt").write_text("\n\n".join(docs))
    with gzip.open(tmp_path / "b.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    datasets.Dataset.from_dict({"text": docs}).save_to_disk(str(tmp_path / "ds"))
    for source in ("a.txt", "b.jsonl.gz", "ds"):
        assert data.load_texts(str(tmp_path / source)) == docs, source
    blocks = data.load_blocks(tok, str(tmp_path / "ds"), block_size=8)
    assert blocks.shape == (7, 8)


def test_bad_sources_get_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="split"):
        data.corpus_path("validation")
    monkeypatch.setenv("WORKBOOK_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="make corpus"):
        data.load_texts("embedded", "train")
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(ValueError, match=".txt, .jsonl"):
        data.load_texts(str(tmp_path / "x.csv"))
    with pytest.raises(ValueError, match="needs internet"):
        data.load_texts("no-such-dataset-anywhere-xyz")


def test_sample_batches_are_seeded_and_capped():
    blocks = torch.arange(40).view(20, 2)
    a = data.sample_batches(blocks, n_samples=10, batch_size=4, seed=1)
    b = data.sample_batches(blocks, n_samples=10, batch_size=4, seed=1)
    assert [x.shape[0] for x in a] == [4, 4, 2]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sum(len(x) for x in data.sample_batches(blocks, n_samples=1024)) == 20
    assert len({tuple(r.tolist()) for x in a for r in x}) == 10  # no row twice


def test_chat_examples_mask_the_prompt(tok):
    pair = data.ChatPair(prompt=words(3), response=words(4, 20), topic="t", style="qa")
    ex = data.chat_examples([pair], tok)[0]
    assert ex["input_ids"].shape == ex["labels"].shape == (8,)
    assert (ex["labels"][:3] == -100).all() and ex["labels"][-1].item() == tok.eos_token_id


def test_chat_blocks_pack_prompted_responses(tok, monkeypatch):
    pairs = [data.ChatPair(prompt=words(3, 10 * i), response=words(5 + i, 50 + i), topic="t", style="qa")
             for i in range(4)]
    monkeypatch.setattr(data.chat, "chat_pairs", lambda split="train": pairs)
    examples = data.chat_examples(pairs, tok, max_length=None)
    stream_ids = torch.cat([e["input_ids"] for e in examples])
    stream_labels = torch.cat([e["labels"] for e in examples])
    out = data.chat_blocks(tok, block_size=8)
    n = len(stream_ids) // 8
    assert out["input_ids"].shape == out["labels"].shape == (n, 8)
    assert torch.equal(out["input_ids"].flatten(), stream_ids[: n * 8])
    assert torch.equal(out["labels"].flatten(), stream_labels[: n * 8])
    scored = out["labels"] != -100  # exactly the response tokens and their EOS, which equal the inputs there
    assert torch.equal(out["labels"][scored], out["input_ids"][scored]) and 0 < scored.sum() < scored.numel()
    assert data.chat_blocks(tok, block_size=8, max_blocks=2)["input_ids"].shape == (2, 8)
    chat = data.training_blocks(tok, block_size=8, max_blocks=2)
    assert torch.equal(chat["labels"], out["labels"][:2]) and data.scored_tokens(chat) == int(scored[:2].sum())
    assert data.scored_tokens({"input_ids": out["input_ids"]}) == out["input_ids"].numel()
    with pytest.raises(ValueError, match="not enough"):
        data.chat_blocks(tok, block_size=10_000)
