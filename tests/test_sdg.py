"""Synthetic data (teacher-written answers), on-policy distillation as a data source, and answer agreement."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import distill as D
from helpers import evaluate as E
from helpers.distill.losses import causal_lm_loss
from tests.test_models import tiny_tokenizer

PROMPTS = ["t5 t6 t7", "t8", "t9 t10", "t11 t12 t13 t14", "t15", "t16 t17"]


def test_sample_answers_are_deterministic_for_a_seed(tiny_model):
    model, tok = tiny_model(), tiny_tokenizer()
    settings = D.GenerationSettings(max_new_tokens=6, batch_size=4, seed=3)
    first = D.sample_answers(model, tok, PROMPTS, settings, progress=False)
    again = D.sample_answers(model, tok, PROMPTS, settings, progress=False)
    other = D.sample_answers(model, tok, PROMPTS, D.GenerationSettings(max_new_tokens=6, batch_size=4, seed=4),
                             progress=False)
    assert first == again and len(first) == len(PROMPTS)
    assert first != other  # another seed samples other answers
    with pytest.raises(ValueError, match="non-empty"):
        D.sample_answers(model, tok, ["t5", " "], settings)
    with pytest.raises(ValueError, match="batch_size"):
        D.GenerationSettings(batch_size=0)


def test_pair_inputs_mask_the_prompt_and_the_padding():
    tok = tiny_tokenizer()
    rows = D.pair_inputs(["t5 t6 t7", "t8"], ["t20 t21", "t22 t23 t24"], tok, max_length=10)
    assert rows["input_ids"][0].tolist() == [5, 6, 7, 20, 21, 2, 2, 2, 2, 2]  # prompt, response, EOS, padding
    assert rows["labels"][0].tolist() == [-100, -100, -100, 20, 21, 2] + [-100] * 4
    assert rows["attention_mask"][1].tolist() == [1] * 5 + [0] * 5
    assert rows["labels"][1].tolist() == [-100, 22, 23, 24, 2] + [-100] * 5
    # the CE the trainer computes is the mean NLL of the response tokens only (EOS included)
    logits = torch.randn(2, 10, 128, generator=torch.Generator().manual_seed(0))
    logp = torch.log_softmax(logits, -1)
    by_hand = [-logp[r, s - 1, rows["input_ids"][r, s]] for r in range(2) for s in range(1, 10)
               if rows["labels"][r, s] != -100]
    torch.testing.assert_close(causal_lm_loss(logits, rows["labels"], rows["attention_mask"]),
                               torch.stack(by_hand).mean())
    with pytest.raises(ValueError, match="as many responses"):
        D.pair_inputs(["t5"], [], tok, 8)


def test_synthetic_pairs_are_kept_reused_and_renewed(tiny_model, tmp_path, monkeypatch):
    model, tok = tiny_model(), tiny_tokenizer()
    settings = D.GenerationSettings(max_new_tokens=4, batch_size=3)
    folder = tmp_path / "sdg"
    data, reused = D.synthetic_pairs(model, tok, PROMPTS, folder, settings, progress=False)
    assert not reused and data["prompt"] == PROMPTS and len(data["response"]) == len(PROMPTS)
    assert [p.name for p in tmp_path.iterdir()] == ["sdg"]  # no temp folder left behind

    def no_generation(*args, **kwargs):
        raise AssertionError("the saved answers should have been reused")

    monkeypatch.setattr("helpers.distill.synthetic.sample_answers", no_generation)
    again, reused = D.synthetic_pairs(model, tok, PROMPTS, folder, settings, progress=False)
    assert reused and again["response"] == data["response"]
    with pytest.raises(AssertionError, match="reused"):  # other settings: generated anew
        D.synthetic_pairs(model, tok, PROMPTS, folder, D.GenerationSettings(max_new_tokens=5), progress=False)


def test_answer_agreement_of_the_teachers_own_greedy_answers(tiny_model):
    teacher, tok = tiny_model(), tiny_tokenizer()
    answers = E.generate(teacher, tok, PROMPTS, max_new_tokens=5)
    own = E.answer_agreement(teacher, tok, PROMPTS, answers, batch_size=4, use_autocast=False)
    assert own.top1 == pytest.approx(1.0)  # greedy: every answer token is the teacher's argmax
    other = E.answer_agreement(teacher, tok, PROMPTS, ["t40 t41 t42"] * len(PROMPTS), use_autocast=False)
    assert other.logprob < own.logprob <= 0 and other.top1 < 1
    assert own.teacher_nll.n_windows == len(PROMPTS) and sum(own.teacher_nll.window_tokens) == own.teacher_nll.n_tokens
    assert math.isclose(sum(own.teacher_nll.window_nll) / own.teacher_nll.n_tokens, own.teacher_nll.nll)
    with pytest.raises(ValueError, match="one answer per prompt"):
        E.answer_agreement(teacher, tok, PROMPTS, answers[:2])


def test_an_empty_answer_is_read_as_the_end_of_the_turn(tiny_model):
    teacher, tok = tiny_model(), tiny_tokenizer()
    empty = E.answer_agreement(teacher, tok, PROMPTS, ["", "  "] + ["t40"] * (len(PROMPTS) - 2), use_autocast=False)
    eos = E.answer_agreement(teacher, tok, PROMPTS[:1], [tok.decode([tok.eos_token_id])], use_autocast=False)
    assert empty.teacher_nll.window_tokens[:2] == (1, 1)  # one scored token each: the end of the turn
    assert math.isclose(empty.teacher_nll.window_nll[0], eos.teacher_nll.window_nll[0], rel_tol=1e-5)
    assert math.isfinite(empty.logprob)


@pytest.fixture
def fixed_rows():
    tok = tiny_tokenizer()
    return D.pair_inputs(PROMPTS, ["t20 t21 t22"] * len(PROMPTS), tok, max_length=16)


def _run(tiny_model, rows, source, **config):
    cfg = D.DistillConfig(loss=config.pop("loss", "reverse_kl"), max_steps=config.pop("max_steps", 4), batch_size=2,
                          learning_rate=1e-3, logging_steps=1, disable_tqdm=True, bf16=False, **config)
    student, teacher = tiny_model(seed=1, num_hidden_layers=2), tiny_model(seed=0)
    return D.distill(student, teacher, rows, cfg, tokenizer=tiny_tokenizer(), on_policy=source), teacher


def test_on_policy_rows_are_the_students_samples_with_the_prompt_masked(tiny_model):
    tok, student = tiny_tokenizer(), tiny_model(seed=1)
    rows = D.pair_inputs(PROMPTS, ["t20"] * len(PROMPTS), tok, max_length=16)
    source = D.OnPolicy(PROMPTS, lmbda=1.0, regenerate_every=2, max_new_tokens=5, seed=0)
    data = list(D.OnPolicyData(source, rows, student, tok, batch_size=2, n_batches=3))
    assert len(data) == 6 and source.stats["on_policy_batches"] == 3 and source.stats["fixed_batches"] == 0
    assert source.stats["regenerations"] == 2  # generated at steps 0 and 2, reused at step 1
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(data[:2], data[2:4]))
    for row in data:
        n = int(row["attention_mask"].sum())
        labelled = (row["labels"] != -100).nonzero().flatten()
        assert 1 <= len(labelled) <= 5 and labelled.max() == n - 1  # the answer ends the row's real tokens
        prompt_len = int(labelled.min())
        assert tok.decode(row["input_ids"][:prompt_len]) in PROMPTS  # everything before the answer is a prompt
    again = list(D.OnPolicyData(D.OnPolicy(PROMPTS, lmbda=1.0, regenerate_every=2, max_new_tokens=5, seed=0), rows,
                                student, tok, batch_size=2, n_batches=3))
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(data, again))  # seeded


def test_on_policy_schedule():
    kinds = D.on_policy_schedule(200, lmbda=0.5, regenerate_every=3, seed=0)
    assert kinds == D.on_policy_schedule(200, lmbda=0.5, regenerate_every=3, seed=0)
    assert 70 < kinds.count("fixed") < 130 and kinds.count("generate") >= 1
    assert D.on_policy_schedule(5, lmbda=1.0, regenerate_every=2) == ["generate", "reuse", "generate", "reuse", "generate"]
    assert set(D.on_policy_schedule(9, lmbda=1.0, regenerate_every=1)) == {"generate"}
    assert set(D.on_policy_schedule(9, lmbda=0.0)) == {"fixed"}
    last = None
    for step, kind in enumerate(kinds):  # a reused batch is never older than regenerate_every steps
        last = step if kind == "generate" else last
        assert kind != "reuse" or step - last < 3


def test_on_policy_run_mixes_fixed_and_own_samples(tiny_model, fixed_rows):
    source = D.OnPolicy(PROMPTS, lmbda=0.5, regenerate_every=1, max_new_tokens=4, seed=0)
    result, teacher = _run(tiny_model, fixed_rows, source, max_steps=6)
    stats = result.metrics
    assert stats["on_policy_batches"] + stats["fixed_batches"] >= 6 and stats["on_policy_batches"] >= 1
    assert stats["fixed_batches"] >= 1 and stats["generation_seconds"] > 0 and stats["generated_tokens"] > 0
    assert result.student.workbook_steps[-1]["on_policy"]["lmbda"] == 0.5
    same, _ = _run(tiny_model, fixed_rows, D.OnPolicy(PROMPTS, lmbda=0.5, regenerate_every=1, max_new_tokens=4,
                                                      seed=0), max_steps=6)
    for a, b in zip(result.student.parameters(), same.student.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # the same seed gives the same run
    only_fixed, _ = _run(tiny_model, fixed_rows, D.OnPolicy(PROMPTS, lmbda=0.0), max_steps=3)
    assert only_fixed.metrics["regenerations"] == 0 and only_fixed.metrics["on_policy_batches"] == 0


@pytest.mark.parametrize("change, match", [
    (dict(loss="ce"), "needs a live teacher"),
    (dict(resume_from_checkpoint=True, output_dir="never-created"), "cannot resume"),
])
def test_on_policy_refusals(tiny_model, fixed_rows, change, match):
    with pytest.raises(ValueError, match=match):
        _run(tiny_model, fixed_rows, D.OnPolicy(PROMPTS), **change)


def test_on_policy_input_checks(tiny_model, fixed_rows):
    student, teacher, tok = tiny_model(seed=1), tiny_model(), tiny_tokenizer()
    cfg = D.DistillConfig(max_steps=1, batch_size=2, disable_tqdm=True)
    with pytest.raises(ValueError, match="tokenizer"):
        D.distill(student, teacher, fixed_rows, cfg, on_policy=D.OnPolicy(PROMPTS))
    with pytest.raises(ValueError, match="per-example rows"):
        D.distill(student, teacher, fixed_rows["input_ids"], cfg, tokenizer=tok, on_policy=D.OnPolicy(PROMPTS))
    with pytest.raises(ValueError, match="lmbda"):
        D.OnPolicy(PROMPTS, lmbda=1.5)
    with pytest.raises(ValueError, match="non-empty"):
        D.OnPolicy([])
    with pytest.raises(ValueError, match="longest chat-templated prompt"):
        D.OnPolicyData(D.OnPolicy(["t5 " * 20]), fixed_rows, student, tok, batch_size=2, n_batches=1)
