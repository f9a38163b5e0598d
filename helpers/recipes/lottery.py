"""Lottery tickets (Frankle & Carbin 2019; with rewinding, Frankle et al. 2020) on a model small enough to train
many times on a CPU: notebook 11.

A small Llama-config model (:func:`small_model`, the teacher's tokenizer and vocabulary, a few narrow layers) is
trained dense from its initialisation theta_0, keeping a copy of its weights at an early step k (theta_k). Each round
of iterative magnitude pruning (``pruning.imp_masks``) removes a share of the surviving decoder weights by their
trained magnitude, and three models are trained with the new mask, on the same data for the same steps:

- ``rewind``: the winning-ticket candidate, theta_k with the mask (the next round prunes from its trained weights);
- ``reinit``: the same mask on a fresh random initialisation (does the mask alone carry the ticket?);
- ``random_mask``: theta_k with a random mask of the same per-matrix sparsity (does the pattern matter?).

Every model takes the same number of optimizer steps on the same batches in all (the rewinding protocol of Frankle et
al. 2020): the two that start from theta_k already have k steps behind them, so they train the remaining
``steps - k`` on the batches after the first k; ``dense`` and ``reinit`` train all ``steps`` from their
initialisation. (Training theta_k for the full ``steps`` would hand it k extra steps, a head start that in a short run
looks like a winning ticket.)

:func:`lottery_tickets` returns their held-out perplexities per round; repeat it over seeds for bands.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import torch
from transformers import PretrainedConfig, PreTrainedModel, TrainerCallback

from ..architecture import check_config
from ..distill import DistillConfig, distill
from ..evaluate import Perplexity
from ..pruning import MaskKeeper, apply_masks, imp_masks, linear_weights, random_masks_like, sparsity_report
from .lab import fresh_model, scratch_model

__all__ = ["TICKET_KINDS", "TicketResult", "small_model", "lottery_tickets"]

TICKET_KINDS = ("rewind", "reinit", "random_mask")


@dataclass(frozen=True)
class TicketResult:
    """One trained model: its ``kind`` ("dense" or one of ``TICKET_KINDS``), the ``round`` of pruning (0 = dense),
    the share of zeros in the masked decoder weights, the held-out ``Perplexity`` (windows kept, for bands) and the
    training tokens behind the weights (for a rewound start, the k steps before theta_k included)."""

    kind: str
    round: int
    sparsity: float
    eval: Perplexity
    tokens_seen: int = 0


def small_model(config: PretrainedConfig, seed: int = 0, **sizes: Any) -> PreTrainedModel:
    """A freshly initialised (seeded) model of ``config``'s family and vocabulary with the given ``sizes``, e.g.
    ``hidden_size=64, num_hidden_layers=2, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2``."""
    return fresh_model(check_config(config, **sizes), seed)


class _StateAt(TrainerCallback):
    """Keeps a CPU copy of the trained student's weights after optimizer step ``step`` (0: before training)."""

    def __init__(self, step: int) -> None:
        self.step, self.state = step, None

    def _keep(self, model) -> None:  # noqa: ANN001
        target = getattr(getattr(model, "module", model), "student", model)
        self.state = {k: v.detach().cpu().clone() for k, v in target.state_dict().items()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if self.step == 0:
            self._keep(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        if state.global_step == self.step:
            self._keep(model)


def _train(model, blocks, heldout, config: DistillConfig, masks=None, keep_step: int | None = None):
    callbacks = [MaskKeeper(masks)] if masks is not None else []
    keeper = _StateAt(keep_step) if keep_step is not None else None
    result = distill(model, None, blocks, config, eval_blocks=heldout, callbacks=callbacks + ([keeper] if keeper else []))
    return result, (keeper.state if keeper else None)


def _with_state(like: PreTrainedModel, state: dict) -> PreTrainedModel:
    model = copy.deepcopy(like)
    model.load_state_dict(state)
    return model


def lottery_tickets(model: PreTrainedModel, blocks, heldout, steps: int, rounds: int, rate: float = 0.2,
                    rewind_step: int = 1, learning_rate: float = 3e-3, seed: int = 0, batch_size: int = 8
                    ) -> list[TicketResult]:
    """Iterative magnitude pruning with rewinding against its two controls (module doc), each model ``steps``
    optimizer steps in all on ``blocks`` (CE, the same seeded order; rewound starts resume after their first
    ``rewind_step`` batches) and scored on ``heldout``. ``rate``: share of the
    surviving weights removed per round (after ``r`` rounds ``1 - (1 - rate)^r`` are zero)."""
    if not 0 <= rewind_step < steps or rounds < 1:
        raise ValueError(f"need 0 <= rewind_step < steps and rounds >= 1; got rewind_step={rewind_step}, steps={steps}, "
                         f"rounds={rounds}")
    config = DistillConfig(loss="ce", max_steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                           warmup_ratio=0.1, logging_steps=max(1, steps // 10), eval_at_start=False, seed=seed,
                           disable_tqdm=True)
    resumed = replace(config, max_steps=steps - rewind_step)  # theta_k already took rewind_step steps
    later = _skip(blocks, rewind_step * batch_size)  # ... on the first rewind_step batches
    dense, early = _train(model, blocks, heldout, config, keep_step=rewind_step)
    before_k = dense.tokens_seen * rewind_step // steps
    results = [TicketResult("dense", 0, 0.0, dense.final_eval, dense.tokens_seen)]
    masks = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in linear_weights(model).items()}
    previous = dense.student
    for r in range(1, rounds + 1):
        masks = imp_masks(previous, masks, rate)
        starts = {"rewind": (_with_state(model, early), masks, True),
                  "reinit": (scratch_model(model, seed=seed + 1000 * r), masks, False),
                  "random_mask": (_with_state(model, early), random_masks_like(masks, seed=seed + r), True)}
        for kind, (start, kind_masks, rewound) in starts.items():
            trained, _ = _train(apply_masks(start, kind_masks), later if rewound else blocks, heldout,
                                resumed if rewound else config, masks=kind_masks)
            zeros = sparsity_report(trained.student)["total"]
            tokens = trained.tokens_seen + (before_k if rewound else 0)
            results.append(TicketResult(kind, r, zeros, trained.final_eval, tokens))
            if kind == "rewind":
                previous = trained.student
    return results


def _skip(blocks, n: int):
    """``blocks`` without its first ``n`` rows (a tensor [n_blocks, seq] or a dict of such tensors)."""
    if isinstance(blocks, dict):
        return {k: v[n:] for k, v in blocks.items()}
    return blocks[n:]
