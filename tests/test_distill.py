"""The distillation trainer (helpers/distill/) on tiny random Llama models: learning, exact resume,
determinism, reloadable checkpoints, refusal of bad configs, NaN handling."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from helpers import distill as D
from helpers.distill import PROJECTIONS_FILE, DistillTrainer, hidden_similarity, match_hidden_channels, teacher_agreement
from helpers.hardware import cpu_has_fast_bf16
from helpers.distill import losses as L
from helpers.distill.losses import forward_kl
from helpers.models import load_recipe




VOCAB, BLOCK = 128, 32


def tiny_config(layers: int = 4, hidden: int = 64, vocab: int = VOCAB) -> LlamaConfig:
    return LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       intermediate_size=128, vocab_size=vocab, tie_word_embeddings=True,
                       max_position_embeddings=BLOCK)


@pytest.fixture(scope="module")
def teacher() -> LlamaForCausalLM:
    torch.manual_seed(0)
    return LlamaForCausalLM(tiny_config()).eval()


@pytest.fixture(scope="module")
def student(teacher) -> LlamaForCausalLM:
    """A depth-pruned teacher (layers 0 and 3 kept), perturbed: tied embeddings, 2 layers."""
    torch.manual_seed(1)
    model = LlamaForCausalLM(tiny_config(layers=2))
    state = {k.replace("layers.3.", "layers.1."): v for k, v in teacher.state_dict().items()
             if "layers.1." not in k and "layers.2." not in k}
    model.load_state_dict(state, strict=False)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def blocks() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    pattern = torch.randint(0, VOCAB, (8,), generator=g)
    repeated = pattern.repeat(BLOCK // 8)  # a learnable repeated pattern ...
    random = torch.randint(0, VOCAB, (8, BLOCK), generator=g)  # ... mixed with random blocks
    return torch.cat([repeated.expand(8, BLOCK), random])  # [16, 32]


def config(**overrides) -> D.DistillConfig:
    base = dict(max_steps=6, batch_size=4, learning_rate=5e-3, logging_steps=1, disable_tqdm=True, bf16=False, seed=0)
    return D.DistillConfig(**{**base, **overrides})


def kd_value(student, teacher, blocks) -> float:
    with torch.no_grad():
        return forward_kl(student(blocks).logits, teacher(blocks).logits).item()


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(VOCAB)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", pad_token="t1", eos_token="t2")


# ----------------------------------------------------------------------------------------------------
# Layer maps


def test_layer_maps():
    assert D.uniform_layer_map(4, 4) == [(0, 0), (1, 1), (2, 2), (3, 3)]
    m = D.uniform_layer_map(20, 30)
    assert m[0] == (0, 0) and m[-1] == (19, 29) and all(b[1] > a[1] for a, b in zip(m, m[1:]))
    assert D.uniform_layer_map(2, 4) == [(0, 1), (1, 3)]
    assert D.last_k_layer_map(20, 30, 3) == [(17, 27), (18, 28), (19, 29)]
    with pytest.raises(ValueError, match="last_k"):
        D.last_k_layer_map(2, 4, 3)
    fig = D.plot_layer_map(m, 20, 30)
    assert fig.axes and len(fig.axes[0].lines) == 20


# ----------------------------------------------------------------------------------------------------
# Training


def test_distillation_lowers_the_kd_loss_and_leaves_inputs_untouched(student, teacher, blocks):
    before_s, before_t = weights(student), weights(teacher)
    flags = [p.requires_grad for p in teacher.parameters()]
    result = D.distill(student, teacher, blocks, config(max_steps=8, eval_steps=3), eval_blocks=blocks[:4])
    assert kd_value(result.student, teacher, blocks) < 0.8 * kd_value(student, teacher, blocks)
    assert result.student is not student
    assert_same_weights(weights(student), before_s)
    assert_same_weights(weights(teacher), before_t)
    assert [p.requires_grad for p in teacher.parameters()] == flags and not teacher.training
    train_rows = [r for r in result.history if "loss" in r]
    assert [r["step"] for r in train_rows] == list(range(1, 9)) and "kd" in train_rows[0] and "lr" in train_rows[0]
    assert result.tokens_seen == 8 * 4 * BLOCK == train_rows[-1]["tokens_seen"]
    evals = [r for r in result.history if "eval_ppl" in r]
    assert [r["step"] for r in evals] == [0, 3, 6, 8] and evals[-1]["eval_ppl"] < evals[0]["eval_ppl"]
    assert result.metrics["eval_ppl"] == evals[-1]["eval_ppl"]


def test_eval_at_start_can_be_skipped(student, teacher, blocks):
    result = D.distill(student, teacher, blocks, config(max_steps=4, eval_steps=2, eval_at_start=False),
                       eval_blocks=blocks[:2])
    assert [r["step"] for r in result.history if "eval_ppl" in r] == [2, 4]


def test_intermediate_losses_with_a_narrower_student(teacher, blocks):
    torch.manual_seed(2)
    narrow = LlamaForCausalLM(tiny_config(layers=2, hidden=32))
    cfg = config(hidden_loss="nmse", layer_map="last_k", last_k=2, embedding_weight=0.5, max_steps=3)
    result = D.distill(narrow, teacher, blocks, cfg)
    assert result.layer_map == [(0, 2), (1, 3)]
    assert result.projections["layer_projection.proj.1.weight"].shape == (64, 32)
    row = [r for r in result.history if "loss" in r][-1]
    assert {"kd", "hidden", "embedding", "alpha"} <= row.keys()
    # dynamic alpha: alpha * (hidden + 0.5 * embedding) equals the KD term, so the loss is twice the KD term
    assert row["loss"] == pytest.approx(2 * row["kd"], rel=1e-4)


def test_kept_channels_recovered_and_used_as_projection_init(teacher, blocks):
    kept = torch.randperm(64, generator=torch.Generator().manual_seed(3))[:32].sort().values
    narrow = LlamaForCausalLM(tiny_config(layers=4, hidden=32))
    with torch.no_grad():  # a hidden-pruned copy of the teacher's embedding (the rest stays random)
        narrow.model.embed_tokens.weight.copy_(teacher.model.embed_tokens.weight[:, kept])
    assert match_hidden_channels(narrow, teacher) == kept.tolist()
    assert match_hidden_channels(LlamaForCausalLM(tiny_config(hidden=32)), teacher) is None
    # selection-matrix init: with a tiny LR the projection stays (almost) the selection matrix
    cfg = config(hidden_loss="cosine", layer_map="last_k", last_k=2, max_steps=1, learning_rate=1e-8,
                 kept_channels=kept.tolist())
    result = D.distill(narrow, teacher, blocks, cfg)
    selection = torch.zeros(64, 32)
    selection[kept, torch.arange(32)] = 1.0
    assert torch.allclose(result.projections["layer_projection.proj.0.weight"], selection, atol=1e-5)
    sims = hidden_similarity(result.student, teacher, blocks[:2], result.layer_map, result.projections)
    by_selection = hidden_similarity(result.student, teacher, blocks[:2], result.layer_map, kept_channels=kept.tolist())
    assert len(sims) == 2 and sims == pytest.approx(by_selection, abs=1e-4)
    with pytest.raises(ValueError, match="kept_channels"):
        D.distill(narrow, teacher, blocks, config(hidden_loss="cosine", kept_channels=list(range(16))))


def test_teacher_agreement(student, teacher, blocks):
    same = teacher_agreement(teacher, teacher, blocks[:3], use_autocast=False)
    assert same["forward_kl"] == pytest.approx(0.0, abs=1e-6) and same["top1_agreement"] == 1.0
    other = teacher_agreement(student, teacher, blocks[:3], use_autocast=False)
    with torch.no_grad():  # every position but the last (it predicts nothing in the block)
        expected = forward_kl(student(blocks[:3]).logits[:, :-1], teacher(blocks[:3]).logits[:, :-1]).item()
    assert other["forward_kl"] == pytest.approx(expected, rel=1e-4)
    assert 0.0 <= other["top1_agreement"] < 1.0


def test_hidden_similarity_of_the_teacher_itself_is_one(teacher, blocks):
    sims = hidden_similarity(teacher, teacher, blocks[:2], D.uniform_layer_map(4, 4))
    assert sims == pytest.approx([1.0] * 4, abs=1e-5)


def test_same_seed_same_weights(student, teacher, blocks):
    cfg = config(hidden_loss="cosine", max_steps=4)
    a, b = (D.distill(student, teacher, blocks, cfg) for _ in range(2))
    assert_same_weights(weights(a.student), weights(b.student))
    assert a.projections.keys() == b.projections.keys()
    c = D.distill(student, teacher, blocks, config(hidden_loss="cosine", max_steps=4, seed=1))
    assert not torch.equal(weights(a.student)["lm_head.weight"], weights(c.student)["lm_head.weight"])


def test_resume_from_checkpoint_is_exact(student, teacher, blocks, tmp_path):
    # tied embeddings + projections: the case where a naive safetensors save of the wrapper breaks
    cfg = dict(hidden_loss="cosine", embedding_weight=1.0, max_steps=6, save_steps=3, output_dir=str(tmp_path / "a"))
    full = D.distill(student, teacher, blocks, config(**cfg), tokenizer=tiny_tokenizer())
    checkpoint = tmp_path / "a" / "checkpoint-3"
    assert (checkpoint / PROJECTIONS_FILE).is_file() and (checkpoint / "optimizer.pt").is_file()
    # a freshly initialised student: everything must come from the checkpoint
    stranger = LlamaForCausalLM(tiny_config(layers=2))
    resumed = D.distill(stranger, teacher, blocks,
                        config(**{**cfg, "output_dir": str(tmp_path / "b"), "resume_from_checkpoint": str(checkpoint)}))
    assert_same_weights(weights(resumed.student), weights(full.student))
    for k in full.projections:
        assert torch.equal(resumed.projections[k], full.projections[k])
    assert resumed.tokens_seen == full.tokens_seen
    assert [r["step"] for r in resumed.history if "loss" in r] == list(range(1, 7))


def test_distilled_checkpoint_reloads_with_stock_transformers(student, teacher, blocks, tmp_path):
    pruned = copy.deepcopy(student)
    pruned.workbook_steps = [{"method": "pruned-in-test"}]  # what helpers.pruning records
    result = D.distill(pruned, teacher, blocks, config(max_steps=2), eval_blocks=blocks[:2])
    dest = D.save_distilled(result, tiny_tokenizer(), tmp_path / "distilled", parent="tiny-teacher",
                            recipe_extra={"note": "test"})
    reloaded = AutoModelForCausalLM.from_pretrained(dest).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(blocks[:2]).logits, result.student(blocks[:2]).logits)
    assert reloaded.lm_head.weight is reloaded.model.embed_tokens.weight
    recipe = load_recipe(dest)
    assert recipe["parent"] == "tiny-teacher" and recipe["note"] == "test"
    assert recipe["steps"][-1]["method"] == "distill" and recipe["steps"][-1]["config"]["loss"] == "forward_kl"
    assert recipe["steps"][0] == {"method": "pruned-in-test"}  # the student's earlier lineage is kept
    assert recipe["tokens_seen"] == 2 * 4 * BLOCK and "eval_ppl" in recipe["metrics"]


@pytest.mark.parametrize("overrides", [
    dict(loss="reverse_kl", temperature=2.0),
    dict(loss="jsd", jsd_beta=0.3, top_k=16),
    dict(loss="forward_kl", top_k=8, renormalize_student=False, ce_weight=0.1, grad_accum=2),
])
def test_loss_variants_train(student, teacher, blocks, overrides):
    result = D.distill(student, teacher, blocks, config(max_steps=2, **overrides))
    rows = [r for r in result.history if "loss" in r]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)


def test_teacher_temperature_sharpens_the_target(student, teacher, blocks):
    """The first step's KD loss is forward KL to softmax(z_t / T_t): checked by hand on one batch of all blocks."""
    n = len(blocks)
    result = D.distill(student, teacher, blocks, config(max_steps=1, batch_size=n, teacher_temperature=0.5))
    with torch.no_grad():
        want = L.forward_kl(student(blocks).logits, teacher(blocks).logits / 0.5, labels=L.shift_labels(blocks))
    logged = [r for r in result.history if "loss" in r][0]["kd"]
    assert logged == pytest.approx(want.item(), rel=1e-4)


def test_ce_baseline_needs_no_teacher(student, blocks):
    result = D.distill(student, None, blocks, config(loss="ce", max_steps=4))
    rows = [r for r in result.history if "loss" in r]
    assert "ce" in rows[0] and "kd" not in rows[0]


def test_padded_and_labelled_inputs(student, teacher, blocks):
    """The SDG case: padding (attention_mask 0) and prompt tokens ignored with labels -100."""
    attention_mask = torch.ones_like(blocks)
    attention_mask[:, -4:] = 0
    labels = blocks.masked_fill(attention_mask == 0, -100)
    labels[:, :8] = -100
    data = {"input_ids": blocks, "attention_mask": attention_mask, "labels": labels}
    result = D.distill(student, teacher, data, config(max_steps=2, ce_weight=0.5))
    assert result.tokens_seen == 2 * 4 * (BLOCK - 4)  # non-padding tokens


@pytest.mark.skipif(not cpu_has_fast_bf16(), reason="CPU without native bf16")
def test_bf16_autocast_and_bf16_teacher(student, teacher, blocks):
    result = D.distill(student, teacher, blocks, config(max_steps=2, bf16=True, teacher_bf16=True))
    assert next(teacher.parameters()).dtype == torch.float32  # the user's teacher stays fp32
    assert next(result.student.parameters()).dtype == torch.float32  # fp32 master weights
    rows = [r for r in result.history if "loss" in r]
    fp32 = D.distill(student, teacher, blocks, config(max_steps=2))
    assert rows[0]["kd"] == pytest.approx([r for r in fp32.history if "loss" in r][0]["kd"], rel=0.05, abs=1e-3)


# ----------------------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("overrides, match", [
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(teacher_temperature=0.0), "teacher_temperature"),
    (dict(loss="kl"), "forward_kl"),
    (dict(jsd_beta=2.0), "beta"),
    (dict(hidden_loss="l1"), "cosine"),
    (dict(loss="ce", hidden_loss="mse"), "teacher"),
    (dict(save_steps=2), "output_dir"),
])
def test_bad_configs_are_refused(overrides, match):
    with pytest.raises(ValueError, match=match):
        config(**overrides)


@pytest.fixture
def no_training(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("training started before validation")
    monkeypatch.setattr(DistillTrainer, "train", fail)


def test_layer_map_out_of_range_refused_before_training(student, teacher, blocks, no_training):
    with pytest.raises(ValueError, match="out of range"):
        D.distill(student, teacher, blocks, config(hidden_loss="mse", layer_map=[(0, 0), (2, 3)]))
    with pytest.raises(ValueError, match="last_k"):
        D.distill(student, teacher, blocks, config(hidden_loss="mse", layer_map="last_k", last_k=3))


def test_vocabulary_mismatch_refused_before_training(teacher, blocks, no_training):
    other = LlamaForCausalLM(tiny_config(layers=2, vocab=VOCAB + 64))
    with pytest.raises(ValueError, match="vocabularies differ"):
        D.distill(other, teacher, blocks, config())
    renamed = tiny_tokenizer()
    renamed.add_tokens(["extra"])
    with pytest.raises(ValueError, match="tokenizers"):
        D.validate(other, other, config(), tiny_tokenizer(), PreTrainedTokenizerFast(
            tokenizer_object=renamed.backend_tokenizer, unk_token="t0"))


def test_bad_data_refused_before_training(student, teacher, blocks, no_training):
    with pytest.raises(ValueError, match="LongTensor"):
        D.distill(student, teacher, blocks.float(), config())
    with pytest.raises(ValueError, match="vocabulary"):
        D.distill(student, teacher, blocks + VOCAB, config())


def test_nan_loss_stops_with_the_step(student, teacher, blocks):
    broken = copy.deepcopy(teacher)
    with torch.no_grad():
        broken.model.layers[0].mlp.down_proj.weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="step 1"):
        D.distill(student, broken, blocks, config())


def test_trainer_private_hooks_still_exist():
    """DistillTrainer overrides Trainer._save and _load_from_checkpoint (no public hook saves a module with tied
    weights as a stock checkpoint). If a transformers upgrade renames them or changes their arguments, this fails
    first; test_resume_from_checkpoint_is_exact checks that they are still called."""
    import inspect

    from transformers import Trainer

    assert list(inspect.signature(Trainer._save).parameters) == ["self", "output_dir", "state_dict"]
    assert list(inspect.signature(Trainer._load_from_checkpoint).parameters) == ["self", "resume_from_checkpoint",
                                                                                 "model"]
    assert "self._save(" in inspect.getsource(Trainer.save_model)
    assert "self._load_from_checkpoint(" in inspect.getsource(Trainer.train) + inspect.getsource(
        Trainer._inner_training_loop)


def test_final_eval_carries_the_windows_for_bands(student, teacher, blocks):
    result = D.distill(student, teacher, blocks, config(max_steps=2), eval_blocks=blocks[:3])
    assert result.final_eval.ppl == result.metrics["eval_ppl"] and len(result.final_eval.window_nll) == 3
    assert D.distill(student, teacher, blocks, config(max_steps=1)).final_eval is None
