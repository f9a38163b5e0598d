"""Knowledge distillation of a (pruned) student from a frozen teacher, on ``transformers.Trainer``.

The objective (Minitron: Muralidharan et al. 2024; Sreenivas et al. 2024), per micro-batch::

    L = L_logits + alpha * L_is + ce_weight * L_CE         loss in {"forward_kl", "reverse_kl", "jsd"}
    L_is = hidden_weight * L_hidden + embedding_weight * L_embedding
    alpha = L_logits / L_is (detached) if dynamic_alpha else 1
    L = L_CE                                               loss == "ce": plain fine-tuning, no teacher forward

``L_logits`` is masked with the *shifted* labels (position s predicts token s+1; see ``losses.shift_labels``);
the intermediate losses use the attention mask. Hidden states come from ``output_hidden_states``: student layer
i is ``hidden_states[i + 1]`` (for the last layer transformers returns the state after the final norm, for
teacher and student alike), the embedding output is ``hidden_states[0]``.

:func:`distill` validates everything first (config, models, data), then trains and returns a *new* student in a
:class:`DistillResult` with the history the notebooks plot; the student passed in is left as it was.

What is trained: a :class:`DistillModule` holding a deep copy of the student plus the projections
(``losses.HiddenProjection``), so one ``nn.Module`` carries every trainable parameter and DDP/FSDP synchronise
them all. Checkpoints (``save_steps``) store the student with ``save_pretrained`` (tied embeddings handled by
transformers) and the projections in ``distill_projections.safetensors``; ``resume_from_checkpoint`` restores
both plus optimizer, scheduler, RNG and data position, so a resumed run ends with the same weights (bitwise on
CPU; on GPUs up to their non-deterministic kernels).
:class:`DistillConfig` and the layer maps live in :mod:`helpers.distill_config` and are re-exported here.
The teacher is never modified: it runs in eval mode under ``torch.no_grad`` (its ``requires_grad`` flags are
switched off during training and restored), or as a low-precision copy when ``teacher_bf16``.

Several GPUs / nodes: the same script runs under accelerate, e.g.::

    accelerate launch --multi_gpu --num_processes 8 my_distill.py            # DDP
    accelerate launch --use_fsdp --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
        --fsdp_transformer_layer_cls_to_wrap LlamaDecoderLayer --num_processes 8 my_distill.py

where ``my_distill.py`` calls :func:`distill`. The teacher is replicated on every device (no ZeRO-3 sharding).
"""

from __future__ import annotations

import contextlib
import copy
import shutil
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase, Trainer, TrainerCallback, TrainingArguments
from transformers import default_data_collator
from transformers.trainer_callback import PrinterCallback

from .architecture import check_supported
from .distill_config import (LOSSES, DistillConfig, LayerMap, last_k_layer_map, plot_layer_map,  # noqa: F401
                             resolve_layer_map, uniform_layer_map)  # re-exported
from .hardware import best_device, fast_dtype
from .losses import (HiddenProjection, causal_lm_loss, dynamic_alpha, embedding_loss, hidden_state_loss,
                     logit_distillation_loss, shift_labels)
from .models import save_model

PROJECTIONS_FILE = "distill_projections.safetensors"


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


@torch.no_grad()
def match_hidden_channels(student: PreTrainedModel, teacher: PreTrainedModel, rows: int = 512) -> list[int] | None:
    """For a student whose hidden size was pruned (and not yet trained): the teacher channel each student channel
    came from, found by matching embedding columns exactly on the first ``rows`` tokens; None when some student
    channel matches no teacher channel (e.g. after training). Feed it to ``DistillConfig.kept_channels``."""
    s = student.get_input_embeddings().weight[:rows].detach().float().cpu()  # [rows, H_s]
    t = teacher.get_input_embeddings().weight[:rows].detach().float().cpu()  # [rows, H_t]
    if s.shape[0] != t.shape[0]:
        return None
    dist = torch.cdist(s.T, t.T, compute_mode="donot_use_mm_for_euclid_dist")  # [H_s, H_t], exact
    best = dist.min(dim=1)
    if bool((best.values > 1e-6 * (1 + s.abs().max())).any()) or len(set(best.indices.tolist())) != s.shape[1]:
        return None
    return best.indices.tolist()


@torch.no_grad()
def teacher_agreement(student: PreTrainedModel, teacher: PreTrainedModel, blocks: Tensor, batch_size: int = 2,
                      use_autocast: bool = True) -> dict[str, float]:
    """How close the student's next-token distributions are to the teacher's on ``blocks`` ``[n, L]``: mean forward
    KL(p_t || p_s) in nats per predicted position and the fraction of positions whose top-1 tokens agree."""
    from .hardware import autocast

    kl_sum, agree, n = 0.0, 0, 0
    device_s, device_t = next(student.parameters()).device, next(teacher.parameters()).device
    for batch in blocks.split(batch_size):
        with autocast(device_s, enabled=use_autocast):
            s_logits = student(input_ids=batch.to(device_s)).logits[:, :-1]
        with autocast(device_t, enabled=use_autocast):
            t_logits = teacher(input_ids=batch.to(device_t)).logits[:, :-1].to(s_logits.device)
        positions = s_logits.shape[0] * s_logits.shape[1]
        kl_sum += logit_distillation_loss(s_logits, t_logits, "forward_kl").item() * positions
        agree += int((s_logits.argmax(-1) == t_logits.argmax(-1)).sum())
        n += positions
    return {"forward_kl": kl_sum / n, "top1_agreement": agree / n}


@torch.no_grad()
def hidden_similarity(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    blocks: Tensor,
    layer_map: LayerMap,
    projections: dict[str, Tensor] | None = None,
    kept_channels: list[int] | None = None,
) -> list[float]:
    """Mean cosine similarity, per ``(student, teacher)`` pair of ``layer_map``, between the teacher's hidden state
    and the student's mapped to the teacher's width: by the learned ``projections`` (``DistillResult.projections``),
    else by the selection matrix of ``kept_channels``, else unchanged (equal widths). ``blocks``: ``[n, L]`` ids."""
    h_s, h_t = student.config.hidden_size, teacher.config.hidden_size
    weights = []
    for k in range(len(layer_map)):
        if projections is not None:
            key = f"layer_projection.proj.{k}.weight"
            if key not in projections:
                raise ValueError(f"projections lack {key!r}: give those of a run with hidden_loss and this layer map")
            weights.append(projections[key].float())
        elif kept_channels is not None:
            w = torch.zeros(h_t, h_s)
            w[torch.as_tensor(kept_channels), torch.arange(h_s)] = 1.0
            weights.append(w)
        elif h_s == h_t:
            weights.append(None)
        else:
            raise ValueError(f"student width {h_s} != teacher width {h_t}: give projections or kept_channels")
    totals = torch.zeros(len(layer_map), dtype=torch.float64)
    device_s, device_t = next(student.parameters()).device, next(teacher.parameters()).device
    for batch in blocks.split(4):
        s_states = student(input_ids=batch.to(device_s), output_hidden_states=True).hidden_states
        t_states = teacher(input_ids=batch.to(device_t), output_hidden_states=True).hidden_states
        for k, (s, t) in enumerate(layer_map):
            x = s_states[s + 1].float()
            if weights[k] is not None:
                x = x @ weights[k].to(x.device).T
            cos = torch.nn.functional.cosine_similarity(x, t_states[t + 1].float().to(x.device), dim=-1)
            totals[k] += cos.sum().item()
    return (totals / blocks.numel()).tolist()


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
# What the Trainer trains


class DistillModule(nn.Module):
    """The student plus the projections of its hidden states: the one module the Trainer optimises.

    ``forward`` returns ``{"logits": [B, S, V], "hidden": [[B, S, H_t]] * len(layer_map), "embedding": [B, S, H_t]}``
    (the last two only when configured). Projections run inside ``forward`` so DDP/FSDP see their gradients.
    """

    def __init__(self, student: PreTrainedModel, layer_map: LayerMap, teacher_hidden: int, hidden: bool,
                 embedding: bool) -> None:
        super().__init__()
        self.student, self.layer_map = student, layer_map
        width = student.config.hidden_size
        self.layer_projection = HiddenProjection(width, teacher_hidden, len(layer_map)) if hidden else None
        self.embedding_projection = HiddenProjection(width, teacher_hidden, 1) if embedding else None
        self._no_split_modules = getattr(student, "_no_split_modules", None)  # FSDP auto-wrap

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, Any]:
        need_states = self.layer_projection is not None or self.embedding_projection is not None
        out = self.student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_states,
                           use_cache=False)
        result: dict[str, Any] = {"logits": out.logits}
        if self.layer_projection is not None:
            result["hidden"] = self.layer_projection([out.hidden_states[s + 1] for s, _ in self.layer_map])
        if self.embedding_projection is not None:
            result["embedding"] = self.embedding_projection([out.hidden_states[0]])[0]
        return result

    def projections_state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("student.")}


class DistillTrainer(Trainer):
    """``Trainer`` whose ``compute_loss`` runs the frozen teacher and the distillation objective (module doc)."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean; Trainer divides by grad_accum

    def __init__(self, *args: Any, teacher: nn.Module | None, distill_config: DistillConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher, self.distill_config = teacher, distill_config
        self._parts: dict[str, float] = defaultdict(float)
        self._parts_n = 0
        self.layer_map: LayerMap = self.accelerator.unwrap_model(self.model).layer_map

    def _teacher_forward(self, input_ids: Tensor, attention_mask: Tensor | None, hidden: bool) -> Any:
        low_precision = next(self.teacher.parameters()).dtype in (torch.bfloat16, torch.float16)
        with torch.no_grad(), (contextlib.nullcontext() if low_precision else self.accelerator.autocast()):
            return self.teacher(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden,
                                use_cache=False)

    def compute_loss(self, model: nn.Module, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Tensor | tuple[Tensor, Any]:
        cfg = self.distill_config
        input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
        labels = inputs.get("labels", input_ids)  # unshifted, -100 = ignore
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        parts: dict[str, Tensor] = {}
        if cfg.loss == "ce" or cfg.ce_weight > 0:
            parts["ce"] = causal_lm_loss(out["logits"], labels, attention_mask)
        if cfg.loss == "ce":
            loss = parts["ce"]
        else:
            teacher_out = self._teacher_forward(input_ids, attention_mask, cfg.uses_hidden_states)
            logit_mask = shift_labels(labels, attention_mask) != -100  # [B, S]
            parts["kd"] = loss = logit_distillation_loss(
                out["logits"], teacher_out.logits, cfg.loss, mask=logit_mask, temperature=cfg.temperature,
                beta=cfg.jsd_beta, top_k=cfg.top_k, renormalize_student=cfg.renormalize_student)
            intermediate = None
            if "hidden" in out:
                targets = [teacher_out.hidden_states[t + 1] for _, t in self.layer_map]
                parts["hidden"] = hidden_state_loss(out["hidden"], targets, cfg.hidden_loss, attention_mask)
                intermediate = cfg.hidden_weight * parts["hidden"]
            if "embedding" in out:
                parts["embedding"] = embedding_loss(out["embedding"], teacher_out.hidden_states[0],
                                                    cfg.hidden_loss or "cosine", attention_mask)
                term = cfg.embedding_weight * parts["embedding"]
                intermediate = term if intermediate is None else intermediate + term
            del teacher_out
            if intermediate is not None:
                alpha = dynamic_alpha(parts["kd"], intermediate) if cfg.dynamic_alpha else loss.new_ones(())
                parts["alpha"] = alpha
                loss = loss + alpha * intermediate
            if cfg.ce_weight > 0:
                loss = loss + cfg.ce_weight * parts["ce"]
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k}={v.item():.4g}" for k, v in parts.items())
            raise FloatingPointError(
                f"Distillation loss became {loss.item()} at step {self.state.global_step + 1} ({detail}). Stopping: "
                "lower the learning rate, check the data and models for NaN/inf, or train in fp32 (bf16=False).")
        for k, v in parts.items():
            self._parts[k] += v.item()
        self._parts_n += 1
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts_n:  # a training log: add the loss parts averaged since the last one
            logs.update({k: v / self._parts_n for k, v in self._parts.items()})
            self._parts.clear()
            self._parts_n = 0
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Student via ``save_pretrained`` (handles tied weights) + projections in their own safetensors file."""
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        module = self.accelerator.unwrap_model(self.model)
        state_dict = module.state_dict() if state_dict is None else state_dict
        student_state = {k[len("student."):]: v for k, v in state_dict.items() if k.startswith("student.")}
        module.student.save_pretrained(output_dir, state_dict=student_state)
        extra = {k: v.detach().contiguous() for k, v in state_dict.items() if not k.startswith("student.")}
        if extra:
            safetensors.torch.save_file(extra, str(output_dir / PROJECTIONS_FILE), metadata={"format": "pt"})
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        torch.save(self.args, output_dir / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        if self.is_fsdp_enabled or self.is_deepspeed_enabled:
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        folder, module = Path(resume_from_checkpoint), self.accelerator.unwrap_model(model or self.model)
        files = sorted(folder.glob("model*.safetensors"))
        if not files:
            raise ValueError(f"No model*.safetensors in checkpoint {folder}")
        state: dict[str, Tensor] = {}
        for f in files:
            state.update(safetensors.torch.load_file(str(f), device="cpu"))
        missing, unexpected = module.student.load_state_dict(state, strict=False)
        tied = set(getattr(module.student, "_tied_weights_keys", None) or {})
        if unexpected or set(missing) - tied:
            raise ValueError(f"Checkpoint {folder} does not match the student: missing {missing}, "
                             f"unexpected {unexpected}")
        expected = module.projections_state_dict().keys()
        path = folder / PROJECTIONS_FILE
        found = safetensors.torch.load_file(str(path)) if path.is_file() else {}
        if found.keys() != expected:
            raise ValueError(f"Checkpoint {folder} has projections {sorted(found)}, this run needs {sorted(expected)} "
                             "(resume with the same hidden_loss / embedding_weight / layer_map)")
        module.load_state_dict(found, strict=False)


class PerplexityCallback(TrainerCallback):
    """Held-out ``eval_loss``/``eval_ppl`` (``helpers.evaluate.perplexity``'s protocol, in the run's precision)
    at step 0 (unless ``at_start`` is False), every ``every`` steps and at the end, appended to
    ``state.log_history``."""

    def __init__(self, trainer: DistillTrainer, blocks: Tensor, every: int, batch_size: int, at_start: bool = True
                 ) -> None:
        self.trainer, self.blocks, self.every, self.batch_size = trainer, blocks, every, batch_size
        self.at_start = at_start
        self.last_step = -1

    def _evaluate(self, state: Any) -> None:
        from .evaluate import perplexity

        args = self.trainer.args
        student = self.trainer.accelerator.unwrap_model(self.trainer.model).student
        result = perplexity(student, self.blocks, self.batch_size, use_autocast=args.bf16 or args.fp16)
        loss, ppl = result.nll, result.ppl
        self.last_step = state.global_step
        # straight into log_history (saved with checkpoints); Trainer.log here would reset control.should_log
        state.log_history.append({"eval_loss": loss, "eval_ppl": ppl, "step": state.global_step,
                                  "num_input_tokens_seen": state.num_input_tokens_seen})

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001 (Trainer callback signature)
        if state.global_step == 0 and self.at_start:
            self._evaluate(state)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.every and state.global_step % self.every == 0:
            self._evaluate(state)

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.last_step != state.global_step:
            self._evaluate(state)


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

    with torch.random.fork_rng(devices=[]):  # projections' init is seeded, global RNG untouched
        torch.manual_seed(config.seed)
        module = DistillModule(copy.deepcopy(student).float().train().requires_grad_(True), layer_map,
                               teacher.config.hidden_size if teacher is not None else 0,
                               hidden=config.hidden_loss is not None, embedding=config.embedding_weight > 0)
        if config.kept_channels is not None:
            for projection in (module.layer_projection, module.embedding_projection):
                if projection is not None:
                    projection.init_from_channels(torch.as_tensor(config.kept_channels))

    output_dir = config.output_dir or tempfile.mkdtemp(prefix="distill-")
    args = TrainingArguments(
        output_dir=output_dir, max_steps=config.max_steps, per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum, learning_rate=config.learning_rate,
        lr_scheduler_type=config.lr_scheduler, weight_decay=config.weight_decay, max_grad_norm=config.max_grad_norm,
        warmup_steps=config.warmup_steps if config.warmup_steps is not None else config.warmup_ratio,
        seed=config.seed, data_seed=config.seed, bf16=mixed == torch.bfloat16, fp16=mixed == torch.float16,
        use_cpu=device.type == "cpu", save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500, save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps, logging_first_step=True, disable_tqdm=config.disable_tqdm,
        report_to="none", dataloader_num_workers=0, remove_unused_columns=False, log_level="warning",
        include_num_input_tokens_seen="non_padding" if "attention_mask" in train_inputs else "all",
        **config.extra_args,
    )
    frozen = None
    flags = [(p, p.requires_grad) for p in teacher.parameters()] if teacher is not None else []
    was_training = teacher.training if teacher is not None else False
    try:
        if teacher is not None and config.uses_teacher:
            teacher.eval().requires_grad_(False)
            frozen = _teacher_for_training(teacher, args.device, teacher_dtype)
        trainer = DistillTrainer(model=module, args=args, train_dataset=_Blocks(train_inputs),
                                 data_collator=default_data_collator, processing_class=tokenizer,
                                 teacher=frozen, distill_config=config)
        if config.disable_tqdm:
            trainer.remove_callback(PrinterCallback)
        if eval_blocks is not None:
            trainer.add_callback(PerplexityCallback(trainer, eval_blocks, config.eval_steps, config.eval_batch_size,
                                                    config.eval_at_start))
        for callback in callbacks or []:
            trainer.add_callback(callback)
        output = trainer.train(resume_from_checkpoint=config.resume_from_checkpoint)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        if teacher is not None:
            teacher.train(was_training)
        if config.output_dir is None:
            shutil.rmtree(output_dir, ignore_errors=True)
    trained = trainer.accelerator.unwrap_model(trainer.model)
    history = _history(trainer.state.log_history)
    metrics = {k: v for k, v in output.metrics.items() if isinstance(v, (int, float))}
    last_eval = [row for row in history if "eval_ppl" in row]
    if last_eval:
        metrics.update(eval_loss=last_eval[-1]["eval_loss"], eval_ppl=last_eval[-1]["eval_ppl"])
    tokens_seen = int(trainer.state.num_input_tokens_seen)
    cfg = {k: v for k, v in asdict(config).items() if k not in ("output_dir", "resume_from_checkpoint")}
    step = {"method": "distill" if config.uses_teacher else "finetune", "config": cfg, "layer_map": layer_map,
            "tokens_seen": tokens_seen, "metrics": metrics}
    trained.student.workbook_steps = [*getattr(student, "workbook_steps", []), step]  # lineage, as helpers.pruning
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
