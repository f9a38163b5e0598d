"""Shared fixtures: tiny random Llama-style models (fast, exact) and a tiny tokenizer-free setup."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

os.environ.setdefault("HF_HUB_OFFLINE", "1")

FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM),
    "mistral": (MistralConfig, MistralForCausalLM),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
}


def make_tiny(family: str = "llama", seed: int = 0, **overrides):
    """A seeded random model: hidden 64, 4 layers, 8 heads / 4 KV heads, head_dim 8, MLP 128, vocab 128."""
    config_cls, model_cls = FAMILIES[family]
    kwargs = dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=4,
        head_dim=8,
        vocab_size=128,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    model = model_cls(config_cls(**kwargs)).eval()
    with torch.no_grad():  # non-trivial norm weights and biases, so tests catch misplaced channels
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture
def tiny_model():
    """Factory fixture: ``tiny_model(family="llama", seed=0, **config_overrides)``."""
    return make_tiny


@pytest.fixture
def tiny_batches():
    """Three seeded batches of random token ids, ``[2, 16]`` each."""
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, 128, (2, 16), generator=g) for _ in range(3)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: thread hand-offs cost far more than they save (100x on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
