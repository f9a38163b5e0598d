"""Perplexity protocol, generation and speed/memory on tiny models."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import evaluate as E
from tests.test_models import tiny_tokenizer


def test_perplexity_matches_hand_computation(tiny_model):
    model = tiny_model()
    blocks = torch.randint(3, 128, (3, 10), generator=torch.Generator().manual_seed(0))
    res = E.perplexity(model, blocks, batch_size=2, use_autocast=False)
    with torch.no_grad():
        logp = torch.log_softmax(model(blocks).logits[:, :-1], -1)
    nll = -logp.gather(-1, blocks[:, 1:, None]).mean().item()
    assert res.n_tokens == 27 and res.n_windows == 3 and res.window == 10
    assert math.isclose(res.nll, nll, rel_tol=1e-5) and math.isclose(res.ppl, math.exp(nll), rel_tol=1e-5)
    # a random model on a 128-token vocabulary is close to uniform
    assert 60 < res.ppl < 300
    with pytest.raises(ValueError, match="blocks must be"):
        E.perplexity(model, blocks[0])


def test_perplexity_scores_only_labelled_tokens(tiny_model):
    model = tiny_model()
    blocks = torch.randint(3, 128, (2, 10), generator=torch.Generator().manual_seed(1))
    labels = blocks.clone()
    labels[:, :4] = -100  # a "prompt": context only
    res = E.perplexity(model, blocks, batch_size=1, use_autocast=False, labels=labels)
    with torch.no_grad():
        logp = torch.log_softmax(model(blocks).logits[:, :-1], -1).gather(-1, blocks[:, 1:, None])[..., 0]
    nll = -logp[:, 3:].mean().item()  # positions predicting tokens 4..9
    assert res.n_tokens == 12 and math.isclose(res.nll, nll, rel_tol=1e-5)
    assert math.isclose(E.perplexity(model, blocks, use_autocast=False, labels=blocks).nll,
                        E.perplexity(model, blocks, use_autocast=False).nll, rel_tol=1e-6)
    with pytest.raises(ValueError, match="shape of blocks"):
        E.perplexity(model, blocks, labels=labels[:, :5])
    with pytest.raises(ValueError, match="No token"):
        E.perplexity(model, blocks, labels=torch.full_like(blocks, -100))


def test_generate_returns_new_text_only(tiny_model):
    model, tok = tiny_model(), tiny_tokenizer()
    outs = E.generate(model, tok, ["t5 t6", "t7"], max_new_tokens=4)
    assert len(outs) == 2 and all(isinstance(o, str) for o in outs)
    again = E.generate(model, tok, ["t5 t6", "t7"], max_new_tokens=4)
    assert outs == again  # greedy is deterministic
    assert all(len(tok(o, add_special_tokens=False)["input_ids"]) <= 4 for o in outs)


def test_speed_and_peak_memory(tiny_model):
    s = E.measure_speed(tiny_model(), prompt_tokens=16, new_tokens=4, repeats=1)
    assert s.prefill_tokens_per_s > 0 and s.decode_tokens_per_s > 0 and s.peak_memory_mib > 0
    with E.PeakMemory() as mem:
        x = torch.ones(64, 2**20)  # 256 MiB
        x += 1
    assert mem.added_mib > 100
