"""Perplexity, by the one protocol every number the workbook reports uses.

Protocol:
  the held-out split of the corpus is packed into non-overlapping windows of ``window`` tokens
  (default 512, stride = window, documents separated by EOS, remainder dropped; ``helpers.data.load_blocks``);
  every token of a window except the first is scored given the tokens before it in that window;
  perplexity = exp(mean negative log-likelihood over all scored tokens). The report carries the number of
  scored tokens. Logits are cast to fp32 before the loss, so bf16 autocast changes only the matmuls.
  It also carries each window's summed NLL and scored tokens, so an interval can be drawn by resampling windows
  (``helpers.workbook.bootstrap_interval``, ``paired_bootstrap_diff``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..architecture import check_token_ids
from ..hardware import autocast

__all__ = ["PERPLEXITY_WINDOW", "Perplexity", "perplexity"]

PERPLEXITY_WINDOW = 512


@dataclass(frozen=True)
class Perplexity:
    """``ppl = exp(nll)``; ``n_tokens`` scored in ``n_windows`` windows of ``window`` tokens.

    ``window_nll[i]`` is the SUM of the token NLLs (nats) of window ``i`` and ``window_tokens[i]`` its scored
    tokens (``n_windows`` each; empty for a result built by hand): ``sum(window_nll) ~= nll * n_tokens`` and
    ``sum(window_tokens) == n_tokens``.
    """

    ppl: float
    nll: float
    n_tokens: int
    n_windows: int
    window: int
    window_nll: tuple[float, ...] = ()
    window_tokens: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def perplexity(
    model, blocks: torch.Tensor, batch_size: int = 4, use_autocast: bool = True, progress: bool = False,
    labels: torch.Tensor | None = None,
) -> Perplexity:
    """Perplexity of ``model`` on ``blocks`` ``[n_windows, window]`` by the module's protocol.

    ``labels`` (optional, ``[n_windows, window]``, unshifted, ``-100`` = not scored) restricts the score to
    some tokens, e.g. the responses of :func:`helpers.data.chat_blocks` with their prompts as context only.
    """
    if blocks.ndim != 2 or blocks.shape[1] < 2:
        raise ValueError(f"blocks must be [n_windows, window >= 2], got shape {tuple(blocks.shape)}")
    check_token_ids(model, blocks, "blocks")
    if labels is not None and labels.shape != blocks.shape:
        raise ValueError(f"labels {tuple(labels.shape)} must have the shape of blocks {tuple(blocks.shape)}")
    targets = blocks if labels is None else labels
    was_training = model.training
    model.eval()
    device = model.device
    total_nll, total_tokens = 0.0, 0
    window_nll: list[float] = []
    window_tokens: list[int] = []
    batches = zip(blocks.split(batch_size), targets.split(batch_size))
    for batch, target in tqdm(batches, desc="perplexity", disable=not progress, leave=False,
                              total=math.ceil(len(blocks) / batch_size)):
        batch, target = batch.to(device), target[:, 1:].to(device)
        with autocast(device, enabled=use_autocast):
            logits = model(input_ids=batch).logits  # [B, L, vocab]
        # the ops F.cross_entropy runs (log_softmax, then nll_loss), once, so the batch total is bit-identical
        logp = F.log_softmax(logits[:, :-1].float().flatten(0, 1), -1)  # [B*(L-1), vocab], predicts 1..L-1
        nll = F.nll_loss(logp, target.flatten(), reduction="sum", ignore_index=-100)
        per_token = F.nll_loss(logp, target.flatten(), reduction="none", ignore_index=-100)  # 0 where ignored
        window_nll += per_token.view(target.shape).double().sum(1).tolist()  # [B]
        window_tokens += (target != -100).sum(1).tolist()  # [B]
        total_nll += nll.item()
        total_tokens += int((target != -100).sum())
    model.train(was_training)
    if total_tokens == 0:
        raise ValueError("No token to score: every label is -100")
    mean = total_nll / total_tokens
    return Perplexity(math.exp(mean), mean, total_tokens, len(blocks), blocks.shape[1],
                      tuple(window_nll), tuple(window_tokens))
