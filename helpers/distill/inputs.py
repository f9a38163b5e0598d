"""What :func:`helpers.distill.distill` checks and trains on: :func:`validate` (models against the config),
:func:`as_inputs` (packed blocks, optional labels / attention mask, and the rows of a teacher-logit cache from
``logit_cache.py``) and the dataset the Trainer iterates. Everything public is re-exported by ``helpers.distill``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..architecture import check_supported
from .config import DistillConfig, LayerMap, resolve_layer_map
from .logit_cache import LOGIT_CACHE_KEYS

__all__ = ["REJECTED_KEYS", "validate", "as_inputs", "check_preference_rows"]

REJECTED_KEYS = ("rejected_input_ids", "rejected_attention_mask", "rejected_labels")  # preference rows (DPO-style KD)


def validate(
    student: PreTrainedModel,
    teacher: PreTrainedModel | None,
    config: DistillConfig,
    tokenizer: PreTrainedTokenizerBase | None = None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    cache_top_k: int | None = None,
) -> LayerMap:
    """Check models against the config before any work; returns the layer map ([] without hidden losses).

    ``cache_top_k``: the k of the teacher-logit cache the run trains from (then ``teacher`` may be None and the
    config must suit a cache: :meth:`DistillConfig.check_teacher_cache`)."""
    check_supported(student)
    vocab = student.get_output_embeddings().weight.shape[0]
    if tokenizer is not None and len(tokenizer) > vocab:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the student's vocabulary is {vocab}.")
    if config.top_k is not None and config.top_k > vocab:
        raise ValueError(f"top_k={config.top_k} exceeds the vocabulary size {vocab}; allowed: 1..{vocab}")
    if cache_top_k is not None:
        config.check_teacher_cache(cache_top_k)
    if not config.uses_teacher or (teacher is None and cache_top_k is not None):
        return []
    if teacher is None:
        raise ValueError(f"loss={config.loss!r} needs a teacher; pass one, or use loss='ce' for plain fine-tuning")
    check_supported(teacher)
    t_vocab = teacher.get_output_embeddings().weight.shape[0]
    if (vocab, student.config.vocab_size) != (t_vocab, teacher.config.vocab_size):
        raise ValueError(f"Student and teacher vocabularies differ ({student.config.vocab_size} vs "
                         f"{teacher.config.vocab_size} tokens): logit distillation needs the same tokenizer.")
    if tokenizer is not None and teacher_tokenizer is not None and \
            tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise ValueError("Student and teacher tokenizers map tokens to different ids; use the teacher's tokenizer.")
    if config.hidden_loss is None and not config.embedding_weight:  # no layer map (InfoNCE pools the last state)
        return []
    if config.kept_channels is not None and (len(config.kept_channels) != student.config.hidden_size
                                             or max(config.kept_channels) >= teacher.config.hidden_size):
        raise ValueError(f"kept_channels must list {student.config.hidden_size} teacher channel ids (one per student "
                         f"channel) below {teacher.config.hidden_size}; got {len(config.kept_channels)} ids, max "
                         f"{max(config.kept_channels)}")
    return resolve_layer_map(config, student.config.num_hidden_layers, teacher.config.num_hidden_layers)


def as_inputs(data: Tensor | dict[str, Tensor], vocab_size: int, name: str = "train_blocks") -> dict[str, Tensor]:
    """Packed blocks ``[n_blocks, block_size]`` (or a dict with ``input_ids`` and optional ``attention_mask``,
    ``labels`` of that shape; labels unshifted, ``-100`` = ignore; optional teacher-logit cache rows
    ``topk_logprobs``, ``topk_indices`` of shape ``[n_blocks, block_size, k]``) -> a validated dict of tensors."""
    inputs = dict(data) if isinstance(data, dict) else {"input_ids": data}
    ids = inputs.get("input_ids")
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.long or ids.shape[1] < 2 or not len(ids):
        got = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be a LongTensor [n_blocks, block_size >= 2], got {got}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"{name} has token ids outside [0, {vocab_size}) (the model's vocabulary)")
    unknown = set(inputs) - {"input_ids", "attention_mask", "labels", *LOGIT_CACHE_KEYS, *REJECTED_KEYS}
    plain = [v for k, v in inputs.items() if k not in LOGIT_CACHE_KEYS]
    if unknown or any(not isinstance(v, Tensor) or v.shape != ids.shape for v in plain):
        raise ValueError(f"{name}: keys must be input_ids/attention_mask/labels of one shape (and topk_logprobs/"
                         f"topk_indices of a teacher-logit cache, or rejected_input_ids/rejected_attention_mask/"
                         f"rejected_labels of preference rows); got {sorted(inputs)}")
    _check_cache_rows(inputs, ids, vocab_size, name)
    return inputs


def check_preference_rows(inputs: dict[str, Tensor], config: DistillConfig, name: str = "train_blocks") -> None:
    """Preference rows (the student's own answers as "rejected" beside the chosen rows) exactly when the config's
    ``preference_weight`` uses them, with every row's attention mask and labels (``synthetic.preference_inputs``)."""
    present = [k for k in REJECTED_KEYS if k in inputs]
    if config.preference_weight and (len(present) < 3 or "attention_mask" not in inputs or "labels" not in inputs):
        raise ValueError(f"DistillConfig.preference_weight={config.preference_weight} needs preference rows: "
                         f"input_ids/attention_mask/labels (chosen) and {'/'.join(REJECTED_KEYS)} (rejected), e.g. "
                         f"helpers.distill.preference_inputs; {name} has {sorted(inputs)}")
    if present and not config.preference_weight:
        raise ValueError(f"{name} carries rejected rows ({present}) but preference_weight is 0: set it (> 0) to use "
                         "them, or drop them")
    if present and inputs["rejected_input_ids"].dtype != torch.long:
        raise ValueError(f"{name}: rejected_input_ids must be a LongTensor")


def _check_cache_rows(inputs: dict[str, Tensor], ids: Tensor, vocab_size: int, name: str) -> None:
    """The teacher-logit cache's two ``[n_blocks, block_size, k]`` tensors, when present, fit the blocks."""
    present = [k for k in LOGIT_CACHE_KEYS if k in inputs]
    if not present:
        return
    logprobs, index = inputs.get("topk_logprobs"), inputs.get("topk_indices")
    shapes = [tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for v in (logprobs, index)]
    if len(present) == 1 or shapes[0] != shapes[1] or len(shapes[0]) != 3 or shapes[0][:2] != tuple(ids.shape):
        raise ValueError(f"{name}: a teacher-logit cache is topk_logprobs and topk_indices, both [n_blocks, "
                         f"block_size, k] with rows aligned with the blocks {tuple(ids.shape)}; got {shapes}")
    if not logprobs.is_floating_point() or index.is_floating_point() or index.dtype == torch.bool:
        raise ValueError(f"{name}: topk_logprobs must be floating point and topk_indices integer; got "
                         f"{logprobs.dtype} and {index.dtype}")
    if not 1 <= shapes[0][2] <= vocab_size or int(index.min()) < 0 or int(index.max()) >= vocab_size:
        raise ValueError(f"{name}: the teacher-logit cache holds k={shapes[0][2]} token ids in [{int(index.min())}, "
                         f"{int(index.max())}]; allowed: k in 1..{vocab_size} and ids in [0, {vocab_size}) (the "
                         "student's vocabulary: build the cache with a teacher of the same tokenizer)")


def _with_cache(train_blocks: Tensor | dict[str, Tensor], teacher_logits: dict[str, Tensor] | None
                ) -> Tensor | dict[str, Tensor]:
    """``train_blocks`` with the cache's keys added (rows aligned), or as it is without a cache."""
    if teacher_logits is None:
        return train_blocks
    if not isinstance(teacher_logits, dict) or set(teacher_logits) != set(LOGIT_CACHE_KEYS):
        got = sorted(teacher_logits) if isinstance(teacher_logits, dict) else type(teacher_logits).__name__
        raise ValueError(f"teacher_logits must be the dict build_logit_cache / load_logit_cache return, keys "
                         f"{list(LOGIT_CACHE_KEYS)}; got {got}")
    blocks = dict(train_blocks) if isinstance(train_blocks, dict) else {"input_ids": train_blocks}
    if set(blocks) & set(LOGIT_CACHE_KEYS):
        raise ValueError("train_blocks already holds teacher-logit cache rows: pass them once (teacher_logits=None)")
    return {**blocks, **teacher_logits}


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, inputs: dict[str, Tensor]) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.inputs.items()}

