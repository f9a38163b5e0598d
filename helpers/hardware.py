"""Where to compute and in which precision: device choice and a measured CPU precision.

On CPUs with fast native bf16 (AMX, or AVX512-BF16 on some cores) ``torch.autocast("cpu", torch.bfloat16)`` makes
forward passes ~2x faster; but some CPUs report AVX512-BF16 and still multiply bf16 matrices *slower* than fp32
(seen on a 2-core Xeon without AMX). So the CPU precision is chosen by a measurement, not by a
flag: :func:`cpu_precision` times the model's MLP-shaped matrix product in both precisions (about 2 s, interleaved,
best of three) once per machine, stores the result in ``~/.cache/prune-distill-workbook/cpu_precision.json`` (keyed
by CPU model, torch version and thread count; ``WORKBOOK_CACHE`` moves it; delete it to measure again) and picks
bf16 only when it is at least :data:`BF16_MARGIN` times faster. Every notebook, the runner and the command line read the
same answer. Master weights and losses stay fp32.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from pathlib import Path

import torch

from .io import write_json_atomically

__all__ = ["BF16_MARGIN", "best_device", "cpu_has_fast_bf16", "cpu_precision", "measure_cpu_precision",
           "matmul_gflops", "fast_dtype", "autocast"]

BF16_MARGIN = 1.1  # bf16 must be this much faster than fp32 to be worth its rounding


def best_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu`` (override with ``WORKBOOK_DEVICE``)."""
    forced = os.environ.get("WORKBOOK_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    flags = _cpuinfo()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def matmul_gflops(dtype: torch.dtype, seconds: float, rows: int = 512, k: int = 576, n: int = 1536) -> float:
    """GFLOP/s of ``(rows, k) @ (k, n)`` fp32 products (the teacher's ``up_proj`` on a 512-token block), computed
    under autocast in ``dtype`` (fp32: no autocast), over about ``seconds``."""
    a, b = torch.randn(rows, k), torch.randn(k, n)
    context = torch.autocast("cpu", dtype=dtype) if dtype != torch.float32 else contextlib.nullcontext()
    with context:
        a @ b  # warm-up
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            count += 1
    return 2 * rows * k * n * count / (time.perf_counter() - start) / 1e9


def measure_cpu_precision(seconds: float = 0.3, rounds: int = 3) -> dict[str, float]:
    """Best-of-``rounds`` GFLOP/s in ``"float32"`` and ``"bfloat16"``, measured alternately so that a passing load
    slows both alike."""
    best = {"float32": 0.0, "bfloat16": 0.0}
    for _ in range(rounds):
        for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
            best[name] = max(best[name], matmul_gflops(dtype, seconds))
    return best


def _cache_file() -> Path:
    root = os.environ.get("WORKBOOK_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / \
        "prune-distill-workbook"
    return Path(root) / "cpu_precision.json"


def _machine_key() -> str:
    model = next((line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines()
                  if line.startswith("model name")), "unknown cpu")
    return f"{model} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def _read_cache() -> dict:
    try:
        return json.loads(_cache_file().read_text())
    except (OSError, ValueError):
        return {}


@functools.lru_cache(maxsize=1)
def cpu_precision() -> dict:
    """This CPU's measured precision: ``{"dtype": "float32"|"bfloat16", "float32": GFLOP/s, "bfloat16": GFLOP/s}``
    (GFLOP/s are None when the CPU has no native bf16: nothing to measure, fp32). Measured once per machine (about
    2 s), then read from the cache file."""
    if not cpu_has_fast_bf16():
        return {"dtype": "float32", "float32": None, "bfloat16": None}
    key, cache = _machine_key(), _read_cache()
    if key not in cache:
        speeds = measure_cpu_precision()
        faster = speeds["bfloat16"] >= BF16_MARGIN * speeds["float32"]
        cache[key] = {"dtype": "bfloat16" if faster else "float32", **speeds,
                      "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
        with contextlib.suppress(OSError):  # a read-only home still gets the measured answer, just not cached
            _cache_file().parent.mkdir(parents=True, exist_ok=True)
            write_json_atomically(_cache_file(), cache)
    entry = cache[key]
    return {"dtype": entry["dtype"], "float32": entry["float32"], "bfloat16": entry["bfloat16"]}


def fast_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The compute precision for ``device``: bf16 on GPUs that support it (else fp16); on CPUs the measured
    :func:`cpu_precision`.

    ``WORKBOOK_BF16=0`` forces fp32 everywhere (useful to check results against fp32); ``WORKBOOK_BF16=1`` forces bf16
    on a CPU with native bf16 even where the measurement found fp32 faster; unset (or ``auto``) measures.
    """
    choice = os.environ.get("WORKBOOK_BF16", "auto")
    if choice not in ("0", "1", "auto"):
        raise ValueError(f"WORKBOOK_BF16={choice!r}: use 0 (fp32), 1 (bf16 where native) or auto (measured).")
    if choice == "0":
        return torch.float32
    device = torch.device(device or best_device())
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if choice == "1":
        return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    return getattr(torch, cpu_precision()["dtype"])


def autocast(device: torch.device | str | None = None, enabled: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in :func:`fast_dtype`, or a no-op context when that is fp32 or ``enabled`` is False."""
    device = torch.device(device or best_device())
    dtype = fast_dtype(device)
    if not enabled or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
