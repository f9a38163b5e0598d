"""What compression buys at inference: batch-1 prefill and decode speed, latency and peak memory.

``measure_speed`` times one model; ``compare_speed`` times several in one interleaved run (round r times every
model in turn, the order rotated each round), so a slow spell of a shared machine (another process, thermal
throttling) lands on every model rather than on whichever happened to be timed then. Both share one timing
function, ``_time_run``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from ..architecture import as_int
from ..hardware import autocast

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = ["PeakMemory", "Speed", "measure_speed", "compare_speed", "model_memory_mib"]


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
    """Batch-1 inference speed: prefill of ``prompt_tokens``, then greedy decode of ``new_tokens``.

    ``peak_memory_mib`` is the absolute peak (on CPU the whole process's resident set: every model, tensor and
    library it holds); ``added_memory_mib`` the peak above the level just before the timed work, the part the
    model's own run added.
    """

    prompt_tokens: int
    new_tokens: int
    prefill_tokens_per_s: float
    decode_tokens_per_s: float
    first_token_latency_s: float
    per_token_latency_ms: float
    peak_memory_mib: float
    added_memory_mib: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Runs:
    """Timings of one model's measured runs (warm-ups excluded), one entry per run (memory: per window)."""

    prefill_s: list[float] = field(default_factory=list)
    decode_s: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)
    added_mib: list[float] = field(default_factory=list)

    def add_memory(self, mem: PeakMemory) -> None:
        self.peak_mib.append(mem.peak_mib)
        self.added_mib.append(mem.added_mib)


def _median(values: list[float]) -> float:
    """The middle value (the upper one of the two for an even count), as ``measure_speed`` always reported."""
    return sorted(values)[len(values) // 2]


def _check_sizes(prompt_tokens: int, new_tokens: int, repeats: int) -> tuple[int, int, int]:
    """The three sizes as ints; ``ValueError`` naming the first one below 1."""
    sizes = {"prompt_tokens": as_int("prompt_tokens", prompt_tokens), "new_tokens": as_int("new_tokens", new_tokens),
             "repeats": as_int("repeats", repeats)}
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{name}={value} must be >= 1 (a speed needs at least one token and one timed run).")
    return sizes["prompt_tokens"], sizes["new_tokens"], sizes["repeats"]


def _prompt(model: PreTrainedModel, prompt_tokens: int) -> torch.Tensor:
    """Seeded random prompt ids ``[1, prompt_tokens]`` in ``[100, vocab)`` on the model's device."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(100, model.config.vocab_size, (1, prompt_tokens), generator=gen).to(model.device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _time_run(model: PreTrainedModel, ids: torch.Tensor, new_tokens: int) -> tuple[float, float]:
    """One timed run: prefill of ``ids`` ``[1, S]``, then ``new_tokens`` KV-cached greedy decode steps.

    Returns (prefill seconds, decode seconds).
    """
    device = ids.device
    _sync(device)
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True)
    _sync(device)
    t1 = time.perf_counter()
    cache, nxt = out.cache, out.logits[:, -1:].argmax(-1)
    for _ in range(new_tokens):
        out = model(input_ids=nxt, cache=cache, use_cache=True)
        cache, nxt = out.cache, out.logits[:, -1:].argmax(-1)
    _sync(device)
    return t1 - t0, time.perf_counter() - t1


def _summarize(runs: _Runs, prompt_tokens: int, new_tokens: int) -> Speed:
    """Medians of the runs as a ``Speed``."""
    p, d = _median(runs.prefill_s), _median(runs.decode_s)
    return Speed(prompt_tokens, new_tokens, prompt_tokens / p, new_tokens / d, p, 1000 * d / new_tokens,
                 _median(runs.peak_mib), _median(runs.added_mib))


def measure_speed(
    model: PreTrainedModel, prompt_tokens: int = 256, new_tokens: int = 64, repeats: int = 3,
    use_autocast: bool = False,
) -> Speed:
    """Median of ``repeats`` runs (after one warm-up) of prefill and KV-cached greedy decode at batch 1.

    Runs in the model's own dtype by default: autocast re-casts every weight on every call, which costs
    more than a one-token decode step (to time bf16, convert a copy with ``model.to(torch.bfloat16)``).
    Peak memory is taken over all runs, warm-up included. To compare models, use ``compare_speed``.
    """
    prompt_tokens, new_tokens, repeats = _check_sizes(prompt_tokens, new_tokens, repeats)
    model.eval()
    ids, runs = _prompt(model, prompt_tokens), _Runs()
    with PeakMemory(model.device) as mem, autocast(model.device, enabled=use_autocast):
        for i in range(repeats + 1):
            prefill, decode = _time_run(model, ids, new_tokens)
            if i:  # the first run is a warm-up
                runs.prefill_s.append(prefill)
                runs.decode_s.append(decode)
    runs.add_memory(mem)
    return _summarize(runs, prompt_tokens, new_tokens)


def _check_models(models: Mapping[str, PreTrainedModel]) -> None:
    if not isinstance(models, Mapping) or not models:
        raise ValueError(f"models must be a non-empty mapping {{name: model}}, got {models!r}.")
    for name, model in models.items():
        if not isinstance(model, torch.nn.Module) or not hasattr(model, "config"):
            raise TypeError(f"models[{name!r}] must be a Hugging Face model, got {type(model).__name__}.")


def _rotation(names: list[str], round_index: int) -> list[str]:
    """Round r's order: the names rotated by r, so each model goes first once every ``len(names)`` rounds."""
    k = round_index % len(names)
    return names[k:] + names[:k]


def compare_speed(
    models: Mapping[str, PreTrainedModel], prompt_tokens: int = 256, new_tokens: int = 64, repeats: int = 5,
    use_autocast: bool = False, progress: bool = True,
) -> dict[str, Speed]:
    """Time every model in one interleaved run: ``{name: Speed}``, in the order of ``models``.

    One warm-up run per model, then ``repeats`` rounds; round r times each model once, in the order of ``models``
    rotated by r (no model always goes first, and a slow spell of the machine hits every model). Each field is the
    median over rounds (as in ``measure_speed``). Memory is measured around each model's own run: on CPU the
    resident set includes everything the process holds (every model in ``models`` too), so ``peak_memory_mib``
    barely differs between models and ``added_memory_mib`` (peak above the level just before that run) is the
    number to compare; on CUDA both count tensors only.
    """
    _check_models(models)
    prompt_tokens, new_tokens, repeats = _check_sizes(prompt_tokens, new_tokens, repeats)
    names = list(models)
    prompts = {name: _prompt(models[name], prompt_tokens) for name in names}
    runs = {name: _Runs() for name in names}
    for name in names:
        models[name].eval()
        with autocast(models[name].device, enabled=use_autocast):
            _time_run(models[name], prompts[name], new_tokens)  # warm-up
    for r in tqdm(range(repeats), desc="speed rounds", disable=not progress, leave=False):
        for name in _rotation(names, r):
            model = models[name]
            with PeakMemory(model.device) as mem, autocast(model.device, enabled=use_autocast):
                prefill, decode = _time_run(model, prompts[name], new_tokens)
            runs[name].prefill_s.append(prefill)
            runs[name].decode_s.append(decode)
            runs[name].add_memory(mem)
    return {name: _summarize(runs[name], prompt_tokens, new_tokens) for name in names}


def model_memory_mib(config: Mapping[str, Any] | Any, params: int, tokens: int = 320, bytes_per_value: int = 4) -> float:
    """What a model holds at batch 1 after ``tokens`` tokens (default 256 + 64, the speed runs), in MiB: its
    ``params`` weights plus its KV cache, ``2 x num_hidden_layers x num_key_value_heads x head_dim x tokens``
    values, at ``bytes_per_value`` each (4: fp32, the workbook's weights on a CPU).

    Exact arithmetic from the config (a dict or a ``PretrainedConfig``), so it compares models measured in different
    processes; the CPU resident set of a process holding several models cannot be split between them (:class:`PeakMemory`).
    """
    get = config.get if isinstance(config, Mapping) else (lambda k, d=None: getattr(config, k, d))
    layers, heads, kv_heads = (as_int(k, get(k)) for k in ("num_hidden_layers", "num_attention_heads", "num_key_value_heads"))
    head_dim = get("head_dim") or as_int("hidden_size", get("hidden_size")) // heads
    kv_values = 2 * layers * kv_heads * int(head_dim) * as_int("tokens", tokens)
    return (as_int("params", params) + kv_values) * bytes_per_value / 2**20
