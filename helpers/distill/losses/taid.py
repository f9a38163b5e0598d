"""A moving distillation target: TAID (Shing et al. 2025, "Temporally Adaptive Interpolated Distillation").

Instead of the teacher's distribution from step one, the student chases an interpolation between its own
(detached) distribution and the teacher's, in logit space (TAID, Eq. 2)::

    z_target = (1 - t) * stopgrad(z_s) + t * z_t          p_target = softmax(z_target)
    L_TAID   = KL(p_target || p_s)                         (forward KL; 0 at t = 0, plain forward KL at t = 1)

``t`` rises from ``t_start`` to ``t_end`` during training. :class:`TaidSchedule` gives the linear schedule and
TAID's adaptive one (its Algorithm 1): a momentum ``m`` of the relative change of the loss sets the step,
``t <- min(t_end, max(t_linear, t + alpha * sigmoid(m) * (1 - t)))``, so ``t`` never falls behind the linear
schedule and runs ahead while the loss keeps falling. Shapes: logits ``[..., V]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

from .logits import forward_kl

__all__ = ["TAID_SCHEDULES", "taid_target", "taid_loss", "TaidSchedule"]

TAID_SCHEDULES: tuple[str, ...] = ("linear", "adaptive")


def taid_target(student_logits: Tensor, teacher_logits: Tensor, t: float) -> Tensor:
    """The interpolated target's logits ``(1 - t) * z_s + t * z_t`` (``[..., V]``; the student side detached)."""
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"t must be in [0, 1], got {t}")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student and teacher logits differ in shape: {tuple(student_logits.shape)} vs "
                         f"{tuple(teacher_logits.shape)}")
    return (1.0 - t) * student_logits.detach().float() + t * teacher_logits.detach().float()


def taid_loss(student_logits: Tensor, teacher_logits: Tensor, t: float, mask: Tensor | None = None,
              labels: Tensor | None = None) -> Tensor:
    """``KL(softmax(taid_target) || softmax(z_s))`` averaged over the unmasked positions (``mask`` / ``labels``
    as in ``logits.forward_kl``): 0 at ``t = 0``, the plain forward KL at ``t = 1``. Scalar."""
    return forward_kl(student_logits, taid_target(student_logits, teacher_logits, t), mask=mask, labels=labels)


@dataclass
class TaidSchedule:
    """The interpolation parameter ``t`` over ``total_steps`` (module doc). ``kind``: "linear" or "adaptive";
    call :meth:`update` once per optimizer step with that step's loss; ``t`` is the value to use next."""

    total_steps: int
    kind: str = "adaptive"
    t_start: float = 0.4
    t_end: float = 1.0
    alpha: float = 5e-4  # TAID's step size of the adaptive increase
    beta: float = 0.99  # momentum of the relative loss change
    t: float = field(init=False)
    momentum: float = field(init=False, default=0.0)
    prev_loss: float | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        if self.kind not in TAID_SCHEDULES:
            raise ValueError(f"TAID schedule {self.kind!r} is unknown; allowed: {', '.join(TAID_SCHEDULES)}")
        if not 0.0 <= self.t_start < self.t_end <= 1.0:
            raise ValueError(f"need 0 <= t_start < t_end <= 1, got t_start={self.t_start}, t_end={self.t_end}")
        if self.total_steps < 1 or not 0 <= self.alpha <= 1 or not 0 <= self.beta < 1:
            raise ValueError(f"need total_steps >= 1, 0 <= alpha <= 1, 0 <= beta < 1; got {self.total_steps}, "
                             f"{self.alpha}, {self.beta}")
        self.t = self.t_start

    def linear(self, step: int) -> float:
        """``t_start + (t_end - t_start) * step / total_steps`` (clamped at ``t_end``)."""
        return min(self.t_end, self.t_start + (self.t_end - self.t_start) * step / self.total_steps)

    def update(self, loss: float, step: int) -> float:
        """After optimizer step ``step`` (1-based) with ``loss``: the next ``t``."""
        if self.kind == "linear":
            self.t = self.linear(step)
            return self.t
        if self.prev_loss is not None and math.isfinite(loss):
            change = (self.prev_loss - loss) / (self.prev_loss + 1e-15)
            self.momentum = self.beta * self.momentum + (1 - self.beta) * change
        if math.isfinite(loss):
            self.prev_loss = loss
        step_up = self.alpha / (1 + math.exp(-self.momentum)) * (1 - self.t)
        self.t = min(self.t_end, max(self.linear(step), self.t + step_up))
        return self.t
