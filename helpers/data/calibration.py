"""The calibration set importance is estimated on, per workbook scale (Minitron: ~1024 samples).

:func:`calibration_batches` is what notebooks 02/03 and the shared students use: seeded batches of the embedded
training split, sized by :func:`calibration_settings` for the scale. :func:`helpers.data.sample_batches` draws such
batches from any blocks.
"""

from __future__ import annotations

import torch

from ..workbook.scales import by_scale
from .packing import load_blocks, sample_batches

__all__ = ["calibration_settings", "calibration_batches"]


def calibration_settings(scale: str) -> dict[str, int]:
    """Calibration size per scale: ``n_samples`` blocks of ``block_size`` tokens, in batches of ``batch_size``."""
    return by_scale(
        scale,
        smoke={"n_samples": 8, "block_size": 128, "batch_size": 4},
        laptop={"n_samples": 128, "block_size": 512, "batch_size": 8},
        gpu={"n_samples": 1024, "block_size": 2048, "batch_size": 8},
    )


def calibration_batches(tokenizer, scale: str, seed: int = 0) -> list[torch.Tensor]:
    """Seeded calibration batches ``[batch_size, block_size]`` from the embedded training split, sized for ``scale``."""
    s = calibration_settings(scale)
    blocks = load_blocks(tokenizer, split="train", block_size=s["block_size"], max_blocks=4 * s["n_samples"])
    return sample_batches(blocks, s["n_samples"], s["batch_size"], seed=seed)
