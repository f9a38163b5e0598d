"""What the ``transformers.Trainer`` of :func:`helpers.distill.distill` trains, and how: the student with its
projections (:class:`DistillModule`), the loss (:class:`DistillTrainer`), checkpoints, and the held-out perplexity
logged during training (:class:`PerplexityCallback`).

The objective (Minitron: Muralidharan et al. 2024; Sreenivas et al. 2024), per micro-batch::

    L = L_logits + alpha * L_is + ce_weight * L_CE         loss in {"forward_kl", "reverse_kl", "jsd"}
        [+ preference_weight * L_pref + contrastive_weight * L_nce]   (losses/contrastive.py)
    L_is = hidden_weight * L_hidden + embedding_weight * L_embedding
    alpha = L_logits / L_is (detached) if dynamic_alpha else 1
    L = L_CE                                               loss == "ce": plain fine-tuning, no teacher forward
    L_logits = topk_cached_kl(z_s, cache rows) [+ ce]      a teacher-logit cache: no teacher forward either

With ``preference_weight`` the batch also carries ``rejected_input_ids`` / ``rejected_attention_mask`` /
``rejected_labels`` (the student's own answers): chosen and rejected rows run in one forward of the student and
one of the teacher; ``L_logits`` and ``L_CE`` use the chosen rows only, ``L_pref`` both.
``L_logits`` is masked with the *shifted* labels (position s predicts token s+1; see ``losses.shift_labels``);
the intermediate losses use the attention mask. Hidden states come from ``output_hidden_states``: student layer
i is ``hidden_states[i + 1]`` (for the last layer transformers returns the state after the final norm, for
teacher and student alike), the embedding output is ``hidden_states[0]``.

What is trained: a :class:`DistillModule` holding a deep copy of the student plus the projections
(``losses.HiddenProjection``), so one ``nn.Module`` carries every trainable parameter and DDP/FSDP synchronise
them all. Checkpoints (``save_steps``) store the student with ``save_pretrained`` (tied embeddings handled by
transformers) and the projections in ``distill_projections.safetensors``; ``resume_from_checkpoint`` restores
both plus optimizer, scheduler, RNG and data position, so a resumed run ends with the same weights (bitwise on
CPU; on GPUs up to their non-deterministic kernels).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, Trainer, TrainerCallback

from .config import DistillConfig, LayerMap
from .losses import (HiddenProjection, causal_lm_loss, dynamic_alpha, embedding_loss, hidden_state_loss, info_nce,
                     logit_distillation_loss, masked_mean_pool, preference_loss, preference_margin,
                     retrieval_accuracy, sequence_logprobs, shift_labels, taid_target, topk_cached_kl)
from .losses import TaidSchedule

__all__ = ["PROJECTIONS_FILE", "DistillModule", "DistillTrainer", "PerplexityCallback"]

PROJECTIONS_FILE = "distill_projections.safetensors"
TAID_FILE = "taid_schedule.json"


# ----------------------------------------------------------------------------------------------------
# What the Trainer trains


class DistillModule(nn.Module):
    """The student plus the projections of its hidden states: the one module the Trainer optimises.

    ``forward`` returns ``{"logits": [B, S, V], "hidden": [[B, S, H_t]] * len(layer_map), "embedding": [B, S, H_t],
    "pooled": [B, H_t]}`` (the last three only when configured). Projections run inside ``forward`` so DDP/FSDP see their gradients.
    """

    def __init__(self, student: PreTrainedModel, layer_map: LayerMap, teacher_hidden: int, hidden: bool,
                 embedding: bool, contrastive: bool = False) -> None:
        super().__init__()
        self.student, self.layer_map = student, layer_map
        width = student.config.hidden_size
        self.layer_projection = HiddenProjection(width, teacher_hidden, len(layer_map)) if hidden else None
        self.embedding_projection = HiddenProjection(width, teacher_hidden, 1) if embedding else None
        self.contrastive_projection = HiddenProjection(width, teacher_hidden, 1) if contrastive else None
        self._no_split_modules = getattr(student, "_no_split_modules", None)  # FSDP auto-wrap

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None) -> dict[str, Any]:
        need_states = any(p is not None for p in (self.layer_projection, self.embedding_projection,
                                                   self.contrastive_projection))
        out = self.student(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=need_states,
                           use_cache=False)
        result: dict[str, Any] = {"logits": out.logits}
        if self.layer_projection is not None:
            result["hidden"] = self.layer_projection([out.hidden_states[s + 1] for s, _ in self.layer_map])
        if self.embedding_projection is not None:
            result["embedding"] = self.embedding_projection([out.hidden_states[0]])[0]
        if self.contrastive_projection is not None:  # [B, H_t]: the last state, mean-pooled, projected
            pooled = masked_mean_pool(out.hidden_states[-1], attention_mask)
            result["pooled"] = self.contrastive_projection([pooled[:, None]])[0][:, 0]
        return result

    def projections_state_dict(self) -> dict[str, Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("student.")}


class DistillTrainer(Trainer):
    """``Trainer`` whose ``compute_loss`` runs the frozen teacher and the distillation objective (module doc), or,
    when the batch carries a teacher-logit cache's rows (``topk_logprobs``, ``topk_indices``), ``topk_cached_kl``."""

    loss_is_scaled_for_ga = False  # compute_loss returns a per-micro-batch mean; Trainer divides by grad_accum

    def __init__(self, *args: Any, teacher: nn.Module | None, distill_config: DistillConfig, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher, self.distill_config = teacher, distill_config
        self._parts: dict[str, float] = defaultdict(float)
        self._parts_n = 0
        self.layer_map: LayerMap = self.accelerator.unwrap_model(self.model).layer_map
        self.taid = TaidSchedule(distill_config.max_steps, distill_config.taid, distill_config.taid_t_start,
                                 alpha=distill_config.taid_alpha) if distill_config.taid else None
        self._taid_losses: list[float] = []
        if self.taid is not None:
            self.add_callback(_TaidStep(self))

    def _teacher_forward(self, input_ids: Tensor, attention_mask: Tensor | None, hidden: bool) -> Any:
        low_precision = next(self.teacher.parameters()).dtype in (torch.bfloat16, torch.float16)
        with torch.no_grad(), (contextlib.nullcontext() if low_precision else self.accelerator.autocast()):
            return self.teacher(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden,
                                use_cache=False)

    def _teacher_loss(self, out: dict[str, Any], parts: dict[str, Tensor], input_ids: Tensor,
                      attention_mask: Tensor | None, logit_mask: Tensor) -> tuple[Tensor, Any]:
        """``L_logits + alpha * L_is`` from a teacher forward on the batch (the parts go into ``parts``), and the
        teacher's output (for the contrastive terms)."""
        cfg = self.distill_config
        teacher_out = self._teacher_forward(input_ids, attention_mask, cfg.uses_hidden_states)
        teacher_logits = teacher_out.logits  # [B, S, V], no grad
        if cfg.teacher_temperature != 1.0:
            teacher_logits = teacher_logits / cfg.teacher_temperature
        if self.taid is not None:  # TAID: a target between the student's own distribution and the teacher's
            parts["taid_t"] = out["logits"].new_tensor(self.taid.t)
            teacher_logits = taid_target(out["logits"], teacher_logits, self.taid.t)
        parts["kd"] = loss = logit_distillation_loss(
            out["logits"], teacher_logits, cfg.loss, mask=logit_mask, temperature=cfg.temperature,
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
        if intermediate is not None:
            alpha = dynamic_alpha(parts["kd"], intermediate) if cfg.dynamic_alpha else loss.new_ones(())
            parts["alpha"] = alpha
            loss = loss + alpha * intermediate
        return loss, teacher_out

    def _contrastive_terms(self, out: dict[str, Any], teacher_out: Any, parts: dict[str, Tensor],
                           all_labels: Tensor, attention_mask: Tensor | None, n_chosen: int) -> Tensor:
        """``preference_weight * L_pref + contrastive_weight * L_nce`` (losses/contrastive.py); parts logged."""
        cfg, total = self.distill_config, out["logits"].new_zeros(())
        if cfg.preference_weight:
            s_seq = sequence_logprobs(out["logits"], all_labels)  # [2B]: chosen rows, then rejected rows
            with torch.no_grad():
                t_seq = sequence_logprobs(teacher_out.logits, all_labels)
            args = (s_seq[:n_chosen], s_seq[n_chosen:], t_seq[:n_chosen], t_seq[n_chosen:], cfg.preference_beta)
            parts["preference"] = preference_loss(*args)
            parts["margin"] = preference_margin(*args).detach().mean()
            total = total + cfg.preference_weight * parts["preference"]
        if cfg.contrastive_weight:
            teacher_pooled = masked_mean_pool(teacher_out.hidden_states[-1].float(), attention_mask)
            parts["contrastive"] = info_nce(out["pooled"], teacher_pooled, cfg.contrastive_temperature)
            parts["retrieval"] = retrieval_accuracy(out["pooled"], teacher_pooled)
            total = total + cfg.contrastive_weight * parts["contrastive"]
        return total

    def compute_loss(self, model: nn.Module, inputs: dict[str, Tensor], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Tensor | tuple[Tensor, Any]:
        cfg = self.distill_config
        input_ids, attention_mask = inputs["input_ids"], inputs.get("attention_mask")
        labels = inputs.get("labels", input_ids)  # unshifted, -100 = ignore
        n_chosen, all_labels = len(input_ids), labels
        if "rejected_input_ids" in inputs:  # chosen and rejected rows in one forward; KD and CE see the chosen only
            input_ids = torch.cat([input_ids, inputs["rejected_input_ids"]])
            attention_mask = torch.cat([attention_mask, inputs["rejected_attention_mask"]])
            all_labels = torch.cat([labels, inputs["rejected_labels"]])
            labels = torch.cat([labels, torch.full_like(labels, -100)])
        out = model(input_ids=input_ids, attention_mask=attention_mask)
        parts: dict[str, Tensor] = {}
        if cfg.loss == "ce" or cfg.ce_weight > 0:
            parts["ce"] = causal_lm_loss(out["logits"], labels, attention_mask)
        if cfg.loss == "ce":
            loss = parts["ce"]
        else:
            logit_mask = shift_labels(labels, attention_mask) != -100  # [B, S]
            if "topk_logprobs" in inputs:  # a teacher-logit cache: no teacher forward
                target = inputs["topk_logprobs"]  # [B, S, k]; a teacher temperature scales it like the logits
                parts["kd"] = loss = topk_cached_kl(
                    out["logits"], target / cfg.teacher_temperature if cfg.teacher_temperature != 1.0 else target,
                    inputs["topk_indices"], mask=logit_mask, temperature=cfg.temperature,
                    renormalize_student=cfg.renormalize_student)
            else:
                loss, teacher_out = self._teacher_loss(out, parts, input_ids, attention_mask, logit_mask)
                if cfg.preference_weight or cfg.contrastive_weight:
                    loss = loss + self._contrastive_terms(out, teacher_out, parts, all_labels, attention_mask, n_chosen)
                del teacher_out
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
        if self.taid is not None:
            self._taid_losses.append(parts["kd"].item())
        return (loss, out) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs and self._parts_n:  # a training log: add the loss parts averaged since the last one
            logs.update({k: v / self._parts_n for k, v in self._parts.items()})
            self._parts.clear()
            self._parts_n = 0
        super().log(logs, start_time)

    # No public hook saves or restores a non-PreTrainedModel with tied weights: Trainer would write DistillModule as one
    # flat safetensors file, which refuses shared tensors and is no stock checkpoint. tests/test_distill.py
    # (test_trainer_private_hooks_still_exist, test_resume...) fails if a transformers upgrade changes these two hooks.
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
        if self.taid is not None:  # the moving target's state, so a resumed run continues the same schedule
            (output_dir / TAID_FILE).write_text(json.dumps(dataclasses.asdict(self.taid)))
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
        if self.taid is not None:
            state = json.loads((folder / TAID_FILE).read_text()) if (folder / TAID_FILE).is_file() else None
            if state is None:
                raise ValueError(f"Checkpoint {folder} has no {TAID_FILE}: it was not written by a TAID run")
            self.taid.t, self.taid.momentum, self.taid.prev_loss = state["t"], state["momentum"], state["prev_loss"]


class _TaidStep(TrainerCallback):
    """Moves TAID's ``t`` after every optimizer step, from that step's mean KD loss (``losses.TaidSchedule``)."""

    def __init__(self, trainer: DistillTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        losses = self.trainer._taid_losses
        if losses:
            self.trainer.taid.update(sum(losses) / len(losses), state.global_step)
            losses.clear()


class PerplexityCallback(TrainerCallback):
    """Held-out ``eval_loss``/``eval_ppl`` (``helpers.evaluate.perplexity``'s protocol, in the run's precision)
    at step 0 (unless ``at_start`` is False), every ``every`` steps and at the end, appended to
    ``state.log_history``."""

    def __init__(self, trainer: DistillTrainer, blocks: Tensor, every: int, batch_size: int, at_start: bool = True
                 ) -> None:
        self.trainer, self.blocks, self.every, self.batch_size = trainer, blocks, every, batch_size
        self.at_start = at_start
        self.last_step = -1
        self.last_result = None

    def _evaluate(self, state: Any) -> None:
        from ..evaluate import perplexity

        args = self.trainer.args
        student = self.trainer.accelerator.unwrap_model(self.trainer.model).student
        result = perplexity(student, self.blocks, self.batch_size, use_autocast=args.bf16 or args.fp16)
        self.last_result = result  # with per-window statistics, for bands (DistillResult.final_eval)
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
