"""The teacher's activation importance, measured once per scale and reused.

Notebooks 02 and 08 and the shared width student all prune the embedded teacher with the same scores on the same
calibration batches (``data.calibration_batches(tokenizer, scale)``); measuring them takes minutes on a CPU.
:func:`cached_importance` stores them under ``runs/<scale>/importance/`` keyed by everything they depend on (the
calibration tokens, the model's sizes, the compute precision and the scoring options), so a second caller with the
same inputs loads them (bit-identical) and a caller with other inputs measures its own.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel

from ..architecture import model_sizes
from ..hardware import fast_dtype
from ..importance import Importance, estimate_importance
from ..workbook import runs_dir

__all__ = ["cached_importance", "importance_path"]


def importance_path(model: PreTrainedModel, batches: list[torch.Tensor], name: str, **options: Any) -> Path:
    """``runs/<scale>/importance/<name>-<key>.safetensors``; ``key`` hashes the batches' tokens [batch, seq], the
    model's sizes, the precision of the pass and ``options`` (those of :func:`estimate_importance`)."""
    digest = hashlib.sha256()
    for batch in batches:
        digest.update(str(tuple(batch.shape)).encode())
        digest.update(batch.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    precision = fast_dtype(model.device) if options.get("autocast", True) else torch.float32
    digest.update(json.dumps([model_sizes(model), str(precision), sorted(options.items())], default=str).encode())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"  # a Hub id or a folder is a name too
    return runs_dir() / "importance" / f"{slug}-{digest.hexdigest()[:16]}.safetensors"


def cached_importance(model: PreTrainedModel, batches: list[torch.Tensor], name: str, progress: bool = False,
                      **options: Any) -> Importance:
    """:func:`estimate_importance` of ``model`` on ``batches`` (LongTensors [batch, seq]), loaded from
    :func:`importance_path` when an earlier call stored it, else measured and stored. ``name`` identifies the
    model's weights (the teacher's alias, Hub id or folder); a file that cannot be read is measured again and replaced."""
    path = importance_path(model, batches, name, **options)
    if path.is_file():
        try:
            return Importance.load(path)
        except Exception as err:  # a damaged file costs one measurement, never the run
            print(f"{path} could not be read ({type(err).__name__}: {err}); measuring the scores again.")
    scores = estimate_importance(model, batches, progress=progress, **options)
    scores.save(path)  # atomic, creates the folder
    return scores
