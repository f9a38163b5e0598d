"""Where to compute and in which precision: device choice and CPU bf16 detection.

On CPUs with AVX512-BF16 (or AMX), ``torch.autocast("cpu", torch.bfloat16)`` makes
forward passes ~2x faster; elsewhere we fall back to fp32. Master weights and losses stay fp32.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch


def best_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu`` (override with ``WORKBOOK_DEVICE``)."""
    forced = os.environ.get("WORKBOOK_DEVICE")
    if forced:
        return torch.device(forced)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bf16() -> bool:
    """True when this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def fast_dtype(device: torch.device | str | None = None) -> torch.dtype:
    """The fastest safe low-precision dtype for ``device``: bf16 on GPUs and bf16-capable CPUs, else fp32.

    ``WORKBOOK_BF16=0`` forces fp32 everywhere (useful to check results against fp32).
    """
    if os.environ.get("WORKBOOK_BF16", "1") == "0":
        return torch.float32
    device = torch.device(device or best_device())
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def autocast(device: torch.device | str | None = None, enabled: bool = True) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in :func:`fast_dtype`, or a no-op context when that is fp32 or ``enabled`` is False."""
    device = torch.device(device or best_device())
    dtype = fast_dtype(device)
    if not enabled or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
