"""Evaluation: perplexity (one fixed protocol), generation samples, inference speed and peak memory.

Perplexity protocol (used for every number the workbook reports):
  the held-out split of the corpus is packed into non-overlapping windows of ``window`` tokens
  (default 512, stride = window, documents separated by EOS, remainder dropped; ``helpers.data``);
  every token of a window except the first is scored given the tokens before it in that window;
  perplexity = exp(mean negative log-likelihood over all scored tokens). The report carries the number of
  scored tokens. Logits are cast to fp32 before the loss, so bf16 autocast changes only the matmuls.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .hardware import autocast

PERPLEXITY_WINDOW = 512


@dataclass(frozen=True)
class Perplexity:
    """``ppl = exp(nll)``; ``n_tokens`` scored in ``n_windows`` windows of ``window`` tokens."""

    ppl: float
    nll: float
    n_tokens: int
    n_windows: int
    window: int

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def perplexity(
    model, blocks: torch.Tensor, batch_size: int = 4, use_autocast: bool = True, progress: bool = False,
    labels: torch.Tensor | None = None,
) -> Perplexity:
    """Perplexity of ``model`` on ``blocks`` ``[n_windows, window]`` by the module's protocol.

    ``labels`` (optional, ``[n_windows, window]``, unshifted, ``-100`` = not scored) restricts the score to
    some tokens, e.g. the responses of :func:`helpers.data.chat_blocks` with their prompts as context only.
    """
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be [n_windows, window >= 2], got shape {tuple(blocks.shape)}")
    if labels is not None and labels.shape != blocks.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the shape of blocks {tuple(blocks.shape)}")
    targets = blocks if labels is None else labels
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    total_nll, total_tokens = 0.0, 0
    batches = zip(blocks.split(batch_size), targets.split(batch_size))
    for batch, target in tqdm(batches, desc="perplexity", disable=not progress, leave=False,
                              total=math.ceil(len(blocks) / batch_size)):
        batch, target = batch.to(device), target[:, 1:].to(device)
        with autocast(device, enabled=use_autocast):
            logits = model(input_ids=batch).logits  # [B, L, vocab]
        nll = F.cross_entropy(
            logits[:, :-1].float().flatten(0, 1), target.flatten(), reduction="sum", ignore_index=-100
        )  # predicts tokens 1..L-1 from their prefix
        total_nll += nll.item()
        total_tokens += int((target != -100).sum())
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError("No token to score: every label is -100")
    mean = total_nll / total_tokens
    return Perplexity(math.exp(mean), mean, total_tokens, len(blocks), blocks.shape[1])


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    greedy: bool = True,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    chat: bool = True,
) -> list[str]:
    """Batched generation; returns only the new text of each prompt.

    ``chat=True`` wraps each prompt in the tokenizer's chat template (the teacher is an instruct model).
    ``greedy=False`` samples with ``temperature`` / ``top_p`` after seeding torch with ``seed``.
    """
    if not prompts:
        raise ValueError("prompts is empty")
    tokenizer.padding_side = "left"
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
        if chat and tokenizer.chat_template
        else p
        for p in prompts
    ]
    device = next(model.parameters()).device
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(device)
    torch.manual_seed(seed)
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p}
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=not greedy, pad_token_id=tokenizer.pad_token_id, **sampling
    )
    return [t.strip() for t in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)]


class PeakMemory:
    """Context manager measuring peak memory of the enclosed work, in MiB.

    CUDA: ``torch.cuda.max_memory_allocated`` (tensors only). CPU: the process resident set size sampled
    every 2 ms from ``/proc/self/statm`` (includes everything the process holds). ``peak_mib`` is the
    absolute peak, ``added_mib`` the peak minus the level at entry.
    """

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.peak_mib = self.added_mib = 0.0

    @staticmethod
    def _rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak_mib = max(self.peak_mib, self._rss_mib())
            self._stop.wait(0.002)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self._start = self.peak_mib = self._rss_mib()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mib = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mib = max(self.peak_mib, self._rss_mib())
        self.added_mib = self.peak_mib - self._start


@dataclass(frozen=True)
class Speed:
    """Batch-1 inference speed: prefill of ``prompt_tokens``, then greedy decode of ``new_tokens``."""

    prompt_tokens: int
    new_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    first_token_latency_s: float
    per_token_latency_ms: float
    peak_memory_mib: float

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def measure_speed(
    model, prompt_tokens: int = 256, new_tokens: int = 64, repeats: int = 3, use_autocast: bool = False
) -> Speed:
    """Median of ``repeats`` runs (after one warm-up) of prefill and KV-cached greedy decode at batch 1.

    Runs in the model's own dtype by default: autocast re-casts every weight on every call, which costs
    more than a one-token decode step (to time bf16, convert a copy with ``model.to(torch.bfloat16)``).
    """
    model.eval()
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    ids = torch.randint(100, vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(0)).to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    prefill, decode = [], []
    with PeakMemory(device) as mem, autocast(device, enabled=use_autocast):
        for i in range(repeats + 1):
            sync()
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            sync()
            t1 = time.perf_counter()
            cache, nxt = out.cache, out.logits[:, -1:].argmax(-1)
            for _ in range(new_tokens):
                out = model(input_ids=nxt, cache=cache, use_cache=True)
                cache, nxt = out.cache, out.logits[:, -1:].argmax(-1)
            sync()
            t2 = time.perf_counter()
            if i:  # the first run is a warm-up
                prefill.append(t1 - t0)
                decode.append(t2 - t1)
    p, d = sorted(prefill)[len(prefill) // 2], sorted(decode)[len(decode) // 2]
    return Speed(prompt_tokens, new_tokens, prompt_tokens / p, new_tokens / d, p, 1000 * d / new_tokens, mem.peak_mib)
