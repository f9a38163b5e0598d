"""What the ``transformers.Trainer`` of :func:`helpers.distill.distill` trains, and how: the student with its
projections (:class:`DistillModule`), the loss (:class:`DistillTrainer`), checkpoints, and the held-out perplexity
logged during training (:class:`PerplexityCallback`).

The objective (Minitron: Muralidharan et al. 2024; Sreenivas et al. 2024), per micro-batch::

    L = L_logits + alpha * L_is + ce_weight * L_CE         loss in {"forward_kl", "reverse_kl", "jsd"}
    L_is = hidden_weight * L_hidden + embedding_weight * L_embedding
    alpha = L_logits / L_is (detached) if dynamic_alpha else 1
    L = L_CE                                               loss == "ce": plain fine-tuning, no teacher forward
    L_logits = topk_cached_kl(z_s, cache rows) [+ ce]      a teacher-logit cache: no teacher forward either

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
from collections import defaultdict
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, Trainer, TrainerCallback

from .config import DistillConfig, LayerMap
from .losses import (HiddenProjection, causal_lm_loss, dynamic_alpha, embedding_loss, hidden_state_loss,
                     logit_distillation_loss, shift_labels, topk_cached_kl)

__all__ = ["PROJECTIONS_FILE", "DistillModule", "DistillTrainer", "PerplexityCallback"]

PROJECTIONS_FILE = "distill_projections.safetensors"


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
    """``Trainer`` whose ``compute_loss`` runs the frozen teacher and the distillation objective (module doc), or,
    when the batch carries a teacher-logit cache's rows (``topk_logprobs``, ``topk_indices``), ``topk_cached_kl``."""

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

    def _teacher_loss(self, out: dict[str, Any], parts: dict[str, Tensor], input_ids: Tensor,
                      attention_mask: Tensor | None, logit_mask: Tensor) -> Tensor:
        """``L_logits + alpha * L_is`` from a teacher forward on the batch; the parts go into ``parts``."""
        cfg = self.distill_config
        teacher_out = self._teacher_forward(input_ids, attention_mask, cfg.uses_hidden_states)
        teacher_logits = teacher_out.logits  # [B, S, V], no grad
        if cfg.teacher_temperature != 1.0:
            teacher_logits = teacher_logits / cfg.teacher_temperature
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
        del teacher_out
        if intermediate is not None:
            alpha = dynamic_alpha(parts["kd"], intermediate) if cfg.dynamic_alpha else loss.new_ones(())
            parts["alpha"] = alpha
            loss = loss + alpha * intermediate
        return loss

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
            logit_mask = shift_labels(labels, attention_mask) != -100  # [B, S]
            if "topk_logprobs" in inputs:  # a teacher-logit cache: no teacher forward
                target = inputs["topk_logprobs"]  # [B, S, k]; a teacher temperature scales it like the logits
                parts["kd"] = loss = topk_cached_kl(
                    out["logits"], target / cfg.teacher_temperature if cfg.teacher_temperature != 1.0 else target,
                    inputs["topk_indices"], mask=logit_mask, temperature=cfg.temperature,
                    renormalize_student=cfg.renormalize_student)
            else:
                loss = self._teacher_loss(out, parts, input_ids, attention_mask, logit_mask)
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
