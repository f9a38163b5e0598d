"""How much the teacher agrees with a model's answers: the teacher reads each (prompt, answer) and scores the answer.

Two numbers per answer (the automatic agreement score of sequence-level and on-policy KD, e.g. GKD's analysis):
the teacher's log-likelihood of the answer's tokens (per token; higher = an answer the teacher would more likely
have written) and top-1 agreement (the share of answer tokens that are the teacher's own most likely next token).
Both reward short, repetitive answers a little: read them beside the answers themselves and their lengths.
An empty answer (the model ended its turn at once, or wrote only whitespace) is read as the end-of-turn token alone:
how likely the teacher was to stop right there. So a badly pruned model that answers nothing still gets a score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..architecture import check_token_ids
from ..data import prompt_ids
from ..hardware import autocast
from .perplexity import Perplexity

__all__ = ["AnswerAgreement", "answer_agreement"]


@dataclass(frozen=True)
class AnswerAgreement:
    """``teacher_nll``: the teacher's NLL of the answers as a :class:`Perplexity` whose windows are the answers
    (``window_nll[i]``, ``window_tokens[i]`` of answer i: bands bootstrap over prompts); ``top1``: share of answer
    tokens equal to the teacher's argmax; ``top1_per_answer`` ``[n]``; ``mean_tokens``: mean answer length."""

    teacher_nll: Perplexity
    top1: float
    top1_per_answer: tuple[float, ...]
    mean_tokens: float

    @property
    def logprob(self) -> float:
        """Mean log-probability per answer token under the teacher (nats; 0 is the maximum)."""
        return -self.teacher_nll.nll


@torch.no_grad()
def answer_agreement(teacher, tokenizer, prompts: list[str], answers: list[str], batch_size: int = 8,
                     use_autocast: bool = True) -> AnswerAgreement:
    """Score ``answers[i]`` (text) after the chat-templated ``prompts[i]`` with ``teacher``; see the module doc.

    Rows are right-padded (padding and prompt tokens are not scored), so each answer is read exactly as written;
    an empty answer is read as ``tokenizer.eos_token_id`` alone (the end of the turn).
    """
    if len(prompts) != len(answers) or not prompts:
        raise ValueError(f"need one answer per prompt (>= 1), got {len(prompts)} prompts and {len(answers)} answers")
    rows = [(prompt_ids(tokenizer, p), _answer_ids(tokenizer, a)) for p, a in zip(prompts, answers)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    nll_sums: list[float] = []
    tokens: list[int] = []
    top1: list[float] = []
    was_training = teacher.training
    teacher.eval()
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        width = max(len(p) + len(a) for p, a in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        labels = torch.full_like(ids, -100)
        for r, (p, a) in enumerate(batch):
            ids[r, : len(p) + len(a)] = torch.tensor(p + a)
            labels[r, len(p): len(p) + len(a)] = torch.tensor(a, dtype=torch.long)
        check_token_ids(teacher, ids, "answers")
        with autocast(teacher.device, enabled=use_autocast):
            logits = teacher(input_ids=ids.to(teacher.device)).logits[:, :-1].float()  # [B, W-1, V]
        target = labels[:, 1:].to(logits.device)  # position s predicts token s+1
        per_token = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=-100, reduction="none")  # [B, W-1]
        scored = target != -100
        hits = (logits.argmax(-1) == target) & scored
        nll_sums += per_token.double().sum(1).tolist()
        tokens += scored.sum(1).tolist()
        top1 += [h / max(n, 1) for h, n in zip(hits.sum(1).tolist(), scored.sum(1).tolist())]
    teacher.train(was_training)
    total = sum(tokens)
    mean = sum(nll_sums) / total
    result = Perplexity(math.exp(mean), mean, total, len(rows), max(len(p) + len(a) for p, a in rows),
                        tuple(nll_sums), tuple(tokens))
    hits_total = sum(t * n for t, n in zip(top1, tokens))
    return AnswerAgreement(result, hits_total / total, tuple(top1), total / len(rows))


def _answer_ids(tokenizer, answer: str) -> list[int]:
    """The answer's token ids; an empty answer is the end-of-turn token alone (the model stopped at once)."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if ids:
        return ids
    if tokenizer.eos_token_id is None:
        raise ValueError("an answer is empty and the tokenizer has no eos_token_id to read it as the end of the turn")
    return [tokenizer.eos_token_id]
