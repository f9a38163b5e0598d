"""On-policy distillation (GKD: Agarwal et al. 2024, "On-policy distillation of language models"; MiniLLM: Gu et
al. 2024): the student learns on answers it sampled itself, scored position by position by the teacher.

This is a *data source* for :func:`helpers.distill.distill`, not a second trainer: pass ``on_policy=OnPolicy(...)``
and the run's batches come from :class:`OnPolicyData`. Per batch, with probability ``lmbda`` (TRL GKD's name), the
rows are the student's own answers to the prompts, else rows of the fixed data (e.g. the teacher's answers from
``synthetic.pair_inputs``). The loss is the run's divergence (``DistillConfig.loss``: forward KL, reverse KL or
JSD(beta), ``jsd_beta``) on the answer tokens; the prompt is masked. Fresh samples cost generation time on the
student, so a generated batch is reused by the on-policy batches of the next ``regenerate_every`` steps (1 = always
fresh, as in GKD; :func:`on_policy_schedule` says which batches generate). The data loader prefetches one batch, so a sample may come from weights up to one step older than the step
that trains on it. Generation is seeded (``seed`` + regeneration index) without touching the trainer's RNG.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..architecture import as_int
from ..data import prompt_ids

__all__ = ["OnPolicy", "OnPolicyData", "on_policy_schedule"]


def on_policy_schedule(n_batches: int, lmbda: float, regenerate_every: int = 1, seed: int = 0) -> list[str]:
    """What each of ``n_batches`` batches is: ``"fixed"`` (rows of the fixed data, probability ``1 - lmbda``),
    ``"generate"`` (a fresh batch of the student's samples) or ``"reuse"`` (the last samples again, while fewer than
    ``regenerate_every`` steps passed since they were generated). Seeded; :class:`OnPolicyData` follows it."""
    rng = random.Random(seed)
    kinds: list[str] = []
    last: int | None = None
    for step in range(n_batches):
        if rng.random() >= lmbda:
            kinds.append("fixed")
        elif last is None or step - last >= regenerate_every:
            kinds.append("generate")
            last = step
        else:
            kinds.append("reuse")
    return kinds


@dataclass
class OnPolicy:
    """Where on-policy batches come from and how often they are renewed (checked on creation).

    ``prompts``: user messages the student answers (chat template applied); ``lmbda``: share of batches that are
    on-policy (0 = only fixed data, 1 = only the student's samples); ``regenerate_every``: steps a generated batch
    of samples stays in use (reused by the on-policy batches in between); ``max_new_tokens``, ``temperature``, ``top_p``: the student's sampling (GKD samples
    at temperature 1); ``seed``: the lmbda draws, prompt order and sampling.
    """

    prompts: list[str]
    lmbda: float = 0.5
    regenerate_every: int = 1
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int = 0
    stats: dict[str, float] = field(default_factory=dict, repr=False)  # filled by the run (OnPolicyData.stats)

    def __post_init__(self) -> None:
        if not isinstance(self.prompts, (list, tuple)) or not self.prompts or \
                not all(isinstance(p, str) and p.strip() for p in self.prompts):
            raise ValueError("OnPolicy.prompts must be a non-empty list of non-empty strings (the user messages the "
                             "student answers)")
        if not 0.0 <= self.lmbda <= 1.0:
            raise ValueError(f"OnPolicy.lmbda={self.lmbda!r} is invalid; allowed: 0 <= lmbda <= 1 (share of "
                             "on-policy batches)")
        for name in ("regenerate_every", "max_new_tokens"):
            if as_int(name, getattr(self, name)) < 1:
                raise ValueError(f"OnPolicy.{name}={getattr(self, name)!r} is invalid; allowed: an integer >= 1")
        if not self.temperature > 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"OnPolicy: temperature={self.temperature!r} must be > 0 and top_p={self.top_p!r} "
                             "in (0, 1]")


class OnPolicyData(torch.utils.data.IterableDataset):
    """Rows ``{input_ids, attention_mask, labels}`` ``[length]`` for ``n_batches`` batches of ``batch_size``: each
    batch is either the student's samples (probability ``lmbda``) or the next rows of ``fixed`` (``[n, length]``,
    per-example rows with the prompt labelled -100). ``student`` is the live model being trained."""

    def __init__(self, source: OnPolicy, fixed: dict[str, Tensor], student, tokenizer, batch_size: int,
                 n_batches: int, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.source, self.fixed, self.student, self.tokenizer = source, fixed, student, tokenizer
        self.batch_size, self.n_batches, self.dtype = batch_size, n_batches, dtype
        self.length = fixed["input_ids"].shape[1]
        self.prompts = [prompt_ids(tokenizer, p) for p in source.prompts]
        longest = max(len(p) for p in self.prompts)
        if longest >= self.length:
            raise ValueError(f"the longest chat-templated prompt has {longest} tokens, but rows hold {self.length}: "
                             "make the rows longer (pair_inputs max_length) or the prompts shorter")
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.stats = {"on_policy_batches": 0, "fixed_batches": 0, "regenerations": 0, "generated_tokens": 0,
                      "generation_seconds": 0.0}
        source.stats = self.stats

    def __iter__(self):
        order = list(range(len(self.prompts)))
        random.Random(self.source.seed + 1).shuffle(order)
        fixed_order = torch.randperm(len(self.fixed["input_ids"]), generator=torch.Generator().manual_seed(
            self.source.seed)).tolist()
        samples: list[dict[str, Tensor]] = []
        next_prompt = next_fixed = 0
        for kind in on_policy_schedule(self.n_batches, self.source.lmbda, self.source.regenerate_every,
                                       self.source.seed):
            if kind == "generate":
                chosen = [order[(next_prompt + i) % len(order)] for i in range(self.batch_size)]
                next_prompt += self.batch_size
                samples = self._generate(chosen)
            if kind == "fixed":
                idx = [fixed_order[(next_fixed + i) % len(fixed_order)] for i in range(self.batch_size)]
                next_fixed += self.batch_size
                self.stats["fixed_batches"] += 1
                yield from ({k: v[i] for k, v in self.fixed.items()} for i in idx)
            else:
                self.stats["on_policy_batches"] += 1
                yield from samples

    @torch.no_grad()
    def _generate(self, prompt_index: list[int]) -> list[dict[str, Tensor]]:
        """The student's sampled answers to these prompts, as rows (prompt masked, cut at the first EOS)."""
        start = time.perf_counter()
        student, device = self.student, self.student.device
        prompts = [self.prompts[i] for i in prompt_index]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, p in enumerate(prompts):  # left padding: every answer starts at column `width`
            ids[row, width - len(p):] = torch.tensor(p)
            mask[row, width - len(p):] = 1
        was_training = student.training
        student.eval()
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.autocast(device.type, dtype=self.dtype,
                                                                     enabled=self.dtype != torch.float32):
            torch.manual_seed(self.source.seed + 1000 * (self.stats["regenerations"] + 1))
            out = student.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                                   temperature=self.source.temperature, top_p=self.source.top_p, top_k=0,
                                   max_new_tokens=min(self.source.max_new_tokens, self.length - width),
                                   pad_token_id=self.pad_id, eos_token_id=self.tokenizer.eos_token_id)
        student.train(was_training)
        rows = [self._row(p, out[r, width:].tolist()) for r, p in enumerate(prompts)]
        self.stats["regenerations"] += 1
        self.stats["generation_seconds"] += time.perf_counter() - start
        return rows

    def _row(self, prompt: list[int], new: list[int]) -> dict[str, Tensor]:
        eos = self.tokenizer.eos_token_id
        answer = new[: new.index(eos) + 1] if eos in new else new
        self.stats["generated_tokens"] += len(answer)
        ids, n = prompt + answer, len(prompt) + len(answer)
        row = {"input_ids": torch.full((self.length,), self.pad_id, dtype=torch.long),
               "attention_mask": torch.zeros(self.length, dtype=torch.long),
               "labels": torch.full((self.length,), -100, dtype=torch.long)}
        row["input_ids"][:n] = torch.tensor(ids)
        row["attention_mask"][:n] = 1
        row["labels"][len(prompt):n] = torch.tensor(answer, dtype=torch.long)
        return row
