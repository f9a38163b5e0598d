"""Recipes shared by the variant notebooks 06-08: healed students side by side, teacher answers, assistants."""

from __future__ import annotations

import json

import pytest
import torch

from helpers import distill as D
from helpers import evaluate as E
from helpers import recipes as R
from helpers.pruning import count_parameters
from tests.test_models import tiny_tokenizer

PROMPTS = ["t5 t6", "t7 t8 t9", "t10"]


def test_assistant_holds_the_student_and_prunes_to_it(tiny_model, tiny_batches):
    teacher = tiny_model()
    student = {"hidden_size": 48, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4}
    sizes = R.assistant_sizes(teacher.config, student, ratio=0.8, tolerance=0.3)
    assert all(sizes[k] >= student[k] for k in student)
    assistant = R.prune_width_to(teacher, tiny_batches, sizes)
    assert count_parameters(assistant.config) < count_parameters(teacher.config)
    pruned = R.prune_width_to(assistant, tiny_batches, student)
    assert {k: getattr(pruned.config, k) for k in student} == student
    with pytest.raises(ValueError, match="keeps every axis|No width candidate"):
        R.assistant_sizes(teacher.config, {**student, "hidden_size": 64, "intermediate_size": 128}, 0.5, 0.05)


def test_prune_width_to_reuses_the_named_models_cached_scores(tiny_model, tiny_batches, tmp_path, monkeypatch):
    from helpers.recipes import scores

    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path))
    teacher = tiny_model()
    sizes = {"hidden_size": 48, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4}
    calls = []
    real = scores.estimate_importance
    monkeypatch.setattr(scores, "estimate_importance", lambda *a, **k: calls.append(1) or real(*a, **k))
    first = R.prune_width_to(teacher, tiny_batches, sizes, name="tiny-teacher")
    again = R.prune_width_to(teacher, tiny_batches, sizes, name="tiny-teacher")
    assert len(calls) == 1, "the teacher's scores are measured once and read back"
    fresh = R.prune_width_to(teacher, tiny_batches, sizes)  # no name: measured, not cached
    for model in (again, fresh):
        for (n, a), b in zip(first.named_parameters(), model.parameters()):
            torch.testing.assert_close(a, b, msg=n)


def test_healed_students_evaluated_compared_and_saved(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path))
    teacher, pruned, tok = tiny_model(seed=0), tiny_model(seed=1), tiny_tokenizer()
    blocks = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    cfg = D.DistillConfig(max_steps=2, batch_size=2, disable_tqdm=True, bf16=False, eval_at_start=False)
    results = {name: D.distill(pruned, teacher, blocks, D.DistillConfig(**{**cfg.__dict__, "seed": seed}),
                               eval_blocks=blocks, tokenizer=tok) for name, seed in (("a", 0), ("b", 1))}
    base = {name: R.Baseline(E.perplexity(m, blocks), E.perplexity(m, blocks)) for name, m in
            (("teacher", teacher), ("pruned", pruned))}
    rows = R.evaluate_healed(results, teacher, pruned, tok, blocks, PROMPTS, 4, base["teacher"], base["pruned"])
    assert list(rows) == ["teacher", "pruned", "a", "b"] and len(rows["a"].answers) == len(PROMPTS)
    assert rows["a"].corpus == results["a"].final_eval and rows["a"].tokens_seen == results["a"].tokens_seen
    verdicts = R.healed_verdicts(rows, "a", ["a", "b"])
    assert set(verdicts) == {"b vs a, corpus", "b vs a, real text", "b vs a, teacher ppl of the answers"}
    table = R.healed_table(rows)
    assert table.count("\n") == 4 and "teacher logp" in table
    paths = R.save_healed(results, rows, {"a": "tiny_a", "b": "tiny_b"}, tok, "parent", "nb", 123,
                          {"a": {"extra_field": 1}})
    recipe = json.loads((paths["a"] / "recipe.json").read_text())
    assert recipe["method"] == "a" and recipe["parent"] == "parent"
    from helpers.workbook import load_metrics
    recorded = load_metrics()
    assert recorded["tiny_a"]["extra_field"] == 1 and recorded["tiny_b"]["params"] == 123
    with pytest.raises(ValueError, match="reference"):
        R.healed_verdicts(rows, "missing", ["a"])


def _ppl(window_nll, tokens=10):
    import math

    total = sum(window_nll)
    n = tokens * len(window_nll)
    return E.Perplexity(math.exp(total / n), total / n, n, len(window_nll), 16, tuple(window_nll), (tokens,) * len(window_nll))


def test_claim_verdicts_read_the_paired_comparison():
    good, bad = _ppl([10.0, 11.0, 12.0, 10.5, 11.5, 10.2]), _ppl([20.0, 21.0, 22.0, 20.5, 21.5, 20.2])
    noisy = _ppl([10.0, 30.0, 12.0, 5.0, 21.5, 10.2])
    better = R.Claim("a beats b", "a", "b")
    assert R.claim_verdict(better, good, bad)[0] == "agrees"
    assert R.claim_verdict(better, bad, good)[0] == "disagrees"
    assert R.claim_verdict(better, good, noisy)[0] == "within noise"
    no_gain = R.Claim("adding x to b does not help", "a", "b", prediction="no_gain")
    assert R.claim_verdict(no_gain, good, bad)[0] == "disagrees"
    assert R.claim_verdict(no_gain, bad, good)[0] == "agrees"
    with pytest.raises(ValueError, match="prediction"):
        R.Claim("x", "a", "b", prediction="maybe")


def test_scratch_model_has_the_architecture_and_a_fresh_init(tiny_model):
    like = tiny_model()
    scratch = R.scratch_model(like, seed=3)
    assert scratch.config.to_dict() == like.config.to_dict()
    assert [p.shape for p in scratch.parameters()] == [p.shape for p in like.parameters()]
    assert not torch.equal(scratch.model.layers[0].mlp.up_proj.weight, like.model.layers[0].mlp.up_proj.weight)
    torch.testing.assert_close(R.scratch_model(like, seed=3).state_dict(), scratch.state_dict())
    before = torch.random.get_rng_state()
    R.scratch_model(like, seed=4)
    assert torch.equal(before, torch.random.get_rng_state())  # the global RNG is untouched


def test_iterative_depth_pruning_reaches_the_target(tiny_model, tiny_batches):
    model = tiny_model(num_hidden_layers=6)
    pruned = R.prune_depth_iteratively(model, tiny_batches[:1], num_layers=3, steps=3)
    assert pruned.config.num_hidden_layers == 3 and model.config.num_hidden_layers == 6
    with pytest.raises(ValueError, match="num_layers"):
        R.prune_depth_iteratively(model, tiny_batches[:1], num_layers=6, steps=2)


def test_ensure_models_runs_nothing_when_every_model_is_there(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path))
    from helpers.models import save_model
    from helpers.workbook import model_dir

    save_model(tiny_model(), tiny_tokenizer(), model_dir("m"), {"parent": "x", "steps": []})
    monkeypatch.setattr("helpers.workbook.runner.run_notebooks", lambda *a, **k: pytest.fail("nothing should run"))
    assert R.ensure_models({"04_logit_distillation.ipynb": ["m"]}, "smoke") == []
