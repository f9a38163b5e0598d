"""The workbook scales: ``smoke`` (CI, about a minute a notebook), ``laptop`` (the real experiment on a 2-core CPU,
the default) and ``gpu`` (one modern GPU). Every notebook's parameters cell derives its sizes from the scale."""

from __future__ import annotations

import os
from typing import TypeVar

__all__ = ["SCALES", "scale", "by_scale"]

SCALES = ("smoke", "laptop", "gpu")
T = TypeVar("T")


def scale() -> str:
    """``$WORKBOOK_SCALE`` (default ``laptop``), validated."""
    value = os.environ.get("WORKBOOK_SCALE", "laptop")
    if value not in SCALES:
        raise ValueError(f"WORKBOOK_SCALE={value!r} is not a scale; use one of {SCALES}.")
    return value


def by_scale(current: str, smoke: T, laptop: T, gpu: T) -> T:
    """Pick the value for scale ``current`` (validated): ``by_scale(SCALE, smoke=16, laptop=256, gpu=1024)``."""
    if current not in SCALES:
        raise ValueError(f"Unknown scale {current!r}; use one of {SCALES}.")
    return {"smoke": smoke, "laptop": laptop, "gpu": gpu}[current]
