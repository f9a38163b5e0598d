"""Configuration of a distillation run and the student-to-teacher layer maps (used by :mod:`helpers.distill`).

:class:`DistillConfig` holds everything a run needs besides the models and data and checks it on creation;
the layer maps say which teacher layer supervises which student layer for the intermediate-state loss
(``uniform`` for depth-pruned students, ``last_k`` or an explicit list otherwise);
``helpers.distill.plot_layer_map`` draws one. Everything here is re-exported by ``helpers.distill``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .losses import HIDDEN_LOSSES, LOGIT_LOSSES, TAID_SCHEDULES

__all__ = ["LOSSES", "LayerMap", "DistillConfig", "last_k_layer_map", "uniform_layer_map", "resolve_layer_map"]

LOSSES: tuple[str, ...] = (*LOGIT_LOSSES, "ce")
LayerMap = list[tuple[int, int]]  # (student_layer, teacher_layer) pairs, 0-based


# ----------------------------------------------------------------------------------------------------
# Configuration


@dataclass
class DistillConfig:
    """Everything a distillation run needs besides the models and data (checked in ``__post_init__``)."""

    loss: str = "forward_kl"  # "forward_kl" | "reverse_kl" | "jsd" | "ce" (fine-tuning baseline)
    temperature: float = 1.0  # tau; Minitron uses 1
    teacher_temperature: float = 1.0  # the target is softmax(z_t / teacher_temperature) (before tau): set it to the
    # sampling temperature of teacher-generated training text to distil the distribution the text was drawn from
    jsd_beta: float = 0.5  # GKD beta: 0 = forward KL, 1 = reverse KL
    top_k: int | None = None  # distil only the teacher's top-k tokens (see losses module docstring)
    renormalize_student: bool | None = None  # with top_k / a cache: renormalise the student over the top-k too.
    # None = False for forward_kl (the student's full distribution: the loss then also pushes its mass into the
    # teacher's top-k; renormalised, the mass outside them is left free and can grow without bound, which wrecked a
    # cached top-64 run), True for reverse_kl / jsd (required there)
    ce_weight: float = 0.0  # extra next-token CE term (Minitron: 0)
    hidden_loss: str | None = None  # None | "cosine" | "mse" | "nmse"
    hidden_weight: float = 1.0
    layer_map: str | list[tuple[int, int]] = "uniform"  # "uniform" | "last_k" | [(student, teacher), ...]
    last_k: int = 4
    embedding_weight: float = 0.0  # > 0 adds the embedding-output loss (kind: hidden_loss or "cosine")
    dynamic_alpha: bool = True  # alpha = L_logits / L_is (detached), else alpha = 1
    preference_weight: float = 0.0  # > 0 adds DPO with the teacher as reference (rows carry rejected_* answers)
    preference_beta: float = 0.1  # DPO's beta: scale of the log-ratio margin
    contrastive_weight: float = 0.0  # > 0 adds in-batch InfoNCE between pooled last-layer states (needs batch >= 2)
    contrastive_temperature: float = 0.1  # InfoNCE temperature on cosine similarities
    taid: str | None = None  # None | "linear" | "adaptive": distil a target moving from the student to the teacher
    taid_t_start: float = 0.4  # TAID's interpolation weight of the teacher at step 0 (rises to 1)
    taid_alpha: float = 5e-4  # TAID's adaptive step size (its default suits long runs; short runs need more)
    kept_channels: list[int] | None = None  # hidden-pruned student: its channel c was teacher channel
    # kept_channels[c]; the projections then start as that selection matrix (see match_hidden_channels)
    max_steps: int = 100  # optimizer steps
    batch_size: int = 4  # blocks per device per micro-batch
    grad_accum: int = 1
    learning_rate: float = 1e-4
    warmup_ratio: float = 0.05  # fraction of max_steps (ignored when warmup_steps is set)
    warmup_steps: int | None = None
    weight_decay: float = 0.0
    lr_scheduler: str = "cosine"  # any transformers SchedulerType
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool | Literal["auto"] = "auto"  # mixed precision; "auto" -> helpers.hardware.fast_dtype
    teacher_bf16: bool | Literal["auto"] = "auto"  # frozen teacher weights in the mixed-precision dtype
    output_dir: str | None = None  # checkpoints; None -> a temp folder removed afterwards
    save_steps: int = 0  # 0 = no checkpoints
    save_total_limit: int | None = None
    logging_steps: int = 10
    eval_steps: int = 0  # held-out perplexity every n steps (0: at start and end only, when eval data given)
    eval_batch_size: int = 8
    eval_at_start: bool = True  # also at step 0 (switch off when the starting perplexity is known)
    resume_from_checkpoint: str | bool | None = None  # a checkpoint folder, or True for the latest in output_dir
    disable_tqdm: bool = False
    extra_args: dict[str, Any] = field(default_factory=dict)  # passed to TrainingArguments as-is

    def __post_init__(self) -> None:
        def bad(name: str, allowed: str) -> ValueError:
            return ValueError(f"DistillConfig.{name}={getattr(self, name)!r} is invalid; allowed: {allowed}")

        if self.loss not in LOSSES:
            raise bad("loss", ", ".join(map(repr, LOSSES)))
        if not self.temperature > 0:
            raise bad("temperature", "a number > 0 (1.0 = plain softmax)")
        if not self.teacher_temperature > 0:
            raise bad("teacher_temperature", "a number > 0 (1.0 = the teacher as it is)")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise bad("jsd_beta", "0 <= beta <= 1")
        if self.top_k is not None and self.top_k < 1:
            raise bad("top_k", "None or an integer >= 1")
        if self.renormalize_student is None:
            self.renormalize_student = self.loss != "forward_kl"
        if not self.renormalize_student and self.top_k is not None and self.loss != "forward_kl":
            raise bad("renormalize_student", "True unless loss='forward_kl'")
        if self.hidden_loss is not None and self.hidden_loss not in HIDDEN_LOSSES:
            raise bad("hidden_loss", "None, " + ", ".join(map(repr, HIDDEN_LOSSES)))
        if not (self.layer_map in ("uniform", "last_k") or isinstance(self.layer_map, (list, tuple))):
            raise bad("layer_map", "'uniform', 'last_k' or a list of (student_layer, teacher_layer) pairs")
        if self.hidden_loss is None and (isinstance(self.layer_map, (list, tuple)) or self.layer_map == "last_k"):
            raise bad("layer_map", "the default 'uniform' unless hidden_loss is set: the layer map only says which "
                                   "layers the hidden-state loss compares, so without hidden_loss it would be ignored")
        if self.last_k < 1:
            raise bad("last_k", "an integer >= 1")
        for name in ("ce_weight", "hidden_weight", "embedding_weight", "weight_decay", "max_grad_norm",
                     "preference_weight", "contrastive_weight"):
            if getattr(self, name) < 0:
                raise bad(name, "a number >= 0")
        if self.kept_channels is not None and (not len(self.kept_channels) or min(self.kept_channels) < 0
                                               or len(set(self.kept_channels)) != len(self.kept_channels)):
            raise bad("kept_channels", "None or a non-empty list of distinct teacher channel ids >= 0")
        if self.loss == "ce" and (self.hidden_loss or self.embedding_weight or self.preference_weight
                                  or self.contrastive_weight):
            raise bad("loss", "a KD loss when hidden_loss, embedding_weight, preference_weight or contrastive_weight "
                              "is set ('ce' runs no teacher)")
        if self.taid is not None and (self.taid not in TAID_SCHEDULES or self.loss != "forward_kl"
                                      or self.top_k is not None or not 0 <= self.taid_t_start < 1
                                      or not 0 <= self.taid_alpha <= 1):
            raise bad("taid", f"None or one of {TAID_SCHEDULES} with loss='forward_kl', top_k=None and "
                              "0 <= taid_t_start < 1, 0 <= taid_alpha <= 1 (the moving target replaces the teacher's full "
                              "distribution)")
        if not self.preference_beta > 0 or not self.contrastive_temperature > 0:
            raise bad("preference_beta" if not self.preference_beta > 0 else "contrastive_temperature", "a number > 0")
        if self.contrastive_weight and self.batch_size < 2:
            raise bad("batch_size", "an integer >= 2 with contrastive_weight: in-batch InfoNCE needs other rows as "
                                    "negatives")
        for name in ("max_steps", "batch_size", "grad_accum", "logging_steps", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise bad(name, "an integer >= 1")
        if not self.learning_rate > 0:
            raise bad("learning_rate", "a number > 0")
        if not 0 <= self.warmup_ratio < 1:
            raise bad("warmup_ratio", "0 <= ratio < 1")
        if self.save_steps < 0 or self.eval_steps < 0:
            raise bad("save_steps" if self.save_steps < 0 else "eval_steps", "an integer >= 0")
        if (self.save_steps or self.resume_from_checkpoint) and self.output_dir is None:
            raise bad("output_dir", "a folder when save_steps or resume_from_checkpoint is set")
        if self.bf16 not in (True, False, "auto") or self.teacher_bf16 not in (True, False, "auto"):
            raise bad("bf16" if self.bf16 not in (True, False, "auto") else "teacher_bf16", "True, False, 'auto'")

    @property
    def uses_teacher(self) -> bool:
        return self.loss != "ce"

    @property
    def uses_hidden_states(self) -> bool:
        return self.hidden_loss is not None or self.embedding_weight > 0 or self.contrastive_weight > 0

    def check_teacher_cache(self, top_k: int) -> None:
        """Refuse what a teacher-logit cache (the teacher's top-``top_k`` log-probs, no teacher) cannot train."""
        if self.loss == "ce":
            raise ValueError("DistillConfig.loss='ce' is plain fine-tuning and uses no teacher: drop teacher_logits "
                             "(or use loss='forward_kl' to distil from the cache).")
        if self.loss != "forward_kl":
            raise ValueError(f"DistillConfig.loss={self.loss!r} cannot train from a teacher-logit cache: it holds the "
                             f"teacher's top-{top_k} log-probs, which serve loss='forward_kl' only. Use forward_kl, "
                             "or pass the teacher (and no teacher_logits).")
        if self.uses_hidden_states or self.preference_weight or self.taid:
            raise ValueError("DistillConfig.hidden_loss / embedding_weight / contrastive_weight / preference_weight / "
                             "taid need the teacher's hidden states, its scores of new answers or its full logits, "
                             "which a teacher-logit cache does not hold: pass the teacher (and no teacher_logits).")
        if self.top_k is not None and self.top_k != top_k:
            raise ValueError(f"DistillConfig.top_k={self.top_k} but the teacher-logit cache keeps the top {top_k} "
                             f"tokens: set top_k=None or {top_k}, or build the cache with top_k={self.top_k}.")


# ----------------------------------------------------------------------------------------------------
# Layer maps


def last_k_layer_map(n_student: int, n_teacher: int, k: int) -> LayerMap:
    """The last k student layers to the last k teacher layers, aligned from the end: ``(n_s-k+i, n_t-k+i)``."""
    if not 1 <= k <= min(n_student, n_teacher):
        raise ValueError(f"last_k={k} must be in [1, {min(n_student, n_teacher)}] (student {n_student} layers, "
                         f"teacher {n_teacher})")
    return [(n_student - k + i, n_teacher - k + i) for i in range(k)]


def uniform_layer_map(n_student: int, n_teacher: int) -> LayerMap:
    """Every student layer i to teacher layer ``floor((i + 1) * n_t / n_s) - 1`` (clamped at 0).

    Student layer i plays the role of the first ``(i+1)/n_s`` of the teacher's depth; the last student layer
    always meets the last teacher layer, and equal depths give the identity map (width-pruned students).
    """
    return [(i, max(0, (i + 1) * n_teacher // n_student - 1)) for i in range(n_student)]


def resolve_layer_map(config: DistillConfig, n_student: int, n_teacher: int) -> LayerMap:
    """The explicit ``(student, teacher)`` pairs for ``config.layer_map``; ValueError on out-of-range layers."""
    if config.layer_map == "uniform":
        return uniform_layer_map(n_student, n_teacher)
    if config.layer_map == "last_k":
        return last_k_layer_map(n_student, n_teacher, config.last_k)
    pairs = [tuple(p) for p in config.layer_map]
    bad = [p for p in pairs if len(p) != 2 or not (0 <= p[0] < n_student and 0 <= p[1] < n_teacher)]
    if bad or not pairs:
        raise ValueError(f"layer_map pairs {bad or pairs} out of range: student layers are 0..{n_student - 1}, "
                         f"teacher layers 0..{n_teacher - 1}; give a non-empty list of (student, teacher) pairs")
    return [(int(s), int(t)) for s, t in pairs]
