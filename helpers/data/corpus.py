"""Build the embedded corpus: the teacher answers a diverse, seeded prompt set (``make corpus``).

Prompt design: every topic in ``data/topics.txt`` x every template of every style below. About one topic
in ten (chosen by the seed) is held out entirely, so the held-out split shares no topic with training.
Responses are sampled in batches with the chat template, deduplicated and length-filtered; each record
keeps its prompt so the synthetic-data distillation notebook can reuse the (prompt, response) pairs.
Generation writes one shard per batch, so an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..io import write_file_atomically, write_json_atomically, write_text_atomically
from .chat import chat_prompt

__all__ = ["STYLES", "CorpusConfig", "Prompt", "read_topics", "build_prompts", "generate_batch", "generate_shards",
           "finalize", "build", "main"]

STYLES: dict[str, tuple[str, ...]] = {
    "explanation": (
        "Explain {topic} to a curious high-school student.",
        "What is the most important idea behind {topic}? Explain it clearly.",
    ),
    "story": (
        "Write a short story about {topic}.",
        "Tell a children's bedtime story that involves {topic}.",
    ),
    "dialogue": (
        "Write a short dialogue between two friends talking about {topic}.",
        "Write a conversation between a teacher and a student about {topic}.",
    ),
    "howto": (
        "Give step-by-step advice for a beginner who wants to learn about {topic}.",
        "How can someone get started with {topic}? Give practical tips.",
    ),
    "qa": (
        "Write three questions about {topic} and answer each one.",
        "What are common misconceptions about {topic}? Correct them.",
    ),
    "list": (
        "List five interesting facts about {topic}.",
        "Make a list of the pros and cons of {topic}.",
    ),
}


@dataclass(frozen=True)
class CorpusConfig:
    """Generation settings recorded in the corpus manifest (defaults: the committed corpus)."""

    seed: int = 1234
    heldout_every: int = 10  # one topic in ten goes to the held-out split
    batch_size: int = 64
    max_new_tokens: int = 256
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.1
    min_tokens: int = 40  # shorter responses are dropped
    max_prompts: int = 2432  # 38 batches of 64: ~470k train + ~50k held-out tokens, ~40 min on 2 CPU cores


@dataclass(frozen=True)
class Prompt:
    id: int
    topic: str
    style: str
    prompt: str
    split: str  # "train" or "heldout"


def read_topics(path: str | Path) -> list[str]:
    topics = [t.strip() for t in Path(path).read_text().splitlines() if t.strip() and not t.startswith("#")]
    if len(set(topics)) != len(topics):
        raise ValueError(f"{path} lists a topic twice")
    return topics


def build_prompts(topics: list[str], cfg: CorpusConfig = CorpusConfig()) -> list[Prompt]:
    """All topic x template prompts, shuffled by the seed, each assigned to train or held-out by topic."""
    rng = random.Random(cfg.seed)
    order = topics[:]
    rng.shuffle(order)
    heldout = set(order[:: cfg.heldout_every])
    prompts = [
        (topic, style, template.format(topic=topic))
        for topic in topics
        for style, templates in STYLES.items()
        for template in templates
    ]
    rng.shuffle(prompts)
    return [
        Prompt(i, t, s, p, "heldout" if t in heldout else "train") for i, (t, s, p) in enumerate(prompts)
    ]


@torch.inference_mode()
def generate_batch(model, tokenizer, prompts: list[str], cfg: CorpusConfig, seed: int) -> list[dict]:
    """Sample one response per prompt with the chat template; returns ``{"text", "n_tokens", "finished"}``."""
    tokenizer.padding_side = "left"
    chats = [chat_prompt(tokenizer, p) for p in prompts]
    enc = tokenizer(chats, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    torch.manual_seed(seed)
    out = model.generate(
        **enc,
        do_sample=True,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        repetition_penalty=cfg.repetition_penalty,
        max_new_tokens=cfg.max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
    )
    new = out[:, enc["input_ids"].shape[1] :]  # [batch, new_tokens]
    results = []
    for row in new:
        eos_hits = (row == tokenizer.eos_token_id).nonzero()
        end = int(eos_hits[0]) if len(eos_hits) else len(row)
        text = tokenizer.decode(row[:end], skip_special_tokens=True).strip()
        results.append({"text": text, "n_tokens": end, "finished": bool(len(eos_hits))})
    return results


def generate_shards(
    model, tokenizer, prompts: list[Prompt], shard_dir: Path, cfg: CorpusConfig, worker: tuple[int, int] = (0, 1)
) -> None:
    """Generate every batch whose shard file is missing (resumable); shards are written atomically.

    ``worker=(k, n)`` takes only batches ``b % n == k``, so n single-threaded processes can share the work
    (on a small CPU, n processes x 1 thread beat 1 process x n threads for batched decoding).
    """
    shard_dir.mkdir(parents=True, exist_ok=True)
    batches = [prompts[i : i + cfg.batch_size] for i in range(0, len(prompts), cfg.batch_size)]
    k, n = worker
    todo = [
        (b, batch)
        for b, batch in enumerate(batches)
        if b % n == k and not (shard_dir / f"{b:05d}.jsonl").exists()
    ]
    bar = tqdm(todo, desc="generating corpus", unit="batch")
    t0, n_tok = time.time(), 0
    for b, batch in bar:
        outs = generate_batch(model, tokenizer, [p.prompt for p in batch], cfg, seed=cfg.seed + b)
        lines = "".join(json.dumps({**asdict(p), **o}) + "\n" for p, o in zip(batch, outs))
        write_text_atomically(shard_dir / f"{b:05d}.jsonl", lines)
        n_tok += sum(o["n_tokens"] for o in outs)
        bar.set_postfix(tok_per_s=f"{n_tok / (time.time() - t0):.0f}")


def _normalized(text: str) -> str:
    return re.sub(r"\W+", " ", text.lower()).strip()


def finalize(shard_dir: Path, out_dir: Path, tokenizer, cfg: CorpusConfig) -> dict:
    """Dedupe + filter the shards into ``train.jsonl.gz`` / ``heldout.jsonl.gz``; return the size summary."""
    records = [json.loads(line) for path in sorted(shard_dir.glob("*.jsonl")) for line in open(path)]
    seen: set[str] = set()
    kept: dict[str, list[dict]] = {"train": [], "heldout": []}
    dropped = {"duplicate": 0, "too_short": 0}
    for r in sorted(records, key=lambda r: r["id"]):
        key = _normalized(r["text"])[:200]
        if r["n_tokens"] < cfg.min_tokens or len(r["text"]) < 100:
            dropped["too_short"] += 1
        elif key in seen:
            dropped["duplicate"] += 1
        else:
            seen.add(key)
            kept[r["split"]].append(r)
    out_dir.mkdir(parents=True, exist_ok=True)
    sizes = {}
    for split, rows in kept.items():
        def write(tmp: Path, rows: list[dict] = rows) -> None:
            with gzip.open(tmp, "wt", compresslevel=9) as f:
                for r in rows:
                    f.write(json.dumps(r) + "\n")

        write_file_atomically(out_dir / f"{split}.jsonl.gz", write)
        n_tokens = sum(len(tokenizer(r["text"], add_special_tokens=False)["input_ids"]) for r in rows)
        sizes[split] = {"records": len(rows), "tokens": n_tokens, "topics": len({r["topic"] for r in rows})}
    return {"sizes": sizes, "dropped": dropped, "generated": len(records)}


def build(
    data_dir: str | Path = "data",
    cfg: CorpusConfig = CorpusConfig(),
    limit: int | None = None,
    worker: tuple[int, int] = (0, 1),
) -> dict | None:
    """Generate (resumably) and finalize the corpus under ``data_dir/corpus``; write its manifest.

    With ``worker=(k, n)``, n > 1, this process only generates its share and returns None; run the build
    once more with the default worker to finalize.
    """
    from ..hardware import best_device, fast_dtype
    from ..models import DEFAULT_TEACHER, load_model

    data_dir = Path(data_dir)
    prompts = build_prompts(read_topics(data_dir / "topics.txt"), cfg)[: limit or cfg.max_prompts]
    device = best_device()
    dtype = fast_dtype(device)
    model, tok = load_model(DEFAULT_TEACHER, dtype=dtype, device=device)
    shard_dir = data_dir / "corpus" / "shards"
    t0 = time.time()
    generate_shards(model, tok, prompts, shard_dir, cfg, worker)
    if worker[1] > 1:
        return None
    summary = finalize(shard_dir, data_dir / "corpus", tok, cfg)
    manifest = {
        "teacher": DEFAULT_TEACHER,
        "dtype": str(dtype),
        "device": str(device),
        "config": asdict(cfg),
        "prompts": len(prompts),
        "styles": {s: list(t) for s, t in STYLES.items()},
        "build_seconds_this_session": round(time.time() - t0, 1),
        **summary,
    }
    write_json_atomically(data_dir / "corpus" / "manifest.json", manifest)
    return manifest


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers corpus [--workers N] [--limit N]``: build (or resume building) the embedded corpus."""
    import argparse

    ap = argparse.ArgumentParser(description="Build the embedded corpus with the teacher (resumable).")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--limit", type=int, default=None, help="only the first N prompts (for a quick try)")
    ap.add_argument("--batch-size", type=int, default=CorpusConfig.batch_size)
    ap.add_argument("--workers", type=int, default=1, help="parallel single-threaded processes (default 1)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)  # internal: this process's share
    args = ap.parse_args(argv)
    cfg = CorpusConfig(batch_size=args.batch_size)
    started = time.time()
    if args.worker is not None:  # a child: generate one share with one thread
        torch.set_num_threads(1)
        build(args.data_dir, cfg, args.limit, worker=(args.worker, args.workers))
        return 0
    if args.workers > 1:
        import subprocess
        import sys

        cmd = [sys.executable, "-m", "helpers", "corpus", "--data-dir", args.data_dir, "--workers", str(args.workers)]
        cmd += ["--batch-size", str(args.batch_size)] + (["--limit", str(args.limit)] if args.limit else [])
        children = [subprocess.Popen(cmd + ["--worker", str(k)]) for k in range(args.workers)]
        if any(c.wait() for c in children):
            raise SystemExit("a corpus worker failed; rerun `make corpus` to resume")
    result = build(args.data_dir, cfg, args.limit)
    result.update(build_seconds_this_session=round(time.time() - started, 1), workers=args.workers)
    write_json_atomically(Path(args.data_dir) / "corpus" / "manifest.json", result)
    print(json.dumps({k: result[k] for k in ("sizes", "dropped", "build_seconds_this_session")}, indent=2))
    return 0
