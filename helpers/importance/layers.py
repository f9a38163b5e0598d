"""Which layers matter: depth-pruning criteria, each a score per decoder layer (higher = more important).

- Block Importance BI = 1 - cos(layer input, layer output) averaged over tokens (ShortGPT, Men et al. 2024);
- the LM-loss increase when one layer alone is skipped (Minitron, Muralidharan et al. 2024);
- the angular distance arccos(cos(h_l, h_{l+n}))/pi between the residual stream before and after a block of n
  layers (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers"), by default on the LAST
  token as in that paper (in a causal model it is the only position that has seen the whole block).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from .. import architecture as arch
from ..hardware import autocast as fast_autocast
from ._pass import as_ids, check_choice, removed_after
from .probe import ResidualProbe, _hidden_states
from .results import Importance

__all__ = ["LAYER_CRITERIA", "ANGULAR_TOKENS", "skip_layer", "layer_importance"]

LAYER_CRITERIA: tuple[str, ...] = ("bi", "drop_one", "angular")
ANGULAR_TOKENS: tuple[str, ...] = ("last", "all")


@contextmanager
def skip_layer(layer: torch.nn.Module) -> Iterator[None]:
    """Temporarily turn a decoder layer into the identity (its input passes through); restored on exit."""
    previous = layer.__dict__.get("forward")
    layer.forward = lambda hidden_states, *args, **kwargs: hidden_states
    try:
        yield
    finally:
        del layer.forward
        if previous is not None:
            layer.forward = previous


def _head_loss(model: PreTrainedModel, hidden: Tensor, ids: Tensor) -> Tensor:
    """Mean next-token cross-entropy of the LM head on the last layer's output ``hidden`` [B, S, H] for ``ids``
    [B, S] (the loss ``model(input_ids=ids, labels=ids)`` computes after its decoder layers)."""
    logits = arch.lm_head(model)(arch.final_norm(model)(hidden))  # [B, S, V]
    return F.cross_entropy(logits[:, :-1].float().flatten(0, 1), ids[:, 1:].flatten())


def _layer_inputs(model: PreTrainedModel, ids: Tensor) -> tuple[list[Tensor], tuple, dict[str, Any]]:
    """One forward pass recording the residual stream at every layer boundary: ``states[l]`` [B, S, H] is layer l's
    input, ``states[L]`` the last layer's output (before the final norm); then the other positional and keyword
    arguments the model passes every layer (position embeddings, mask)."""
    decoder_layers = arch.layers(model)
    states: list[Tensor] = []
    call: dict[str, Any] = {}

    def record(module, args, kw):
        states.append(_hidden_states(args, kw))
        call.setdefault("args", args[1:])
        call.setdefault("kwargs", {k: v for k, v in kw.items() if k != "hidden_states"})

    def last(module, args, kw, out):
        states.append(_as_hidden(out))

    handles = [layer.register_forward_pre_hook(record, with_kwargs=True) for layer in decoder_layers]
    handles.append(decoder_layers[-1].register_forward_hook(last, with_kwargs=True))
    with removed_after(handles):
        arch.base(model)(input_ids=ids, use_cache=False)
    return states, call["args"], call["kwargs"]


def _as_hidden(out: Any) -> Tensor:
    return out[0] if isinstance(out, tuple) else out


def _drop_one_losses(model: PreTrainedModel, batches: list[Tensor], autocast: bool, progress: bool
                     ) -> tuple[float, list[float]]:
    """Token-weighted LM loss of the full model and of the model with layer i skipped, for every i.

    Skipping layer i leaves layers 0..i-1 as they are, so each skipped pass restarts from layer i's input recorded
    in one full pass (the same operations on the same numbers as a full pass with layer i the identity) and runs
    only layers i+1..L-1 and the head: about half the layer compute of L full passes. Returns (base, [L] losses)."""
    decoder_layers = arch.layers(model)
    num_layers = len(decoder_layers)
    totals, count = torch.zeros(num_layers + 1, dtype=torch.float64), 0
    with torch.inference_mode(), fast_autocast(model.device, enabled=autocast):
        for ids in tqdm(batches, desc="drop one layer", disable=not progress):
            states, extra, kwargs = _layer_inputs(model, ids)
            n = ids.shape[0] * (ids.shape[1] - 1)
            totals[num_layers] += float(_head_loss(model, states[num_layers], ids)) * n
            for i in range(num_layers):
                hidden = states[i]
                for layer in decoder_layers[i + 1:]:
                    hidden = _as_hidden(layer(hidden, *extra, **kwargs))
                totals[i] += float(_head_loss(model, hidden, ids)) * n
            count += n
    losses = totals / count
    return float(losses[num_layers]), losses[:num_layers].tolist()


def layer_importance(
    model: PreTrainedModel,
    batches: Iterable[Tensor],
    criteria: Iterable[str] = LAYER_CRITERIA,
    block_sizes: Iterable[int] | None = None,
    angular_tokens: str = "last",
    autocast: bool = True,
    progress: bool = True,
) -> Importance:
    """Depth scores in ``Importance.layers`` (higher = more important: drop the lowest).

    ``bi`` [L]: 1 - mean cos(input, output) of each layer (ShortGPT). ``drop_one`` [L]: LM-loss increase
    when that layer alone is skipped (one recorded pass over ``batches``, then each skipped pass resumes from
    the recorded input of the skipped layer; ``extra["base_loss"]`` is the full model's). ``angular_n``
    [L - n + 1] for each n in ``block_sizes`` (default 1..L-1): mean over
    ``angular_tokens`` ("last" as in Gromov et al., or "all") of arccos(cos(h_l, h_{l+n}))/pi;
    ``Importance.best_block(n)`` gives the start of smallest distance. The model is left unchanged.
    """
    arch.check_supported(model)
    criteria = tuple(criteria)
    for c in criteria:
        check_choice("layer criterion", c, LAYER_CRITERIA)
    check_choice("angular_tokens", angular_tokens, ANGULAR_TOKENS)
    decoder_layers = arch.layers(model)
    num_layers = len(decoder_layers)
    block_sizes = tuple(range(1, num_layers)) if block_sizes is None else \
        tuple(arch.as_int("block_sizes", n) for n in block_sizes)
    if "angular" in criteria and not all(1 <= n < num_layers for n in block_sizes):
        raise ValueError(f"block_sizes {block_sizes} must lie in 1..{num_layers - 1} ({num_layers} layers)")
    batches = list(batches)
    if not batches:
        raise ValueError("No calibration batches were given.")
    device = model.device
    device_batches = [as_ids(b, device) for b in batches]
    for ids in device_batches:
        arch.check_token_ids(model, ids, "calibration batch")
    result = Importance(n_samples=sum(b.shape[0] for b in device_batches),
                        n_tokens=sum(b.numel() for b in device_batches), sizes=arch.model_sizes(model))

    if "bi" in criteria or "angular" in criteria:
        probe = ResidualProbe(num_layers, angular_tokens if "angular" in criteria else None)
        sums: dict[int, Tensor] = {}
        with removed_after(probe.attach(decoder_layers)), torch.inference_mode(), fast_autocast(device, enabled=autocast):
            for ids in tqdm(device_batches, desc="layer importance", disable=not progress):
                arch.base(model)(input_ids=ids, use_cache=False)
                if "angular" in criteria:
                    for n in block_sizes:
                        sums[n] = probe.angular(n) + sums.get(n, 0.0)
        if "bi" in criteria:
            result.layers["bi"] = probe.block_importance()
        count = result.n_samples if angular_tokens == "last" else result.n_tokens
        result.layers |= {f"angular_{n}": (s / count).float().cpu() for n, s in sums.items()}

    if "drop_one" in criteria:
        base, losses = _drop_one_losses(model, device_batches, autocast, progress)
        result.layers["drop_one"] = torch.tensor(losses) - base
        result.extra["base_loss"] = base
    return result.check_finite()
