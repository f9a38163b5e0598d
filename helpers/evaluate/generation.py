"""Text from a model: batched generation with the chat template (greedy or seeded sampling)."""

from __future__ import annotations

import torch

from ..data import chat_prompt

__all__ = ["generate"]


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    max_new_tokens: int = 64,
    greedy: bool = True,
    temperature: float = 0.7,
    top_p: float = 0.9,
    seed: int = 0,
    chat: bool = True,
) -> list[str]:
    """Batched generation; returns only the new text of each prompt.

    ``chat=True`` wraps each prompt in the tokenizer's chat template (the teacher is an instruct model).
    ``greedy=False`` samples with ``temperature`` / ``top_p`` after seeding torch with ``seed``.
    """
    if not prompts:
        raise ValueError("prompts is empty")
    tokenizer.padding_side = "left"
    texts = [chat_prompt(tokenizer, p) if chat else p for p in prompts]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=not chat).to(model.device)
    torch.manual_seed(seed)
    sampling = {} if greedy else {"temperature": temperature, "top_p": top_p}
    out = model.generate(
        **enc, max_new_tokens=max_new_tokens, do_sample=not greedy, pad_token_id=tokenizer.pad_token_id, **sampling
    )
    return [t.strip() for t in tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)]
