"""Knowledge distillation of a (pruned) student from a frozen teacher, on ``transformers.Trainer``.

The objective, the module that is trained and the checkpoints are described in ``trainer.py`` beside this module;
comparisons of a student with its teacher (channel matching, agreement, hidden-state similarity) are in
``diagnostics.py``; what is checked before training and the data the Trainer sees, in ``inputs.py``.

:func:`distill` validates everything first (config, models, data), then trains and returns a *new* student in a
:class:`DistillResult` with the history the notebooks plot; the student passed in is left as it was.
:class:`DistillConfig` and the layer maps live in ``config.py``; everything is re-exported by ``helpers.distill``.
The teacher is never modified: it runs in eval mode under ``torch.no_grad`` (its ``requires_grad`` flags are
switched off during training and restored), or as a low-precision copy when ``teacher_bf16``. With
``teacher_logits`` (a cache from ``logit_cache.py``: the teacher's top-k log-probs, rows aligned with the blocks) it
does not run at all and may be None.

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
from ..evaluate import Perplexity, remember_perplexity
from ..hardware import best_device, fast_dtype
from ..models import save_model
from .config import DistillConfig, LayerMap
from .inputs import _Blocks, _with_cache, as_inputs, check_preference_rows, validate
from .on_policy import OnPolicy, OnPolicyData
from .trainer import DistillModule, DistillTrainer, PerplexityCallback

__all__ = ["DistillResult", "distill", "save_distilled"]


# ----------------------------------------------------------------------------------------------------
# Entry points


@dataclass
class DistillResult:
    """The trained student (a new object), the trained projections, and what the notebooks plot.

    ``final_eval``: the held-out ``Perplexity`` at the end (None without ``eval_blocks``).
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
    final_eval: Perplexity | None = None  # the last held-out evaluation, with per-window statistics (for bands)


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
    teacher_logits: dict[str, Tensor] | None = None,
    on_policy: OnPolicy | None = None,
) -> DistillResult:
    """Distil ``teacher`` into a deep copy of ``student`` on ``train_blocks`` (``[n_blocks, block_size]``).

    Neither input model is modified (the student is copied and trained in fp32 master weights; the teacher only
    runs forward). Everything is validated before any training. ``teacher`` may be None for ``loss="ce"``, and
    when ``teacher_logits`` is given: a teacher-logit cache (``build_logit_cache`` / ``load_logit_cache``: top-k
    log-probs and ids ``[n_blocks, block_size, k]``, rows aligned with ``train_blocks``); then no teacher runs, the
    loss is ``losses.topk_cached_kl`` (``loss="forward_kl"`` only, no hidden-state or embedding losses;
    ``config.top_k`` None or k), which equals the teacher run with ``top_k=k``.
    ``eval_blocks``: held-out packed blocks ``[n, window]`` for perplexity during training. ``tokenizer`` is saved
    in checkpoints. ``callbacks``: extra ``TrainerCallback``s (live plots, timers).
    ``on_policy``: an :class:`OnPolicy` source (``on_policy.py``): a share ``lmbda`` of the batches are the
    student's own sampled answers to its prompts, the rest rows of ``train_blocks`` (per-example rows with
    ``attention_mask`` and ``labels``, e.g. ``synthetic.pair_inputs``); needs the teacher and ``tokenizer``.
    Raises ``ValueError`` for bad configs/inputs, ``FloatingPointError`` when the loss becomes NaN/inf.
    """
    check_supported(student)
    vocab = student.get_output_embeddings().weight.shape[0]
    train_inputs = as_inputs(_with_cache(train_blocks, teacher_logits), vocab)
    cache_k = train_inputs["topk_indices"].shape[-1] if "topk_indices" in train_inputs else None
    layer_map = validate(student, teacher, config, tokenizer, teacher_tokenizer, cache_top_k=cache_k)
    check_preference_rows(train_inputs, config)
    teacher = None if cache_k is not None else teacher  # a cached run never touches the teacher
    if on_policy is not None:
        _check_on_policy(on_policy, teacher, config, train_inputs, tokenizer)
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
        dataset = _Blocks(train_inputs) if on_policy is None else OnPolicyData(
            on_policy, train_inputs, module.student, tokenizer, config.batch_size, config.max_steps * config.grad_accum,
            mixed)
        trainer = DistillTrainer(model=module, args=args, train_dataset=dataset,
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
    return _result(trainer, output.metrics, student, config, layer_map, cache_k, on_policy)


def _check_on_policy(source: OnPolicy, teacher: PreTrainedModel | None, config: DistillConfig,
                     inputs: dict[str, Tensor], tokenizer: PreTrainedTokenizerBase | None) -> None:
    """What an on-policy run needs, checked before any work."""
    if not isinstance(source, OnPolicy):
        raise TypeError(f"on_policy must be an OnPolicy, got {type(source).__name__}")
    if teacher is None or not config.uses_teacher:
        raise ValueError("on_policy needs a live teacher and a divergence loss (forward_kl, reverse_kl or jsd): the "
                         "teacher scores the student's own samples, which no cache or CE label holds")
    if tokenizer is None:
        raise ValueError("on_policy needs tokenizer= (the student's prompts are chat-templated and tokenized)")
    if not {"labels", "attention_mask"} <= set(inputs):
        raise ValueError("on_policy trains on per-example rows: train_blocks must hold input_ids, attention_mask and "
                         "labels (prompt = -100), e.g. helpers.distill.pair_inputs; got " + ", ".join(sorted(inputs)))
    if config.resume_from_checkpoint:
        raise ValueError("an on-policy run cannot resume from a checkpoint: its samples come from the student as it "
                         "was at each step; start it again (save_steps still writes usable checkpoints)")


def _module(student: PreTrainedModel, teacher: PreTrainedModel | None, layer_map: LayerMap, config: DistillConfig
            ) -> DistillModule:
    """A deep fp32 copy of the student with its projections (seeded init; the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        module = DistillModule(copy.deepcopy(student).float().train().requires_grad_(True), layer_map,
                               teacher.config.hidden_size if teacher is not None else 0,
                               hidden=config.hidden_loss is not None, embedding=config.embedding_weight > 0,
                               contrastive=config.contrastive_weight > 0)
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
            config: DistillConfig, layer_map: LayerMap, cache_k: int | None = None,
            on_policy: OnPolicy | None = None) -> DistillResult:
    """The trained student (with its lineage step appended: a cached teacher as ``teacher_logit_cache``),
    history and final metrics."""
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
    if cache_k is not None:
        step["teacher_logit_cache"] = {"top_k": cache_k}
    if on_policy is not None:
        metrics.update(on_policy.stats)
        step["on_policy"] = {k: v for k, v in asdict(on_policy).items() if k not in ("prompts", "stats")} | {
            "n_prompts": len(on_policy.prompts)}
    trained.student.workbook_steps = [*getattr(student, "workbook_steps", []), step]  # lineage, as in pruning
    callback = next((c for c in trainer.callback_handler.callbacks if isinstance(c, PerplexityCallback)), None)
    if (callback and callback.last_result and callback.last_step == trainer.state.global_step
            and trainer.accelerator.is_main_process):
        remember_perplexity("distilled", trained.student, callback.blocks, callback.last_result)  # later notebooks read it
    return DistillResult(student=trained.student.eval(), history=history, tokens_seen=tokens_seen, config=config,
                         layer_map=layer_map, metrics=metrics, final_eval=callback and callback.last_result,
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
