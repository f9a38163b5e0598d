"""Unstructured and N:M sparsity: exact sparsity, Wanda by hand, masks kept through training, sparse export."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import distill as D
from helpers.models import save_model
from helpers.pruning import sparsity as S
from tests.test_models import tiny_tokenizer


def test_masks_hit_the_requested_sparsity_exactly(tiny_model):
    model = tiny_model()
    per_layer = S.magnitude_masks(model, 0.3)
    assert len(per_layer) == 4 * 7
    for name, mask in per_layer.items():
        assert int((~mask).sum()) == round(0.3 * mask.numel()), name
    global_ = S.magnitude_masks(model, 0.5, scope="global")
    total = sum(m.numel() for m in global_.values())
    assert int(sum((~m).sum() for m in global_.values())) == round(0.5 * total)
    assert len({round(float((~m).float().mean()), 3) for m in global_.values()}) > 1  # unequal per matrix
    masks = S.nm_masks(model, 2, 4)
    for mask in masks.values():
        assert torch.equal(mask.view(mask.shape[0], -1, 4).sum(-1), torch.full((mask.shape[0], mask.shape[1] // 4), 2))
    kept = S.magnitude_masks(model, 0.3)["model.layers.0.mlp.up_proj"]
    w = model.model.layers[0].mlp.up_proj.weight.abs()
    assert w[kept].min() >= w[~kept].max()  # the smallest magnitudes go


def test_wanda_scores_match_a_hand_computation(tiny_model, tiny_batches):
    model = tiny_model()
    captured = []
    layer = model.model.layers[1].mlp.down_proj
    handle = layer.register_forward_pre_hook(lambda mod, args: captured.append(args[0].detach().flatten(0, 1)))
    with torch.no_grad():
        for ids in tiny_batches:
            model(input_ids=ids)
    handle.remove()
    x = torch.cat(captured)  # [tokens, in_features]
    by_hand = layer.weight.detach().abs() * x.norm(dim=0)[None, :]
    scores = S.wanda_scores(model, tiny_batches)["model.layers.1.mlp.down_proj"]
    torch.testing.assert_close(scores, by_hand, rtol=1e-5, atol=1e-6)
    mask = S.wanda_masks(model, tiny_batches, 0.5)["model.layers.1.mlp.down_proj"]
    assert torch.equal((~mask).sum(1), torch.full((mask.shape[0],), mask.shape[1] // 2))  # per output row
    row = scores[0]
    assert row[mask[0]].min() >= row[~mask[0]].max()


def test_masked_weights_stay_zero_through_distillation(tiny_model):
    teacher, student = tiny_model(seed=0), tiny_model(seed=1)
    masks = S.magnitude_masks(student, 0.5)
    sparse = S.apply_masks(student, masks)
    assert S.sparsity_report(student)["total"] < 0.01  # the input is unchanged
    blocks = torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    cfg = D.DistillConfig(max_steps=4, batch_size=2, learning_rate=1e-2, disable_tqdm=True, bf16=False)
    trained = D.distill(sparse, teacher, blocks, cfg, callbacks=[S.MaskKeeper(masks)]).student
    report = S.sparsity_report(trained)
    assert report["total"] == pytest.approx(0.5, abs=1e-3)
    for name, module in S.linear_weights(trained).items():
        assert torch.all(module.weight[~masks[name]] == 0), name
    unkept = D.distill(sparse, teacher, blocks, cfg).student  # without the keeper the zeros fill in
    assert S.sparsity_report(unkept)["total"] < 0.1


def test_sparse_export_reloads_with_the_same_logits_and_zeros(tiny_model, tmp_path):
    model = tiny_model()
    sparse = S.apply_masks(model, S.nm_masks(model, 2, 4))
    report = S.sparsity_report(sparse)
    path = save_model(sparse, tiny_tokenizer(), tmp_path / "sparse", {"parent": "tiny", "steps": [
        {"method": "sparsity", "pattern": "2:4", "sparsity": report["total"]}]})
    back = AutoModelForCausalLM.from_pretrained(path)
    ids = torch.randint(3, 128, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(back(ids).logits, sparse(ids).logits)
    assert S.sparsity_report(back) == report and report["total"] == pytest.approx(0.5)


@pytest.mark.parametrize("call, match", [
    (lambda m: S.magnitude_masks(m, 1.0), "sparsity"),
    (lambda m: S.magnitude_masks(m, -0.1), "sparsity"),
    (lambda m: S.magnitude_masks(m, 0.5, scope="row"), "scope"),
    (lambda m: S.nm_masks(m, 4, 2), "0 < n < m"),
    (lambda m: S.nm_masks(m, 2, 5), "not a multiple of m=5"),
])
def test_bad_sparsity_values_fail_clearly(tiny_model, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model())


def test_imp_rounds_prune_the_survivors_and_random_masks_match_the_counts(tiny_model):
    model = tiny_model()
    full = {n: torch.ones_like(m.weight, dtype=torch.bool) for n, m in S.linear_weights(model).items()}
    first = S.imp_masks(model, full, 0.2)
    second = S.imp_masks(model, first, 0.2)
    total = sum(m.numel() for m in full.values())
    kept1, kept2 = (sum(int(m.sum()) for m in ms.values()) for ms in (first, second))
    assert kept1 == pytest.approx(0.8 * total, abs=2) and kept2 == pytest.approx(0.64 * total, abs=2)
    assert all(torch.equal(second[n] & ~first[n], torch.zeros_like(first[n])) for n in first)  # nothing revives
    shuffled = S.random_masks_like(second, seed=1)
    assert all(int(shuffled[n].sum()) == int(second[n].sum()) for n in second)
    assert any(not torch.equal(shuffled[n], second[n]) for n in second)


def test_lottery_tickets_train_every_kind_at_growing_sparsity(tiny_model):
    from helpers import recipes as R

    teacher = tiny_model()
    small = R.small_model(teacher.config, seed=0, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                          num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    assert small.config.vocab_size == teacher.config.vocab_size and small.config.hidden_size == 32
    blocks = torch.randint(3, 128, (16, 16), generator=torch.Generator().manual_seed(0))
    results = R.lottery_tickets(small, blocks, blocks[:4], steps=4, rounds=2, rate=0.5, rewind_step=1, batch_size=4)
    assert [(r.kind, r.round) for r in results] == [("dense", 0)] + [(k, r) for r in (1, 2) for k in R.TICKET_KINDS]
    by = {(r.kind, r.round): r for r in results}
    for kind in R.TICKET_KINDS:
        assert by[(kind, 1)].sparsity == pytest.approx(0.5, abs=0.02) and by[(kind, 2)].sparsity == pytest.approx(0.75, abs=0.02)
    assert all(r.eval.n_windows == 4 for r in results)
    # equal training for all: the rewound starts (theta_1) train 3 more steps on the batches after the first
    assert {r.tokens_seen for r in results} == {4 * 4 * 16}  # 4 steps x 4 rows of 16 tokens, for every model
    with pytest.raises(ValueError, match="rewind_step"):
        R.lottery_tickets(small, blocks, blocks[:4], steps=4, rounds=1, rewind_step=4)
