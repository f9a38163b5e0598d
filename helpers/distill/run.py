"""Knowledge distillation of a (pruned) student from a frozen teacher, on ``transformers.Trainer``.

The objective, the module that is trained and the checkpoints are described in ``trainer.py`` beside this module;
comparisons of a student with its teacher (channel matching, agreement, hidden-state similarity) are in
``diagnostics.py``.

:func:`distill` validates everything first (config, models, data), then trains and returns a *new* student in a
:class:`DistillResult` with the history the notebooks plot; the student passed in is left as it was.
:class:`DistillConfig` and the layer maps live in ``config.py``; everything is re-exported by ``helpers.distill``.
The teacher is never modified: it runs in eval mode under ``torch.no_grad`` (its ``requires_grad`` flags are
switched off during training and restored), or as a low-precision copy when ``teacher_bf16``.

Several GPUs / nodes: the same script runs under accelerate, e.g.::

    accelerate launch --multi_gpu --num_processes 8 my_distill.py            # DDP
    accelerate launch --use_fsdp --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
        --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer --num_processes 8 my_distill.py

where ``my_distill.py`` calls :func:`distill`. The teacher is replicated on every device (no ZeRO-3 sharding).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainerCallback, TrainingArguments
from transformers import default_data_collator
from transformers.trainer_callback import PrinterCallback

from ..architecture import check_supported
from ..hardware import best_device, fast_dtype
from ..models import save_model
from .config import DistillConfig, LayerMap, resolve_layer_map
from .trainer import DistillModule, DistillTrainer, PerplexityCallback

__all__ = ["DistillResult", "validate", "as_inputs", "distill", "save_distilled"]


# ----------------------------------------------------------------------------------------------------
# Validation and data


def validate(
    student: PreTrainedModel,
    teacher: PreTrainedModel | None,
    config: DistillConfig,
    tokenizer: PreTrainedTokenizerBase | None = None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
) -> LayerMap:
    """Check models against the config before any work; returns the layer map ([] without hidden losses)."""
    check_supported(student)
    vocab = student.get_output_embeddings().weight.shape[0]
    if tokenizer is not None and len(tokenizer) > vocab:
        raise ValueError(f"The tokenizer has {len(tokenizer)} tokens but the student's vocabulary is {vocab}.")
    if config.top_k is not None and config.top_k > vocab:
        raise ValueError(f"top_k={config.top_k} exceeds the vocabulary size {vocab}; allowed: 1..{vocab}")
    if not config.uses_teacher:
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
    if not config.uses_hidden_states:
        return []
    if config.kept_channels is not None and (len(config.kept_channels) != student.config.hidden_size
                                             or max(config.kept_channels) >= teacher.config.hidden_size):
        raise ValueError(f"kept_channels must list {student.config.hidden_size} teacher channel ids (one per student "
                         f"channel) below {teacher.config.hidden_size}; got {len(config.kept_channels)} ids, max "
                         f"{max(config.kept_channels)}")
    return resolve_layer_map(config, student.config.num_hidden_layers, teacher.config.num_hidden_layers)


def as_inputs(data: Tensor | dict[str, Tensor], vocab_size: int, name: str = "train_blocks") -> dict[str, Tensor]:
    """Packed blocks ``[n_blocks, block_size]`` (or a dict with ``input_ids`` and optional ``attention_mask``,
    ``labels`` of that shape; labels unshifted, ``-100`` = ignore) -> a validated dict of tensors."""
    inputs = dict(data) if isinstance(data, dict) else {"input_ids": data}
    ids = inputs.get("input_ids")
    if not isinstance(ids, Tensor) or ids.dim() != 2 or ids.dtype != torch.long or ids.shape[1] < 2 or not len(ids):
        got = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
        raise ValueError(f"{name} must be a LongTensor [n_blocks, block_size >= 2], got {got}")
    if int(ids.min()) < 0 or int(ids.max()) >= vocab_size:
        raise ValueError(f"{name} has token ids outside [0, {vocab_size}) (the model's vocabulary)")
    unknown = set(inputs) - {"input_ids", "attention_mask", "labels"}
    if unknown or any(v.shape != ids.shape for v in inputs.values()):
        raise ValueError(f"{name}: keys must be input_ids/attention_mask/labels of one shape; got {sorted(inputs)}")
    return inputs


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, inputs: dict[str, Tensor]) -> None:
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs["input_ids"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.inputs.items()}


# ----------------------------------------------------------------------------------------------------
# Entry points


@dataclass
class DistillResult:
    """The trained student (a new object), the trained projections, and what the notebooks plot.

    ``history``: one dict per logged step, keys among ``step, tokens_seen, loss, kd, ce, hidden, embedding,
    alpha, lr, grad_norm, eval_loss, eval_ppl`` (eval keys at step 0, every ``eval_steps`` and at the end).
    """

    student: PreTrainedModel
    history: list[dict[str, float]]
    tokens_seen: int
    config: DistillConfig
    layer_map: LayerMap
    projections: dict[str, Tensor]
    metrics: dict[str, float]


def _teacher_for_training(teacher: nn.Module, device: torch.device, dtype: torch.dtype | None) -> nn.Module:
    """The teacher itself when it already sits on ``device`` in the wanted dtype, else a converted copy.

    The copy is built by ``deepcopy`` with each parameter pre-mapped to its converted version, so peak memory is
    the original plus the (smaller) copy, and the user's teacher is untouched.
    """
    param = next(teacher.parameters())
    dtype = dtype or param.dtype
    if param.device == device and param.dtype == dtype:
        return teacher
    memo = {id(p): nn.Parameter(p.detach().to(device, dtype), requires_grad=False) for p in teacher.parameters()}
    return copy.deepcopy(teacher, memo).to(device).eval()


def _history(log_history: list[dict[str, Any]]) -> list[dict[str, float]]:
    """Trainer's log_history -> one row per step (train and eval logs of a step merged), summary dropped."""
    rename = {"learning_rate": "lr", "num_input_tokens_seen": "tokens_seen", "train_tokens_per_second": "tokens_per_s"}
    rows: dict[int, dict[str, float]] = {}
    for entry in log_history:
        if "train_loss" in entry:  # the end-of-training summary
            continue
        row = rows.setdefault(int(entry["step"]), {"step": int(entry["step"])})
        row.update({rename.get(k, k): v for k, v in entry.items() if k not in ("epoch", "step", "train_runtime")})
    return [rows[k] for k in sorted(rows)]


def distill(
    student: PreTrainedModel,
    teacher: PreTrainedModel | None,
    train_blocks: Tensor | dict[str, Tensor],
    config: DistillConfig,
    eval_blocks: Tensor | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
    teacher_tokenizer: PreTrainedTokenizerBase | None = None,
    callbacks: list[TrainerCallback] | None = None,
) -> DistillResult:
    """Distil ``teacher`` into a deep copy of ``student`` on ``train_blocks`` (``[n_blocks, block_size]``).

    Neither input model is modified (the student is copied and trained in fp32 master weights; the teacher only
    runs forward). Everything is validated before any training. ``teacher`` may be None for ``loss="ce"``.
    ``eval_blocks``: held-out packed blocks ``[n, window]`` for perplexity during training. ``tokenizer`` is saved
    in checkpoints. ``callbacks``: extra ``TrainerCallback``s (live plots, timers).
    Raises ``ValueError`` for bad configs/inputs, ``FloatingPointError`` when the loss becomes NaN/inf.
    """
    layer_map = validate(student, teacher, config, tokenizer, teacher_tokenizer)
    vocab = student.get_output_embeddings().weight.shape[0]
    train_inputs = as_inputs(train_blocks, vocab)
    if eval_blocks is not None:
        as_inputs(eval_blocks if isinstance(eval_blocks, Tensor) else {}, vocab, "eval_blocks")  # plain blocks only

    device = best_device()
    mixed = fast_dtype(device) if config.bf16 == "auto" else (torch.bfloat16 if config.bf16 else torch.float32)
    teacher_dtype = mixed if config.teacher_bf16 in (True, "auto") and mixed != torch.float32 else None
    module = _module(student, teacher, layer_map, config)
    output_dir = config.output_dir or tempfile.mkdtemp(prefix="distill-")
    args = _training_args(config, output_dir, device, mixed, "attention_mask" in train_inputs)
    flags = [(p, p.requires_grad) for p in teacher.parameters()] if teacher is not None else []
    was_training = teacher.training if teacher is not None else False
    try:
        frozen = None
        if teacher is not None and config.uses_teacher:
            teacher.eval().requires_grad_(False)
            frozen = _teacher_for_training(teacher, args.device, teacher_dtype)
        trainer = DistillTrainer(model=module, args=args, train_dataset=_Blocks(train_inputs),
                                 data_collator=default_data_collator, processing_class=tokenizer,
                                 teacher=frozen, distill_config=config)
        _add_callbacks(trainer, config, eval_blocks, callbacks)
        output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        if teacher is not None:
            teacher.train(was_training)
        if config.output_dir is None:
            shutil.rmtree(output_dir, ignore_errors=True)
    return _result(trainer, output.metrics, student, config, layer_map)


def _module(student: PreTrainedModel, teacher: PreTrainedModel | None, layer_map: LayerMap, config: DistillConfig
            ) -> DistillModule:
    """A deep fp32 copy of the student with its projections (seeded init; the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        module = DistillModule(copy.deepcopy(student).float().train().requires_grad_(True), layer_map,
                               teacher.config.hidden_size if teacher is not None else 0,
                               hidden=config.hidden_loss is not None, embedding=config.embedding_weight > 0)
        if config.kept_channels is not None:
            for projection in (module.layer_projection, module.embedding_projection):
                if projection is not None:
                    projection.init_from_channels(torch.as_tensor(config.kept_channels))
    return module


def _training_args(config: DistillConfig, output_dir: str, device: torch.device, mixed: torch.dtype,
                   padded: bool) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir, max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        warmup_steps=config.warmup_steps if config.warmup_steps is not None else config.warmup_ratio,
        seed=config.seed, data_seed=config.seed, bf16=mixed == torch.bfloat16, fp16=mixed == torch.float16,
        use_cpu=device.type == "cpu", save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500, save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps, logging_first_step=True, disable_tqdm=config.disable_tqdm,
        report_to="none", dataloader_num_workers=0, remove_unused_columns=False, log_level="warning",
        include_num_input_tokens_seen="non_padding" if padded else "all",
        **config.extra_args,
    )


def _add_callbacks(trainer: DistillTrainer, config: DistillConfig, eval_blocks: Tensor | None,
                   callbacks: list[TrainerCallback] | None) -> None:
    if config.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
    if eval_blocks is not None:
        trainer.add_callback(PerplexityCallback(trainer, eval_blocks, config.eval_steps, config.eval_batch_size,
                                                config.eval_at_start))
    for callback in callbacks or []:
        trainer.add_callback(callback)


def _result(trainer: DistillTrainer, train_metrics: dict[str, Any], student: PreTrainedModel,
            config: DistillConfig, layer_map: LayerMap) -> DistillResult:
    """The trained student (with its lineage step appended), history and final metrics."""
    trained = trainer.accelerator.unwrap_model(trainer.model)
    history = _history(trainer.state.log_history)
    metrics = {k: v for k, v in train_metrics.items() if isinstance(v, (int, float))}
    last_eval = [row for row in history if "eval_ppl" in row]
    if last_eval:
        metrics.update(eval_loss=last_eval[-1]["eval_loss"], eval_ppl=last_eval[-1]["eval_ppl"])
    tokens_seen = int(trainer.state.num_input_tokens_seen)
    cfg = {k: v for k, v in asdict(config).items() if k not in ("output_dir", "resume_from_checkpoint")}
    step = {"method": "distill" if config.uses_teacher else "finetune", "config": cfg, "layer_map": layer_map,
            "tokens_seen": tokens_seen, "metrics": metrics}
    trained.student.workbook_steps = [*getattr(student, "workbook_steps", []), step]  # lineage, as in pruning
    return DistillResult(student=trained.student.eval(), history=history, tokens_seen=tokens_seen, config=config,
                         layer_map=layer_map, metrics=metrics,
                         projections={k: v.detach().cpu() for k, v in trained.projections_state_dict().items()})


def save_distilled(
    result: DistillResult,
    tokenizer: PreTrainedTokenizerBase,
    dest: str | Path,
    parent: str,
    recipe_extra: dict[str, Any] | None = None,
) -> Path:
    """Save the distilled student as a plain HF checkpoint + ``recipe.json`` (via ``helpers.models.save_model``).

    ``recipe.steps`` is the student's lineage (``workbook_steps``: e.g. the pruning steps, then this run with its
    method, loss configuration, layer map, tokens seen and final metrics); ``parent`` is the model (folder or
    name) the student was derived from.
    """
    steps = list(getattr(result.student, "workbook_steps", []))
    recipe = {"parent": str(parent), "steps": steps, "tokens_seen": result.tokens_seen, "metrics": result.metrics,
              **(recipe_extra or {})}
    return save_model(result.student, tokenizer, dest, recipe)
