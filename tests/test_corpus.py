"""Corpus prompt design, dedupe/filtering, and the committed corpus's promised sizes."""

from __future__ import annotations

import json

from helpers import data
from helpers.data import corpus
from tests.test_models import tiny_tokenizer


def test_prompt_design_covers_topics_and_styles_with_disjoint_heldout_topics():
    topics = corpus.read_topics(data.data_dir() / "topics.txt")
    assert len(topics) >= 200
    prompts = corpus.build_prompts(topics)
    assert len(prompts) == len(topics) * sum(len(t) for t in corpus.STYLES.values())
    assert len(corpus.STYLES) >= 6
    train = {p.topic for p in prompts if p.split == "train"}
    heldout = {p.topic for p in prompts if p.split == "heldout"}
    assert not train & heldout and len(heldout) >= 20
    assert corpus.build_prompts(topics) == prompts  # seeded
    used = prompts[: corpus.CorpusConfig().max_prompts]
    assert len({p.topic for p in used}) >= 200 and {p.style for p in used} == set(corpus.STYLES)


def test_finalize_dedupes_and_filters(tmp_path):
    tok = tiny_tokenizer()
    long_text = " ".join(f"t{3 + i % 90}" for i in range(60))
    rows = [
        {"id": 0, "topic": "a", "style": "qa", "prompt": "p", "split": "train", "text": long_text, "n_tokens": 60},
        {"id": 1, "topic": "b", "style": "qa", "prompt": "p", "split": "train", "text": long_text.upper(), "n_tokens": 60},
        {"id": 2, "topic": "c", "style": "qa", "prompt": "p", "split": "heldout", "text": "t5 t6", "n_tokens": 2},
        {"id": 3, "topic": "d", "style": "qa", "prompt": "p", "split": "heldout", "text": long_text[::-1].replace("t", "t") + " x", "n_tokens": 61},
    ]
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "00000.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = corpus.finalize(shards, tmp_path, tok, corpus.CorpusConfig())
    assert summary["dropped"] == {"duplicate": 1, "too_short": 1}
    assert summary["sizes"]["train"]["records"] == 1 and summary["sizes"]["heldout"]["records"] == 1
    kept = list(data.read_jsonl(tmp_path / "train.jsonl.gz"))
    assert kept[0]["id"] == 0 and kept[0]["prompt"] == "p"


def test_committed_corpus_meets_the_promised_sizes():
    manifest = json.loads((data.data_dir() / "corpus" / "manifest.json").read_text())
    sizes = manifest["sizes"]
    assert sizes["train"]["tokens"] >= 400_000 and sizes["heldout"]["tokens"] >= 40_000
    assert sizes["train"]["topics"] >= 200
    records = data.load_records("heldout")
    assert len(records) == sizes["heldout"]["records"]
    assert {"prompt", "text", "topic", "style"} <= set(records[0])
