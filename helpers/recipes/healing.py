"""Healed students side by side: the evaluation every distillation-variant notebook (06-08) reports the same way.

:func:`evaluate_healed` scores each run's student on the held-out corpus windows (the run's own final evaluation),
on real text and on held-out prompts (greedy answers read by the teacher: ``evaluate.answer_agreement``);
:func:`healed_verdicts` states every variant against the reference run with a band (seed bands with >= 3 seeds,
else a paired bootstrap over windows; over prompts for the agreement score); :func:`healed_table` prints one row
per model; :func:`save_healed` writes each student as a stock checkpoint with its recipe and records its metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..distill import DistillResult, save_distilled
from ..evaluate import AnswerAgreement, Perplexity, answer_agreement, generate, perplexity
from ..workbook import (Verdict, compare_runs, log_recovery, model_dir, paired_verdict, record_metrics, verdict,
                        window_band)

__all__ = ["Baseline", "HealedRow", "evaluate_healed", "healed_verdicts", "healed_table", "save_healed"]


@dataclass(frozen=True)
class Baseline:
    """A model's held-out corpus and real-text results (``Perplexity`` with windows): the teacher or the pruned
    student before healing."""

    corpus: Perplexity
    realtext: Perplexity


@dataclass(frozen=True)
class HealedRow:
    """One model's numbers: ``corpus`` / ``realtext`` ``Perplexity`` (windows kept for bands), log-space
    ``recovery`` / ``realtext_recovery`` (0 = pruned, 1 = teacher), ``agreement`` on held-out prompts, the greedy
    ``answers`` it was computed from, ``tokens_seen`` in training (0 for baselines)."""

    name: str
    corpus: Perplexity
    realtext: Perplexity
    recovery: float | None
    realtext_recovery: float | None
    agreement: AnswerAgreement
    answers: tuple[str, ...]
    tokens_seen: int = 0


def _row(name: str, model: PreTrainedModel, corpus: Perplexity, realtext_blocks, teacher, tokenizer,
         prompts: list[str], max_new_tokens: int, teacher_base: Baseline | None, pruned_base: Baseline | None,
         tokens_seen: int, realtext: Perplexity | None = None) -> HealedRow:
    realtext = realtext or perplexity(model, realtext_blocks)
    answers = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    agree = answer_agreement(teacher, tokenizer, prompts, answers)
    rec = real_rec = None
    if teacher_base is not None and pruned_base is not None:
        rec = log_recovery(pruned_base.corpus.ppl, corpus.ppl, teacher_base.corpus.ppl)
        real_rec = log_recovery(pruned_base.realtext.ppl, realtext.ppl, teacher_base.realtext.ppl)
    return HealedRow(name, corpus, realtext, rec, real_rec, agree, tuple(answers), tokens_seen)


def evaluate_healed(results: dict[str, DistillResult], teacher: PreTrainedModel, pruned: PreTrainedModel,
                    tokenizer: PreTrainedTokenizerBase, realtext_blocks, prompts: list[str], max_new_tokens: int,
                    teacher_base: Baseline, pruned_base: Baseline) -> dict[str, HealedRow]:
    """One :class:`HealedRow` per run (``results``: name -> a ``distill`` result evaluated on the corpus windows),
    plus ``"teacher"`` and ``"pruned"`` rows from their baselines. Real-text windows ``realtext_blocks``
    ``[n, 512]``; ``prompts`` answered greedily with at most ``max_new_tokens``."""
    missing = [name for name, r in results.items() if r.final_eval is None]
    if missing:
        raise ValueError(f"runs {missing} have no final evaluation: pass eval_blocks= to distill")
    common = dict(realtext_blocks=realtext_blocks, teacher=teacher, tokenizer=tokenizer, prompts=prompts,
                  max_new_tokens=max_new_tokens, teacher_base=teacher_base, pruned_base=pruned_base)
    rows = {"teacher": _row("teacher", teacher, teacher_base.corpus, tokens_seen=0, realtext=teacher_base.realtext,
                            **common),
            "pruned": _row("pruned", pruned, pruned_base.corpus, tokens_seen=0, realtext=pruned_base.realtext,
                           **common)}
    for name, result in results.items():
        rows[name] = _row(name, result.student, result.final_eval, tokens_seen=result.tokens_seen, **common)
    return rows


def healed_verdicts(rows: dict[str, HealedRow], reference: str, runs: list[str],
                    extra_seeds: dict[str, list[Perplexity]] | None = None) -> dict[str, Verdict]:
    """Each run in ``runs`` against ``reference`` on the corpus (``compare_runs``: seed bands when both have >= 3
    seeds in ``[row.corpus, *extra_seeds[name]]``), on real text (paired over windows) and on the teacher's
    perplexity of their answers (bands over prompts; lower = answers more like the teacher's)."""
    if reference not in rows:
        raise ValueError(f"reference {reference!r} is not among the rows {sorted(rows)}")
    extra_seeds = extra_seeds or {}
    seeds = lambda name: [rows[name].corpus, *extra_seeds.get(name, [])]  # noqa: E731
    ref, out = rows[reference], {}
    for name in runs:
        if name == reference:
            continue
        row = rows[name]
        out[f"{name} vs {reference}, corpus"] = compare_runs(name, seeds(name), reference, seeds(reference))
        out[f"{name} vs {reference}, real text"] = paired_verdict(name, row.realtext, reference, ref.realtext)
        out[f"{name} vs {reference}, teacher ppl of the answers"] = verdict(
            name, window_band(row.agreement.teacher_nll), reference, window_band(ref.agreement.teacher_nll))
    return out


def healed_table(rows: dict[str, HealedRow], teacher: str = "teacher") -> str:
    """A fixed-width table: corpus ppl, ratio to the teacher, recovery, real-text ppl and recovery, the teacher's
    log-prob per answer token, top-1 agreement, mean answer length, training tokens."""
    base = rows[teacher].corpus.ppl
    pct = lambda x: f"{x:8.1%}" if x is not None else f"{'':>8}"  # noqa: E731
    w = max(14, *(len(name) for name in rows))
    lines = [f"{'':>{w}} {'corpus ppl':>10} {'x teacher':>9} {'recovery':>8} {'real text':>9} {'recovery':>8} "
             f"{'teacher logp':>12} {'top-1':>6} {'answer len':>10} {'tokens':>8}"]
    for name, r in rows.items():
        tokens = f"{r.tokens_seen:8,}" if r.tokens_seen else f"{'':>8}"
        recs = (None, None) if name in (teacher, "pruned") else (r.recovery, r.realtext_recovery)
        lines.append(f"{name:>{w}} {r.corpus.ppl:10.2f} {r.corpus.ppl / base:9.1f} {pct(recs[0])} {r.realtext.ppl:9.2f} "
                     f"{pct(recs[1])} {r.agreement.logprob:12.2f} {r.agreement.top1:6.1%} "
                     f"{r.agreement.mean_tokens:10.1f} {tokens}")
    return "\n".join(lines)


def save_healed(results: dict[str, DistillResult], rows: dict[str, HealedRow], names: dict[str, str],
                tokenizer: PreTrainedTokenizerBase, parent: str | Path, notebook: str, n_params: int,
                extra: dict[str, dict[str, Any]] | None = None) -> dict[str, Path]:
    """Save each run's student as ``runs/<scale>/models/<names[run]>`` (stock checkpoint + recipe.json) and record
    its metrics (the results-table columns plus ``extra[run]``) under that name. Returns the folders."""
    teacher_ppl = rows["teacher"].corpus.ppl
    paths = {}
    for run, result in results.items():
        row = rows[run]
        metrics = {"params": n_params, "heldout_ppl": round(row.corpus.ppl, 3), "ppl_tokens": row.corpus.n_tokens,
                   "realtext_ppl": round(row.realtext.ppl, 3), "ppl_ratio": round(row.corpus.ppl / teacher_ppl, 3),
                   "log_recovery": None if row.recovery is None else round(row.recovery, 4),
                   "tokens_seen": result.tokens_seen, "method": run, "loss": result.config.loss,
                   "teacher_logprob": round(row.agreement.logprob, 4), "top1_agreement": round(row.agreement.top1, 4),
                   **(extra or {}).get(run, {})}
        paths[run] = save_distilled(result, tokenizer, model_dir(names[run]), parent=str(parent),
                                    recipe_extra={"notebook": notebook, "method": run,
                                                  "heldout_ppl": row.corpus.ppl})
        record_metrics(names[run], notebook, metrics)
    return paths
