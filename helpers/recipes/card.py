"""What a shrunk student is worth, and the model card that says so (``python -m helpers shrink``, ``make students``).

:func:`evaluate_student` measures a distilled student beside its teacher and its pruned starting point, by the
workbook's protocol: held-out perplexity on the embedded corpus (text the teacher wrote) and on the real-text set
(``helpers.data.REAL_TEXT``, text neither model wrote), the ratio to the teacher's and the log-space recovery
(``helpers.workbook.log_recovery``), decode/prefill speed and memory at batch 1 timed in one interleaved run
(``helpers.evaluate.compare_speed``), the FLOPs per token of each model, and greedy answers to a few prompts.
:func:`student_card` writes it as a Hugging Face model card (``huggingface_hub.ModelCard``): lineage, recipe,
tokens, evaluation protocol and results, intended use and limitations.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

__all__ = ["CARD_PROMPTS", "StudentEvaluation", "flops_per_token", "ratio_band", "evaluate_student", "student_card"]

CARD_PROMPTS = ("What is the capital of France, and what is it known for?",
                "Give three tips for staying focused while studying.",
                "Write a short story about a robot who learns to paint.")

_EMBEDDED_HUB_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}  # the embedded alias's origin


def flops_per_token(model: nn.Module) -> int:
    """Forward FLOPs per token at short context: ``2 x`` the weights every token multiplies (decoder layers and the
    LM head; the embedding is a lookup). Attention over the context (``4 x layers x hidden x context``) is left out:
    it is under 1% at the few hundred tokens the speed test uses."""
    config = model.config
    embeddings = config.vocab_size * config.hidden_size
    untied = not getattr(config, "tie_word_embeddings", True)
    total = sum(p.numel() for p in model.parameters())
    return 2 * (total - embeddings * (2 if untied else 1) + embeddings)


@dataclass
class StudentEvaluation:
    """A student's measurements beside its teacher. Perplexities keyed ``teacher`` / ``pruned`` / ``student``."""

    params: int
    teacher_params: int
    corpus_ppl: dict[str, float]
    realtext_ppl: dict[str, float]
    decode_tokens_per_s: dict[str, float]
    prefill_tokens_per_s: dict[str, float]
    memory_mib: dict[str, float]
    flops_per_token: dict[str, int]
    generations: list[dict[str, str]] = field(default_factory=list)
    ratio_band: dict[str, tuple[float, float]] = field(default_factory=dict)

    def ratio(self, which: str = "realtext") -> float:
        """The student's perplexity over the teacher's on ``corpus`` or ``realtext``."""
        ppl = self.realtext_ppl if which == "realtext" else self.corpus_ppl
        return ppl["student"] / ppl["teacher"]

    def recovery(self, which: str = "realtext") -> float:
        from ..workbook import log_recovery

        ppl = self.realtext_ppl if which == "realtext" else self.corpus_ppl
        return log_recovery(ppl["pruned"], ppl["student"], ppl["teacher"])

    @property
    def speedup(self) -> float:
        """Decode tokens/s of the student over the teacher's (batch 1)."""
        return self.decode_tokens_per_s["student"] / self.decode_tokens_per_s["teacher"]

    @property
    def flop_reduction(self) -> float:
        """Teacher FLOPs per token over the student's (the speed-up a compute-bound decode would give)."""
        return self.flops_per_token["teacher"] / self.flops_per_token["student"]

    def metrics(self) -> dict[str, Any]:
        """Flat, rounded numbers for ``recipe.json`` and the card."""
        out: dict[str, Any] = {"params": self.params, "teacher_params": self.teacher_params,
                               "params_ratio": round(self.params / self.teacher_params, 3)}
        for which in ("corpus", "realtext"):
            ppl = getattr(self, f"{which}_ppl")
            out.update({f"{which}_ppl_{k}": round(v, 3) for k, v in ppl.items()})
            out[f"{which}_ppl_ratio"] = round(self.ratio(which), 3)
            out[f"{which}_log_recovery"] = round(self.recovery(which), 3)
            if which in self.ratio_band:
                out[f"{which}_ppl_ratio_band"] = [round(x, 3) for x in self.ratio_band[which]]
        out.update({f"decode_tokens_per_s_{k}": round(v, 2) for k, v in self.decode_tokens_per_s.items()})
        out.update({f"memory_mib_{k}": round(v, 1) for k, v in self.memory_mib.items()})
        out.update({"decode_speedup": round(self.speedup, 3), "flop_reduction": round(self.flop_reduction, 3)})
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def ratio_band(student, teacher, level: float = 0.95) -> tuple[float, float]:
    """95% paired bootstrap interval over windows of ``ppl_student / ppl_teacher`` (both
    :class:`~helpers.evaluate.Perplexity` on the same windows): ``exp`` of the interval of ``ln ppl_s - ln ppl_t``."""
    import math

    from ..workbook import paired_bootstrap_diff

    low, high = paired_bootstrap_diff(student, teacher, level=level)
    return math.exp(low), math.exp(high)


def evaluate_student(teacher: nn.Module, pruned: nn.Module, student: nn.Module, tokenizer, corpus_blocks,
                     realtext_blocks, speed_repeats: int = 5, prompts: tuple[str, ...] = CARD_PROMPTS,
                     max_new_tokens: int = 48) -> StudentEvaluation:
    """Measure ``student`` beside ``teacher`` and ``pruned`` (its starting point). ``corpus_blocks`` /
    ``realtext_blocks``: held-out windows ``[n, window]``. Speed: ``compare_speed`` of teacher and student (fp32
    weights, batch 1, 256 prompt + 64 new tokens, median of ``speed_repeats`` interleaved rounds)."""
    from ..evaluate import compare_speed, generate, perplexity
    from ..evaluate import model_memory_mib

    models = {"teacher": teacher, "pruned": pruned, "student": student}
    scored = {which: {k: perplexity(m, blocks, progress=False) for k, m in models.items()}
              for which, blocks in (("corpus", corpus_blocks), ("realtext", realtext_blocks))}
    corpus, real = ({k: r.ppl for k, r in scored[w].items()} for w in ("corpus", "realtext"))
    positions = getattr(teacher.config, "max_position_embeddings", 2048)
    speed = compare_speed({"teacher": teacher, "student": student}, prompt_tokens=min(256, positions // 2),
                          new_tokens=min(64, positions // 4), repeats=speed_repeats, progress=False)
    chat = getattr(tokenizer, "chat_template", None) is not None
    answers = {k: generate(models[k], tokenizer, list(prompts), max_new_tokens=max_new_tokens, chat=chat)
               for k in ("teacher", "student")} if prompts else {"teacher": [], "student": []}
    return StudentEvaluation(
        params=sum(p.numel() for p in student.parameters()), teacher_params=sum(p.numel() for p in teacher.parameters()),
        corpus_ppl=corpus, realtext_ppl=real,
        decode_tokens_per_s={k: s.decode_tokens_per_s for k, s in speed.items()},
        prefill_tokens_per_s={k: s.prefill_tokens_per_s for k, s in speed.items()},
        memory_mib={k: model_memory_mib(models[k].config, sum(p.numel() for p in models[k].parameters()),
                                        s.prompt_tokens + s.new_tokens, next(models[k].parameters()).element_size())
                    for k, s in speed.items()},
        flops_per_token={k: flops_per_token(models[k]) for k in ("teacher", "student")},
        ratio_band={w: ratio_band(r["student"], r["teacher"]) for w, r in scored.items()
                    if len(r["student"].window_nll) > 1},
        generations=[{"prompt": p, "teacher": t, "student": s}
                     for p, t, s in zip(prompts, answers["teacher"], answers["student"])])


def _ratio_cell(ev: StudentEvaluation, which: str) -> str:
    band = ev.ratio_band.get(which)
    return f"{ev.ratio(which):.2f}x" + (f", 95% band [{band[0]:.2f}, {band[1]:.2f}]x" if band else "")


def _results_table(ev: StudentEvaluation) -> str:
    rows = [("parameters", f"{ev.teacher_params:,}", f"{ev.params:,} ({ev.params / ev.teacher_params:.0%})"),
            ("corpus perplexity (teacher-written text)", f"{ev.corpus_ppl['teacher']:.2f}",
             f"{ev.corpus_ppl['student']:.2f} ({_ratio_cell(ev, 'corpus')})"),
            ("real-text perplexity (Python language reference)", f"{ev.realtext_ppl['teacher']:.2f}",
             f"{ev.realtext_ppl['student']:.2f} ({_ratio_cell(ev, 'realtext')})"),
            ("log-space recovery of the pruning damage, real text", "100%", f"{ev.recovery('realtext'):.0%}"),
            ("decode tokens/s, batch 1 (fp32, this CPU)", f"{ev.decode_tokens_per_s['teacher']:.1f}",
             f"{ev.decode_tokens_per_s['student']:.1f} ({ev.speedup:.2f}x; FLOPs {ev.flop_reduction:.2f}x fewer)"),
            ("memory at batch 1 after 256+64 tokens, MiB (weights + KV cache)", f"{ev.memory_mib['teacher']:.0f}",
             f"{ev.memory_mib['student']:.0f}")]
    return "| | teacher | this model |\n|---|---|---|\n" + "\n".join(f"| {a} | {b} | {c} |" for a, b, c in rows)


def student_card(name: str, teacher: str, recipe: dict[str, Any], ev: StudentEvaluation, machine: str = "") -> str:
    """A model card (YAML metadata + markdown) for a shrunk student. ``recipe``: what was done (kind, architecture,
    tokens, loss, learning rate, data, time), shown as given."""
    from huggingface_hub import ModelCard, ModelCardData

    from pathlib import Path

    hub_id = _EMBEDDED_HUB_IDS.get(teacher, teacher if "/" in teacher and not Path(teacher).exists() else None)
    data = ModelCardData(library_name="transformers", pipeline_tag="text-generation", base_model=hub_id,
                         license="apache-2.0",
                         tags=["pruned", "distilled", "minitron", f"{recipe.get('kind', 'width')}-pruned"])
    lines = "\n".join(f"| {k} | {v} |" for k, v in recipe.items())
    samples = "\n\n".join(f"**Prompt:** {g['prompt']}\n\n- teacher: {g['teacher']}\n- this model: {g['student']}"
                          for g in ev.generations)
    body = f"""# {name}

A {ev.params / ev.teacher_params:.0%} student of `{teacher}`: structurally pruned (Minitron recipe, activation
importance) and healed by knowledge distillation from the teacher with the prune & distill workbook. A stock
Hugging Face checkpoint: `AutoModelForCausalLM.from_pretrained(this_folder)`; the chat template is the teacher's.
The full lineage (every pruning and distillation step) is in `recipe.json`.

## Recipe

| | |
|---|---|
{lines}

## Evaluation

Held-out perplexity by the workbook's protocol (512-token windows, stride 512): the embedded corpus's held-out
split (text the teacher wrote on topics absent from training) and the real-text set (held-out part of the Python
language reference that ships with CPython; neither model was trained on it). Recovery is measured in
log-perplexity: 100% is the teacher, 0% the pruned model before distillation. A ratio's band is the 95% paired
bootstrap interval over the windows (both models on the same windows; one training seed, so it does not cover
training noise). Speed: greedy decode at batch 1,
medians of interleaved rounds{f', {machine}' if machine else ''}.

{_results_table(ev)}

## Samples (greedy)

{samples}

## Intended use and limitations

For learning and experimenting with model compression, and as a small, fast draft or edge model where the
teacher's quality is not needed. It inherits the teacher's limitations (a 135M-parameter instruct model: factual
errors, repetition, English only) and adds its own: its perplexity is the ratio above the teacher's, larger on
text unlike the teacher's own outputs, and it was distilled on teacher-written text only, so it is no source of
facts and was not evaluated for safety.
"""
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}"))
