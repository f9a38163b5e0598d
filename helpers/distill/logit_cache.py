"""The teacher's top-k log-probabilities, computed once and stored, for distillation runs that see the same tokens.

Every logit-KD step runs the frozen teacher forward on its batch; runs that train on the same blocks (several
students, seeds, learning rates) repeat that work exactly. :func:`build_logit_cache` runs the teacher once over
packed blocks ``[n, S]`` and keeps, per position, its k most likely tokens::

    {"topk_logprobs": [n, S, k] float16,   # log p_t at those tokens: logits - logsumexp(logits)
     "topk_indices":  [n, S, k] int32}     # their token ids

``distill(student, None, blocks, config, teacher_logits=cache)`` then trains with no teacher at all (the loss is
``losses.topk_cached_kl``, equal to ``forward_kl(..., top_k=k)`` on the full logits). Log-probs, not raw logits, are
stored so that each row also says how much mass the k tokens hold (:func:`topk_exactness` plots that choice).

Size: k * (2 + 4) bytes per token, 384 B at k = 64 (a 49152-way fp32 row would be 192 KiB): 1M training tokens
take 384 MB. DistillKit (arcee-ai) stores the same top-k ids and values for its offline distillation, about
300 B/token, and compresses them further (polynomial fit, quantisation, bit packing) for billions of tokens.

On disk (``path=``) the cache is one safetensors file written atomically (``helpers.io``), whose metadata records
``top_k``, the teacher's ``helpers.evaluate.model_fingerprint`` and a sha256 of the input ids (and attention mask).
:func:`load_logit_cache` refuses a file built from another teacher or other tokens, or a corrupt one, with a clear
message; :func:`cached_or_built` loads when valid and builds (and saves) otherwise.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Iterator

import safetensors
import safetensors.torch
import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from ..architecture import as_int, check_supported, check_token_ids
from ..evaluate import model_fingerprint
from ..hardware import autocast
from ..io import write_file_atomically

__all__ = ["LOGIT_CACHE_KEYS", "build_logit_cache", "load_logit_cache", "cached_or_built", "topk_exactness"]

LOGIT_CACHE_KEYS: tuple[str, str] = ("topk_logprobs", "topk_indices")
_KIND = "helpers.distill.logit_cache/1"
_STORAGE = {torch.float16, torch.bfloat16, torch.float32}
_STALE = "; delete it or build it again"


# ----------------------------------------------------------------------------------------------------
# Inputs and the teacher pass


def _blocks(teacher: PreTrainedModel, inputs: dict[str, Tensor] | Tensor) -> tuple[Tensor, Tensor | None]:
    """``(input_ids [n, S], attention_mask [n, S] | None)`` from blocks or a dict; validated, nothing run yet."""
    data = dict(inputs) if isinstance(inputs, dict) else {"input_ids": inputs}
    unknown = set(data) - {"input_ids", "attention_mask", "labels"}
    if unknown or "input_ids" not in data:
        raise ValueError(f"inputs: a tensor of packed blocks [n, S] or a dict with input_ids (and attention_mask, "
                         f"labels); got keys {sorted(data)}")
    ids, mask = data["input_ids"], data.get("attention_mask")
    check_token_ids(teacher, ids, "inputs")
    if ids.dim() != 2 or not ids.numel():
        raise ValueError(f"inputs must be packed blocks [n_blocks >= 1, block_size >= 1], got {tuple(ids.shape)}")
    if mask is not None and (not isinstance(mask, Tensor) or mask.shape != ids.shape):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"inputs attention_mask must have the ids' shape {tuple(ids.shape)}, got {got}")
    return ids.long(), mask


def _vocab(teacher: PreTrainedModel) -> int:
    return teacher.get_output_embeddings().weight.shape[0]


def _top_k(teacher: PreTrainedModel, top_k: int, name: str = "top_k") -> int:
    k, vocab = as_int(name, top_k), _vocab(teacher)
    if not 1 <= k <= vocab:
        raise ValueError(f"{name}={k} is out of range; allowed: 1..{vocab} (the teacher's vocabulary)")
    return k


def _batch_size(batch_size: int) -> int:
    batch_size = as_int("batch_size", batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1 (blocks per teacher forward)")
    return batch_size


def _tokens_fingerprint(ids: Tensor, mask: Tensor | None) -> str:
    """sha256 of the int64 bytes of the ids (and of the mask when given), with the shape."""
    h = hashlib.sha256(ids.to(torch.int64).contiguous().cpu().numpy().tobytes())
    h.update(str(tuple(ids.shape)).encode())
    if mask is not None:
        h.update(mask.to(torch.int64).contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _evaluating(model: PreTrainedModel) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _teacher_topk(teacher: PreTrainedModel, ids: Tensor, mask: Tensor | None, k: int, batch_size: int,
                  use_autocast: bool, progress: bool) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """Per batch of blocks: ``(rows, logprobs [b, S, k] fp32, indices [b, S, k] int64)``, sorted by probability."""
    device = teacher.device
    with _evaluating(teacher), torch.no_grad():
        for start in tqdm(range(0, len(ids), batch_size), desc="teacher top-k", disable=not progress, leave=False):
            rows = slice(start, start + batch_size)
            with autocast(device, enabled=use_autocast):
                logits = teacher(input_ids=ids[rows].to(device), use_cache=False,
                                 attention_mask=None if mask is None else mask[rows].to(device)).logits
            values, index = logits.topk(k, dim=-1)  # [b, S, k]
            lse = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])  # [b, S], one fp32 row at once
            del logits
            yield rows, (values.float() - lse[..., None]).cpu(), index.cpu()


# ----------------------------------------------------------------------------------------------------
# Build, save, load


def build_logit_cache(
    teacher: PreTrainedModel,
    inputs: dict[str, Tensor] | Tensor,
    top_k: int = 64,
    batch_size: int = 4,
    path: str | Path | None = None,
    progress: bool = True,
    use_autocast: bool = True,
    dtype: torch.dtype = torch.float16,
) -> dict[str, Tensor]:
    """The teacher's top-k log-probs and token ids at every position of ``inputs`` (module docstring).

    ``inputs``: packed blocks ``[n, S]`` (or a dict with ``input_ids`` and optional ``attention_mask``, passed to the
    teacher; ``labels`` are ignored). The teacher runs in eval mode under ``no_grad``, in
    ``helpers.hardware.autocast`` (bf16 where the hardware has it) unless ``use_autocast=False``, and is left as it
    was. Returns ``{"topk_logprobs": [n, S, top_k] dtype, "topk_indices": [n, S, top_k] int32}`` on the CPU, each
    row sorted by decreasing probability. ``dtype``: float16 (default, 2 bytes) or float32 (exact, for checks).
    ``path``: also write it there (safetensors, atomically), for :func:`load_logit_cache`.
    """
    check_supported(teacher)
    ids, mask = _blocks(teacher, inputs)
    k, batch_size = _top_k(teacher, top_k), _batch_size(batch_size)
    if dtype not in _STORAGE:
        raise ValueError(f"dtype={dtype} is not a storage dtype; allowed: torch.float16, torch.bfloat16, torch.float32")
    cache = {"topk_logprobs": torch.empty(*ids.shape, k, dtype=dtype),
             "topk_indices": torch.empty(*ids.shape, k, dtype=torch.int32)}
    for rows, logprobs, index in _teacher_topk(teacher, ids, mask, k, batch_size, use_autocast, progress):
        cache["topk_logprobs"][rows] = logprobs.clamp_min(torch.finfo(dtype).min)  # -inf -> the dtype's lowest
        cache["topk_indices"][rows] = index
    if path is not None:
        metadata = {"format": "pt", "kind": _KIND, "top_k": str(k), "teacher": model_fingerprint(teacher),
                    "tokens": _tokens_fingerprint(ids, mask), "blocks": "x".join(map(str, ids.shape)),
                    "dtype": str(dtype).removeprefix("torch."), "autocast": str(bool(use_autocast))}
        write_file_atomically(path, lambda tmp: safetensors.torch.save_file(cache, str(tmp), metadata=metadata))
    return cache


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Tensors and metadata of a cache file; ValueError when it is not one (truncated, corrupt, foreign)."""
    if not path.is_file():
        raise FileNotFoundError(f"No teacher-logit cache at {path}: build it with build_logit_cache(..., path=...)")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata, tensors = f.metadata() or {}, {key: f.get_tensor(key) for key in f.keys()}
    except (safetensors.SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"The teacher-logit cache {path} is corrupt or not a safetensors file ({err}){_STALE}") \
            from err
    logprobs, index = tensors.get("topk_logprobs"), tensors.get("topk_indices")
    ok = metadata.get("kind") == _KIND and set(tensors) == set(LOGIT_CACHE_KEYS) and logprobs.dim() == 3 \
        and logprobs.shape == index.shape and str(logprobs.shape[-1]) == metadata.get("top_k") \
        and logprobs.dtype in _STORAGE and index.dtype == torch.int32
    if not ok or bool(torch.isnan(logprobs).any()) or bool((logprobs > 1e-3).any()) or bool((index < 0).any()):
        raise ValueError(f"The teacher-logit cache {path} is corrupt or was not written by build_logit_cache (keys "
                         f"{sorted(tensors)}, metadata kind {metadata.get('kind')!r}){_STALE}")
    return tensors, metadata


def load_logit_cache(
    path: str | Path,
    teacher: PreTrainedModel | None = None,
    inputs: dict[str, Tensor] | Tensor | None = None,
    top_k: int | None = None,
) -> dict[str, Tensor]:
    """A cache written by :func:`build_logit_cache` (``{"topk_logprobs", "topk_indices"}``, ``[n, S, k]``).

    Given ``teacher`` / ``inputs`` / ``top_k``, checks the file was built from that teacher (same weights), those
    tokens and that k, and raises ``ValueError`` naming what differs otherwise; a corrupt file raises ``ValueError``
    too, a missing one ``FileNotFoundError``.
    """
    path = Path(path)
    tensors, metadata = _read(path)
    k = tensors["topk_indices"].shape[-1]
    if top_k is not None and as_int("top_k", top_k) != k:
        raise ValueError(f"The teacher-logit cache {path} keeps the top {k} tokens, not top_k={top_k}{_STALE}")
    if teacher is not None:
        found = model_fingerprint(teacher)
        if metadata.get("teacher") != found or int(tensors["topk_indices"].max()) >= _vocab(teacher):
            raise ValueError(f"The teacher-logit cache {path}: this cache was built from another teacher (fingerprint "
                             f"{metadata.get('teacher')}, this teacher {found}){_STALE}")
    if inputs is not None:
        ids, mask = _blocks(teacher, inputs) if teacher is not None else _plain(inputs)
        found = _tokens_fingerprint(ids, mask)
        if metadata.get("tokens") != found:
            raise ValueError(f"The teacher-logit cache {path}: this cache was built from other tokens (blocks "
                             f"{metadata.get('blocks')}, fingerprint {metadata.get('tokens')}; these blocks "
                             f"{'x'.join(map(str, ids.shape))}, fingerprint {found}){_STALE}")
    return tensors


def _plain(inputs: dict[str, Tensor] | Tensor) -> tuple[Tensor, Tensor | None]:
    """``(ids, mask)`` of inputs when no teacher is at hand to check the ids against."""
    data = inputs if isinstance(inputs, dict) else {"input_ids": inputs}
    if not isinstance(data.get("input_ids"), Tensor):
        raise ValueError(f"inputs: a tensor of packed blocks [n, S] or a dict with input_ids; got {sorted(data)}")
    return data["input_ids"], data.get("attention_mask")


def cached_or_built(
    path: str | Path,
    teacher: PreTrainedModel,
    inputs: dict[str, Tensor] | Tensor,
    top_k: int = 64,
    batch_size: int = 4,
    progress: bool = True,
    use_autocast: bool = True,
    dtype: torch.dtype = torch.float16,
) -> dict[str, Tensor]:
    """:func:`load_logit_cache` when ``path`` holds a valid cache of this teacher, these tokens and this k; else
    :func:`build_logit_cache` and save it to ``path`` (a stale or corrupt file is replaced, with a note)."""
    check_supported(teacher)
    _blocks(teacher, inputs)
    _top_k(teacher, top_k)
    _batch_size(batch_size)
    try:
        return load_logit_cache(path, teacher, inputs, top_k)
    except FileNotFoundError:
        pass
    except ValueError as err:
        print(f"Building the teacher-logit cache again: {err}")
    return build_logit_cache(teacher, inputs, top_k, batch_size, path, progress, use_autocast, dtype)


# ----------------------------------------------------------------------------------------------------
# How much of the teacher the top-k keeps


def topk_exactness(
    teacher: PreTrainedModel,
    blocks: dict[str, Tensor] | Tensor,
    ks: tuple[int, ...] = (8, 64, 512),
    batch_size: int = 4,
    use_autocast: bool = True,
    progress: bool = False,
) -> dict[int, float]:
    """Per k, the teacher probability mass its top-k tokens hold, ``sum_{i <= k} p_t(i)``, mean over positions.

    ``blocks``: ``[n, S]`` (or a dict with ``attention_mask``: padded positions are left out). Returns
    ``{k: mass in [0, 1]}``; 1 - mass is what a top-k cache renormalises away (its KL is taken over the k tokens).
    One teacher pass serves every k.
    """
    check_supported(teacher)
    ids, mask = _blocks(teacher, blocks)
    ks, batch_size = tuple(sorted({_top_k(teacher, k, "ks") for k in ks})), _batch_size(batch_size)
    if not ks:
        raise ValueError("ks must name at least one k")
    total, count = torch.zeros(len(ks), dtype=torch.float64), 0.0
    for rows, logprobs, _ in _teacher_topk(teacher, ids, mask, ks[-1], batch_size, use_autocast, progress):
        mass = logprobs.double().exp().cumsum(-1)[..., [k - 1 for k in ks]]  # [b, S, len(ks)]
        keep = torch.ones(mass.shape[:-1], dtype=torch.bool) if mask is None else mask[rows].bool().cpu()
        total += mass[keep].sum(0)
        count += float(keep.sum())
    return {k: float(v) / max(count, 1.0) for k, v in zip(ks, total)}
