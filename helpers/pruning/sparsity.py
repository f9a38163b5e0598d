"""Unstructured and N:M sparsity: masks on the decoder's linear weights, kept through training, exported as zeros.

Unlike width and depth pruning (new, smaller matrices), these masks zero single weights inside the dense matrices of
``q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj``. A mask is a BoolTensor of the weight's shape
``[out_features, in_features]``, True where the weight is kept.

- magnitude: score ``|W|`` (Han et al. 2015), pruned per layer (each matrix at the same sparsity) or globally;
- Wanda (Sun et al. 2023, Eq. 1): score ``|W_ij| * ||X_j||_2``, the weight times the L2 norm of its input feature over
  the calibration tokens, compared within each output row (the paper's per-output comparison group);
- N:M (2:4 in NVIDIA's sparse tensor cores): in every group of M consecutive inputs of a row, keep the N largest scores;
- lottery tickets: :func:`imp_masks` is one round of iterative magnitude pruning over the surviving weights,
  :func:`random_masks_like` the random-mask control at the same per-matrix sparsity.

:class:`MaskKeeper` re-applies masks after every optimizer step, so ``distill`` (or any Trainer) trains with the zeros
held; :func:`sparsity_report` counts zeros per matrix and in total; :func:`apply_masks` returns a masked copy, which
``models.save_model`` writes as an ordinary checkpoint whose zeros are real zeros.
"""

from __future__ import annotations

import copy
from typing import Iterable

import torch
from torch import Tensor, nn
from transformers import PreTrainedModel, TrainerCallback

from .. import architecture as arch

__all__ = ["SPARSE_ROLES", "linear_weights", "magnitude_masks", "input_norms", "wanda_scores", "row_masks", "wanda_masks", "nm_masks",
           "imp_masks", "random_masks_like", "apply_masks", "sparsity_report", "MaskKeeper"]

SPARSE_ROLES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
Masks = dict[str, Tensor]


def linear_weights(model: PreTrainedModel) -> dict[str, nn.Linear]:
    """The decoder's linear modules that masks apply to, by their ``named_modules`` name."""
    arch.check_supported(model)
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in
            SPARSE_ROLES}


def _check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity={sparsity!r} is invalid; allowed: a fraction 0 <= sparsity < 1 of the weights "
                         "to zero (0.5 = half)")
    return float(sparsity)


def _keep_top(scores: Tensor, n_zero: int, dim: int | None = None) -> Tensor:
    """True except at the ``n_zero`` lowest scores (per row along ``dim``, or over the whole tensor)."""
    if dim is None:
        mask = torch.ones(scores.numel(), dtype=torch.bool, device=scores.device)
        mask[scores.flatten().argsort()[:n_zero]] = False
        return mask.view_as(scores)
    mask = torch.ones_like(scores, dtype=torch.bool)
    return mask.scatter(dim, scores.argsort(dim=dim)[..., :n_zero], False)


def magnitude_masks(model: PreTrainedModel, sparsity: float, scope: str = "layer") -> Masks:
    """Masks zeroing the ``sparsity`` share of smallest ``|W|``: in every matrix (``scope="layer"``) or over all
    of them together (``"global"``: matrices end up unequally sparse). Exact: ``round(sparsity * numel)`` zeros."""
    sparsity = _check_sparsity(sparsity)
    weights = {n: m.weight.detach().abs().float() for n, m in linear_weights(model).items()}
    if scope == "layer":
        return {n: _keep_top(w, round(sparsity * w.numel())) for n, w in weights.items()}
    if scope != "global":
        raise ValueError(f"scope={scope!r} is invalid; allowed: 'layer', 'global'")
    flat = torch.cat([w.flatten() for w in weights.values()])
    keep = _keep_top(flat, round(sparsity * flat.numel()))
    masks, start = {}, 0
    for n, w in weights.items():
        masks[n] = keep[start:start + w.numel()].view_as(w)
        start += w.numel()
    return masks


@torch.no_grad()
def input_norms(model: PreTrainedModel, batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """``||X_j||_2`` of every input feature j of every masked linear over all calibration tokens ``[in_features]``."""
    sums: dict[str, Tensor] = {}
    hooks = []
    for name, module in linear_weights(model).items():
        def hook(mod, args, name=name):  # noqa: ANN001
            x = args[0].detach().float().flatten(0, -2)  # [tokens, in_features]
            sums[name] = sums.get(name, 0) + x.square().sum(0)
        hooks.append(module.register_forward_pre_hook(hook))
    was_training = model.training
    model.eval()
    try:
        for ids in batches:
            model(input_ids=ids.to(model.device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return {n: s.sqrt().cpu() for n, s in sums.items()}


def wanda_scores(model: PreTrainedModel, batches: Iterable[Tensor]) -> dict[str, Tensor]:
    """Wanda's ``|W_ij| * ||X_j||_2`` per weight ``[out, in]`` (calibration ``batches``: ``[batch, block]`` ids)."""
    norms = input_norms(model, batches)
    return {n: m.weight.detach().abs().float().cpu() * norms[n][None, :] for n, m in linear_weights(model).items()}


def row_masks(scores: dict[str, Tensor], sparsity: float) -> Masks:
    """In every output row of every matrix, zero the ``sparsity`` share of the lowest ``scores`` ``[out, in]``."""
    sparsity = _check_sparsity(sparsity)
    return {n: _keep_top(s, round(sparsity * s.shape[1]), dim=1) for n, s in scores.items()}


def wanda_masks(model: PreTrainedModel, batches: Iterable[Tensor], sparsity: float) -> Masks:
    """Wanda masks: in every output row, zero the ``sparsity`` share of the lowest ``|W_ij| * ||X_j||_2``
    (``row_masks(wanda_scores(...), sparsity)``; compute the scores once to sweep several sparsities)."""
    _check_sparsity(sparsity)
    return row_masks(wanda_scores(model, batches), sparsity)


def nm_masks(model: PreTrainedModel, n: int = 2, m: int = 4, scores: dict[str, Tensor] | None = None) -> Masks:
    """N:M masks: keep the ``n`` largest scores (``|W|`` unless ``scores`` are given, e.g. :func:`wanda_scores`)
    in every group of ``m`` consecutive inputs of each row. ``in_features`` must be a multiple of ``m``."""
    n, m = arch.as_int("n", n), arch.as_int("m", m)
    if not 0 < n < m:
        raise ValueError(f"N:M sparsity needs 0 < n < m, got {n}:{m}")
    masks = {}
    for name, module in linear_weights(model).items():
        s = (scores[name] if scores is not None else module.weight.detach().abs()).float().cpu()
        out_f, in_f = s.shape
        if in_f % m:
            raise ValueError(f"{name}: in_features={in_f} is not a multiple of m={m}, so {n}:{m} groups do not tile it")
        groups = s.view(out_f, in_f // m, m)
        masks[name] = _keep_top(groups, m - n, dim=2).view(out_f, in_f)
    return masks


def imp_masks(model: PreTrainedModel, masks: Masks, rate: float) -> Masks:
    """One round of iterative magnitude pruning (Frankle & Carbin 2019): zero the ``rate`` share of the weights that
    ``masks`` still keep, by global ``|W|`` of ``model`` (trained with those masks). Returns the new masks."""
    rate = _check_sparsity(rate)
    weights = {n: m.weight.detach().abs().float().cpu() for n, m in linear_weights(model).items()}
    alive = torch.cat([weights[n][masks[n].cpu()] for n in weights])
    n_zero = round(rate * alive.numel())
    if n_zero == 0:
        return {n: masks[n].clone() for n in weights}
    threshold = alive.kthvalue(n_zero).values  # ties at the threshold all go: at most a few extra zeros
    return {n: masks[n].cpu() & (weights[n] > threshold) for n in weights}


def random_masks_like(masks: Masks, seed: int = 0) -> Masks:
    """Masks with the same number of zeros in every matrix as ``masks``, at random positions (seeded)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, mask in masks.items():
        keep = torch.zeros(mask.numel(), dtype=torch.bool)
        keep[torch.randperm(mask.numel(), generator=g)[: int(mask.sum())]] = True
        out[name] = keep.view(mask.shape)
    return out


def apply_masks(model: PreTrainedModel, masks: Masks) -> PreTrainedModel:
    """A deep copy of ``model`` with every masked weight set to exactly 0 (the model passed in is unchanged)."""
    sparse = copy.deepcopy(model)
    _zero(sparse, masks)
    return sparse


@torch.no_grad()
def _zero(model: nn.Module, masks: Masks) -> None:
    modules = dict(model.named_modules())
    missing = [n for n in masks if n not in modules]
    if missing:
        raise ValueError(f"masks name modules the model does not have: {missing[:3]}")
    for name, mask in masks.items():
        weight = modules[name].weight
        if mask.shape != weight.shape:
            raise ValueError(f"{name}: mask {tuple(mask.shape)} does not fit weight {tuple(weight.shape)}")
        weight.mul_(mask.to(weight.device, weight.dtype))


def sparsity_report(model: PreTrainedModel) -> dict[str, float]:
    """Share of exact zeros in each masked matrix, plus ``"total"`` over all of them."""
    zeros = {n: (int((m.weight == 0).sum()), m.weight.numel()) for n, m in linear_weights(model).items()}
    report = {n: z / t for n, (z, t) in zeros.items()}
    report["total"] = sum(z for z, _ in zeros.values()) / max(1, sum(t for _, t in zeros.values()))
    return report


class MaskKeeper(TrainerCallback):
    """Re-applies ``masks`` to the trained model after every optimizer step (and before the first), so masked
    weights stay exactly 0 through fine-tuning or ``helpers.distill.distill`` (pass ``callbacks=[MaskKeeper(masks)]``;
    the mask names are the student's, found inside the distillation wrapper by their suffix)."""

    def __init__(self, masks: Masks) -> None:
        self.masks = masks

    def _apply(self, model: nn.Module) -> None:
        target = getattr(model, "module", model)  # DDP / FSDP wrapper
        target = getattr(target, "student", target)  # helpers.distill wraps the student in DistillModule
        _zero(target, self.masks)

    def on_train_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self._apply(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001
        self._apply(model)
