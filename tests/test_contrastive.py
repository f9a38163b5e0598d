"""Contrastive distillation: sequence-level preference (DPO with the teacher as reference) and in-batch InfoNCE."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import distill as D
from helpers.distill import losses as L
from tests.test_models import tiny_tokenizer

PROMPTS = ["t5 t6 t7", "t8", "t9 t10", "t11 t12 t13"]


def test_sequence_logprobs_sum_the_scored_tokens():
    logits = torch.randn(2, 5, 11, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[-100, -100, 3, 4, 5], [-100, 7, 8, -100, -100]])
    logp = torch.log_softmax(logits, -1)
    by_hand = torch.stack([logp[0, 1, 3] + logp[0, 2, 4] + logp[0, 3, 5], logp[1, 0, 7] + logp[1, 1, 8]])
    torch.testing.assert_close(L.sequence_logprobs(logits, labels), by_hand)
    with pytest.raises(ValueError, match=r"\[B, S, V\]"):
        L.sequence_logprobs(logits, labels[:, :3])


def test_identical_chosen_and_rejected_give_the_neutral_value():
    s, t = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    assert L.preference_loss(s, s, t, t).item() == pytest.approx(math.log(2))
    assert torch.equal(L.preference_margin(s, s, t, t), torch.zeros(4, dtype=torch.float64))
    # a student that already prefers the teacher's answer more than the teacher does: below ln 2
    assert L.preference_loss(s + 1, s, t, t, beta=0.5).item() < math.log(2)
    with pytest.raises(ValueError, match="beta"):
        L.preference_loss(s, s, t, t, beta=0)


def test_preference_and_info_nce_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(1)
    sc, sr, tc, tr = (torch.randn(3, dtype=torch.float64, generator=g) for _ in range(4))
    sc.requires_grad_(True)
    sr.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: L.preference_loss(a, b, tc, tr, beta=0.3), (sc, sr))
    student = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    teacher = torch.randn(4, 6, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda x: L.info_nce(x, teacher, temperature=0.2), (student,))


def test_info_nce_limits():
    g = torch.Generator().manual_seed(0)
    batch = 8
    unrelated = L.info_nce(torch.randn(batch, 2048, generator=g), torch.randn(batch, 2048, generator=g))
    assert abs(unrelated.item() - math.log(batch)) < 0.15  # starts near ln(batch)
    same = torch.linalg.qr(torch.randn(64, batch, generator=g))[0].T  # [B, 64] orthonormal rows
    identical = L.info_nce(same, same, temperature=0.05)  # identity projections, student == teacher
    assert identical.item() < 1e-6
    assert L.retrieval_accuracy(same, same).item() == 1.0
    with pytest.raises(ValueError, match="B >= 2"):
        L.info_nce(same[:1], same[:1])


def test_masked_mean_pool():
    states = torch.arange(12.0).view(1, 4, 3)
    torch.testing.assert_close(L.masked_mean_pool(states, torch.tensor([[1, 1, 0, 0]])), states[:, :2].mean(1))


@pytest.fixture
def preference_rows():
    return D.preference_inputs(PROMPTS, ["t20 t21 t22"] * 4, ["t30 t31"] * 4, tiny_tokenizer(), max_length=10)


def _distill(tiny_model, rows, **config):
    cfg = D.DistillConfig(max_steps=config.pop("max_steps", 6), batch_size=config.pop("batch_size", 4),
                          learning_rate=1e-2, logging_steps=1, disable_tqdm=True, bf16=False, **config)
    return D.distill(tiny_model(seed=1), tiny_model(seed=0), rows, cfg)


def test_preference_distillation_raises_the_margin(tiny_model, preference_rows):
    result = _distill(tiny_model, preference_rows, preference_weight=1.0, preference_beta=0.5)
    margins = [row["margin"] for row in result.history if "margin" in row]
    assert len(margins) == 6 and margins[-1] > margins[0]
    assert all("preference" in row for row in result.history if "loss" in row)
    assert result.tokens_seen == 6 * int(preference_rows["attention_mask"].sum())  # the chosen rows' real tokens


def test_info_nce_term_trains_and_retrieval_is_logged(tiny_model, preference_rows):
    rows = {k: v for k, v in preference_rows.items() if not k.startswith("rejected_")}
    result = _distill(tiny_model, rows, contrastive_weight=1.0, contrastive_temperature=0.1, max_steps=8)
    logged = [row for row in result.history if "contrastive" in row]
    assert len(logged) == 8 and logged[-1]["contrastive"] < logged[0]["contrastive"]
    assert all(0.0 <= row["retrieval"] <= 1.0 for row in logged)
    assert "contrastive_projection.proj.0.weight" in "".join(result.projections)


@pytest.mark.parametrize("change, match", [
    (dict(contrastive_weight=1.0, batch_size=1), "batch_size"),
    (dict(loss="ce", preference_weight=1.0), "KD loss"),
    (dict(preference_beta=0.0), "preference_beta"),
])
def test_bad_contrastive_configs(change, match):
    with pytest.raises(ValueError, match=match):
        D.DistillConfig(**change)


def test_preference_rows_and_weight_go_together(tiny_model, preference_rows):
    chosen_only = {k: v for k, v in preference_rows.items() if not k.startswith("rejected_")}
    with pytest.raises(ValueError, match="needs preference rows"):
        _distill(tiny_model, chosen_only, preference_weight=1.0)
    with pytest.raises(ValueError, match="preference_weight is 0"):
        _distill(tiny_model, preference_rows)
