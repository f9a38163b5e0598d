"""Multiple-choice scoring by log-likelihood, the protocol of EleutherAI's lm-evaluation-harness.

Protocol (lm-eval's ``multiple_choice`` output type, ``HFLM.loglikelihood``; Gao et al., "A framework for few-shot
language model evaluation", 2021-2024, https://github.com/EleutherAI/lm-evaluation-harness):
  each item has a ``context`` and ``choices``; by convention the context ends without a space and every choice
  starts with one (lm-eval's ``target_delimiter``), and trailing spaces of a context move to the continuation;
  a choice's tokens are those of ``context + choice`` after the context's own tokens (no special tokens; an empty
  context is replaced by the BOS/EOS token); its score is the sum of the log-probabilities of these tokens, each
  given everything before it. ``acc``: the argmax of the raw sums is the label; ``acc_norm``: the argmax of the sums
  divided by the choice's length in characters (lm-eval's "byte-length" normalisation counts characters).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..architecture import as_int, check_token_ids
from ..data import read_jsonl

__all__ = ["ChoiceItem", "ChoiceScore", "load_choice_items", "choice_loglikelihoods", "score_choices"]

_FIELDS = ("context", "choices", "label")


@dataclass(frozen=True)
class ChoiceItem:
    """One question: ``context``, at least two ``choices`` (strings), and the index ``label`` of the right one."""

    context: str
    choices: tuple[str, ...]
    label: int

    def __post_init__(self) -> None:
        if not isinstance(self.context, str):
            raise TypeError(f"context must be a string, got {type(self.context).__name__}")
        if not isinstance(self.choices, (list, tuple)):
            raise TypeError(f"choices must be a list of strings, got {type(self.choices).__name__}")
        bad = [type(c).__name__ for c in self.choices if not isinstance(c, str)]
        if bad:
            raise TypeError(f"every choice must be a string, got {bad[0]}")
        if len(self.choices) < 2:
            raise ValueError(f"an item needs at least 2 choices, got {len(self.choices)}")
        if isinstance(self.label, bool) or not isinstance(self.label, int):
            raise TypeError(f"label must be an integer index, got {self.label!r}")
        if not 0 <= self.label < len(self.choices):
            raise ValueError(f"label {self.label} is out of range for {len(self.choices)} choices (0 to "
                             f"{len(self.choices) - 1})")
        object.__setattr__(self, "choices", tuple(self.choices))


@dataclass(frozen=True)
class ChoiceScore:
    """Accuracies over ``n_items``; ``predictions`` / ``predictions_norm``: the chosen index of each item (raw sum /
    per-character score); ``loglikelihoods``: the raw sums, one list per item."""

    acc: float
    acc_norm: float
    n_items: int
    predictions: tuple[int, ...]
    predictions_norm: tuple[int, ...]
    loglikelihoods: tuple[tuple[float, ...], ...]

    def as_dict(self) -> dict:
        return asdict(self)


def load_choice_items(path: str | Path) -> list[ChoiceItem]:
    """The items of a JSONL file of ``{"context": str, "choices": [str, ...], "label": int}`` records.

    ``ValueError`` naming the file and record number (1-based, blank lines skipped) for a missing field, a
    non-string context or choice, fewer than two choices, or a label out of range; broken JSON lines fail in
    :func:`helpers.data.read_jsonl` with the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No multiple-choice file at {str(path)!r}; expected a .jsonl of "
                                '{"context": ..., "choices": [...], "label": ...} records.')
    items = []
    for n, row in enumerate(read_jsonl(path), 1):
        missing = [f for f in _FIELDS if f not in row]
        if missing:
            raise ValueError(f"{path}, record {n}: missing field(s) {missing} (fields: {sorted(row)}); each record "
                             'needs "context", "choices" and "label".')
        try:
            items.append(ChoiceItem(row["context"], row["choices"], row["label"]))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}, record {n}: {err}.") from err
    if not items:
        raise ValueError(f"{path} holds no records.")
    return items


def _encode_pair(tokenizer, context: str, choice: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as lm-eval encodes them: trailing spaces of the context move to the choice,
    the continuation is the tokens of ``context + choice`` after the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, choice = context[:-spaces], context[-spaces:] + choice
    whole = tokenizer(context + choice, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = whole[len(ctx):]
    if not cont:
        raise ValueError(f"choice {choice!r} adds no token after context {context[-40:]!r}; choices must be "
                         "non-empty text.")
    if not ctx:  # lm-eval scores a context-free continuation after the prefix (BOS/EOS) token
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if prefix is None:
            raise ValueError("an empty context needs a BOS or EOS token in the tokenizer to condition on.")
        ctx = [prefix]
    return ctx, cont


def _batch_loglikelihoods(model, pairs: list[tuple[list[int], list[int]]]) -> list[float]:
    """Sum of log p(continuation | context) for each (context ids, continuation ids) pair, in one right-padded
    batch; a sequence longer than the model's window keeps its last tokens (as lm-eval does)."""
    window = getattr(model.config, "max_position_embeddings", None)
    rows = [(ctx + cont)[:-1] for ctx, cont in pairs]  # inputs: the last token is only predicted
    if window:
        rows = [r[-window:] for r in rows]
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)  # [B, L]; pad id 0 is masked out
    mask = torch.zeros(len(rows), length, dtype=torch.long)  # [B, L]; 1 = real token
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    logits = model(input_ids=ids.to(model.device), attention_mask=mask.to(model.device)).logits  # [B, L, vocab]
    sums = []
    for i, ((_, cont), r) in enumerate(zip(pairs, rows)):
        n = len(cont)  # the continuation is predicted at the last n input positions of row i
        logp = F.log_softmax(logits[i, len(r) - n : len(r)].float(), dim=-1)  # [n, vocab]
        target = torch.tensor(cont, device=logp.device).unsqueeze(1)  # [n, 1]
        sums.append(logp.gather(1, target).sum().item())
    return sums


@torch.no_grad()
def choice_loglikelihoods(model, tokenizer, items: list[ChoiceItem], batch_size: int = 8) -> list[list[float]]:
    """``out[i][j]``: the summed log-probability of choice ``j`` of item ``i`` given its context (module protocol).

    All (item, choice) pairs are scored in batches of ``batch_size`` sequences, right-padded with an attention
    mask, so the scores do not depend on the batch size (up to float rounding)."""
    batch_size = as_int("batch_size", batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not items:
        raise ValueError("items is empty; load some with load_choice_items(path).")
    bad = [type(it).__name__ for it in items if not isinstance(it, ChoiceItem)]
    if bad:
        raise TypeError(f"items must be ChoiceItem objects, got {bad[0]}; use load_choice_items(path).")
    pairs = [_encode_pair(tokenizer, it.context, c) for it in items for c in it.choices]
    check_token_ids(model, torch.tensor([i for ctx, cont in pairs for i in ctx + cont]), "token ids of the items")
    window = getattr(model.config, "max_position_embeddings", None) or float("inf")
    longest = max(len(cont) for _, cont in pairs)
    if longest > window:
        raise ValueError(f"a choice of {longest} tokens does not fit the model's window of {window} tokens.")
    was_training = model.training
    model.eval()
    try:
        batches = [pairs[k : k + batch_size] for k in range(0, len(pairs), batch_size)]
        flat = [s for batch in batches for s in _batch_loglikelihoods(model, batch)]
    finally:
        model.train(was_training)
    out, k = [], 0
    for it in items:
        out.append(flat[k : k + len(it.choices)])
        k += len(it.choices)
    return out


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # first index on ties, like numpy.argmax


def score_choices(model, tokenizer, items: list[ChoiceItem], batch_size: int = 8) -> ChoiceScore:
    """``acc`` and ``acc_norm`` of ``model`` on ``items`` by the module protocol, with the per-item predictions."""
    lls = choice_loglikelihoods(model, tokenizer, items, batch_size)
    raw = tuple(_argmax(ll) for ll in lls)
    norm = tuple(_argmax([s / len(c) for s, c in zip(ll, it.choices)]) for ll, it in zip(lls, items))
    n = len(items)
    return ChoiceScore(
        acc=sum(p == it.label for p, it in zip(raw, items)) / n,
        acc_norm=sum(p == it.label for p, it in zip(norm, items)) / n,
        n_items=n,
        predictions=raw,
        predictions_norm=norm,
        loglikelihoods=tuple(tuple(ll) for ll in lls),
    )
