"""Multiple-choice log-likelihood scoring (lm-eval's protocol) and the python-reference real-text source."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from helpers import data, evaluate
from helpers.evaluate import ChoiceItem

from .test_models import tiny_tokenizer


@pytest.fixture
def tok():
    return tiny_tokenizer()


def hand_loglikelihood(model, tok, context: str, choice: str) -> float:
    """log p(choice | context) from the model's logits on the whole sequence, one token at a time."""
    ctx = tok(context, add_special_tokens=False)["input_ids"]
    whole = tok(context + choice, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0]  # [L, vocab]
    logp = F.log_softmax(logits.float(), dim=-1)
    return sum(logp[pos - 1, whole[pos]].item() for pos in range(len(ctx), len(whole)))


def token_logprobs(model, tok, context: str) -> torch.Tensor:
    """``[vocab]`` log-probabilities of the next token after ``context``."""
    with torch.no_grad():
        logits = model(torch.tensor([tok(context, add_special_tokens=False)["input_ids"]])).logits[0, -1]
    return F.log_softmax(logits.float(), dim=-1)


ITEMS = [
    ChoiceItem("t5 t6 t7", (" t8", " t9 t10", " t11 t12 t13"), 0),
    ChoiceItem("t20", (" t21 t22 t23 t24", " t25"), 1),
    ChoiceItem("t30 t31 t32 t33 t34 t35 t36", (" t40", " t41", " t42 t43", " t44"), 3),
]


def test_loglikelihood_matches_a_hand_computation(tiny_model, tok):
    model = tiny_model()
    lls = evaluate.choice_loglikelihoods(model, tok, ITEMS, batch_size=8)
    for item, ll in zip(ITEMS, lls):
        assert len(ll) == len(item.choices)
        for choice, got in zip(item.choices, ll):
            assert got == pytest.approx(hand_loglikelihood(model, tok, item.context, choice), abs=1e-5)


def test_batching_and_padding_do_not_change_scores(tiny_model, tok):
    model = tiny_model()
    one = evaluate.choice_loglikelihoods(model, tok, ITEMS, batch_size=1)
    for batch_size in (3, 4):
        many = evaluate.choice_loglikelihoods(model, tok, ITEMS, batch_size=batch_size)
        for a, b in zip(one, many):
            assert a == pytest.approx(b, abs=1e-5)


def test_trailing_context_space_moves_to_the_choice_and_empty_context_uses_bos(tiny_model, tok):
    model = tiny_model()
    moved = ChoiceItem("t5 t6 ", ("t8", "t9"), 0)
    (a,) = evaluate.choice_loglikelihoods(model, tok, [moved])
    (b,) = evaluate.choice_loglikelihoods(model, tok, ITEMS[:1])
    assert a[0] == pytest.approx(hand_loglikelihood(model, tok, "t5 t6", " t8"), abs=1e-5)
    (empty,) = evaluate.choice_loglikelihoods(model, tok, [ChoiceItem("", (" t8", " t9"), 0)])
    assert empty[0] == pytest.approx(hand_loglikelihood(model, tok, "<s>", " t8"), abs=1e-5)
    assert b[0] != a[0]  # different contexts, different scores: the test is not vacuous


def test_a_choice_the_model_prefers_gets_acc_1(tiny_model, tok):
    model = tiny_model()
    items = []
    for k, context in enumerate(["t5 t6", "t50 t51 t52", "t90", "t70 t3 t99 t12"]):
        logp = token_logprobs(model, tok, context)[3:]  # only ids the tokenizer has as words
        order = (logp.argsort(descending=True) + 3).tolist()
        best, worst = order[0], order[-3:]
        choices = [f" t{i}" for i in worst]
        choices.insert(k % 4, f" t{best}")
        items.append(ChoiceItem(context, tuple(choices), k % 4))
    score = evaluate.score_choices(model, tok, items, batch_size=3)
    assert score.acc == 1.0 and score.n_items == 4
    assert score.predictions == tuple(it.label for it in items)


def test_acc_norm_divides_by_characters_and_can_disagree_with_acc(tiny_model, tok):
    model = tiny_model()
    context = "t5 t6 t7"
    logp = token_logprobs(model, tok, context)
    short, long = range(3, 10), range(100, 128)  # " t5": 3 characters, " t100": 5 characters
    pairs = [(a, b) for a in short for b in long if logp[a] > logp[b] and logp[a] / 3 < logp[b] / 5]
    assert pairs, "no pair where the raw sum and the per-character score disagree"
    a, b = pairs[0]
    item = ChoiceItem(context, (f" t{a}", f" t{b}"), 0)
    score = evaluate.score_choices(model, tok, [item])
    assert score.predictions == (0,) and score.predictions_norm == (1,)
    assert score.acc == 1.0 and score.acc_norm == 0.0
    (raw,) = score.loglikelihoods
    assert raw[0] / 3 < raw[1] / 5


def test_token_ids_outside_the_vocab_are_refused(tiny_model):
    model, big = tiny_model(), tiny_tokenizer(vocab_size=200)
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        evaluate.choice_loglikelihoods(model, big, [ChoiceItem("t5", (" t150", " t6"), 0)])


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"context": "t5 t6", "choices": [" t7", " t8"], "label": 1}


@pytest.mark.parametrize("bad, message", [
    ({"context": "t5", "choices": [" t7", " t8"]}, "missing field.*label"),
    ({**GOOD, "choices": [" t7"]}, "at least 2 choices"),
    ({**GOOD, "label": 2}, "label 2 is out of range"),
    ({**GOOD, "label": -1}, "out of range"),
    ({**GOOD, "label": True}, "label must be an integer"),
    ({**GOOD, "choices": [" t7", 8]}, "every choice must be a string"),
    ({**GOOD, "context": 5}, "context must be a string"),
    ({**GOOD, "choices": " t7 t8"}, "choices must be a list"),
])
def test_bad_records_name_the_file_and_record(tmp_path, bad, message):
    path = write_jsonl(tmp_path / "items.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(ValueError, match=message) as err:
        evaluate.load_choice_items(path)
    assert str(path) in str(err.value) and "record 3" in str(err.value)


def test_broken_json_line_and_missing_or_empty_file(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"items.jsonl, line 2"):
        evaluate.load_choice_items(path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        evaluate.load_choice_items(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="no records"):
        evaluate.load_choice_items(tmp_path / "empty.jsonl")


def test_the_shipped_sample_follows_the_conventions():
    items = evaluate.load_choice_items(data.data_dir() / "eval" / "choice_sample.jsonl")
    assert len(items) == 24 and all(len(it.choices) == 4 for it in items)
    assert all(not it.context.endswith(" ") and all(c.startswith(" ") for c in it.choices) for it in items)
    assert {it.label for it in items} == {0, 1, 2, 3}


def test_python_reference_splits_are_disjoint_deterministic_and_complete():
    from pydoc_data.topics import topics

    train, heldout = (data.load_texts(data.REAL_TEXT, split=s) for s in data.SPLITS)
    assert data.REAL_TEXT == "python-reference" and train and heldout
    assert data.load_texts(data.REAL_TEXT, split="heldout") == heldout
    assert not set(train) & set(heldout) and len(set(train + heldout)) == len(train + heldout)
    assert set(train + heldout) == {text.strip() for text in topics.values()}  # every topic, each text once
    distinct = list(dict.fromkeys(topics[name].strip() for name in sorted(topics)))
    assert heldout == distinct[4::5] and len(heldout) == len(distinct) // 5
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        data.load_texts(data.REAL_TEXT, split="test")
