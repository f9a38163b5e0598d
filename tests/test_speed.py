"""Inference speed: ``measure_speed`` on one model, ``compare_speed`` interleaving several in one run."""

from __future__ import annotations

import pytest

from helpers import evaluate as E

SMALL = dict(prompt_tokens=8, new_tokens=4, repeats=3, progress=False)


def _record_runs(models: dict, prompt_tokens: int) -> list[str]:
    """Hooks that append a model's name each time it starts a run (a prefill of ``prompt_tokens`` ids)."""
    order: list[str] = []
    for name, model in models.items():
        def hook(module, args, kwargs, name=name):
            if kwargs["input_ids"].shape[1] == prompt_tokens:
                order.append(name)
        model.register_forward_pre_hook(hook, with_kwargs=True)
    return order


def test_compare_speed_reports_every_model(tiny_model):
    models = {"deep": tiny_model(), "shallow": tiny_model(num_hidden_layers=2)}
    speeds = E.compare_speed(models, **SMALL)
    assert list(speeds) == ["deep", "shallow"]
    for s in speeds.values():
        assert isinstance(s, E.Speed) and (s.prompt_tokens, s.new_tokens) == (8, 4)
        assert min(s.prefill_tokens_per_s, s.decode_tokens_per_s, s.first_token_latency_s,
                   s.per_token_latency_ms, s.peak_memory_mib) > 0
        assert s.added_memory_mib >= 0 and s.added_memory_mib <= s.peak_memory_mib


def test_compare_speed_interleaves_and_rotates(tiny_model):
    models = {"a": tiny_model(), "b": tiny_model(num_hidden_layers=2), "c": tiny_model(num_hidden_layers=1)}
    order = _record_runs(models, prompt_tokens=8)
    E.compare_speed(models, **SMALL)
    warm_up, rounds = order[:3], [order[3:6], order[6:9], order[9:12]]
    assert len(order) == 12 and warm_up == ["a", "b", "c"]
    assert rounds == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]  # each model goes first once


@pytest.mark.parametrize("bad, match", [
    (dict(models={}), "non-empty"),
    (dict(repeats=0), "repeats=0"),
    (dict(prompt_tokens=0), "prompt_tokens=0"),
    (dict(new_tokens=0), "new_tokens=0"),
])
def test_compare_speed_refuses_bad_input_before_any_forward(tiny_model, bad, match):
    models = {"a": tiny_model(), "b": tiny_model(num_hidden_layers=2)}
    order = _record_runs(models, prompt_tokens=8)
    calls: list[int] = []
    for model in models.values():
        model.register_forward_pre_hook(lambda *a: calls.append(1))
    kwargs = SMALL | {"models": models} | bad
    with pytest.raises(ValueError, match=match):
        E.compare_speed(**kwargs)
    assert not calls and not order


def test_compare_speed_refuses_a_non_model():
    with pytest.raises(TypeError, match="models\\['x'\\]"):
        E.compare_speed({"x": "not a model"}, **SMALL)


def test_measure_speed_still_returns_a_speed(tiny_model):
    model = tiny_model()
    order = _record_runs({"m": model}, prompt_tokens=8)
    s = E.measure_speed(model, prompt_tokens=8, new_tokens=4, repeats=3)
    assert isinstance(s, E.Speed) and len(order) == 4  # one warm-up + 3 timed runs
    assert s.prefill_tokens_per_s > 0 and s.decode_tokens_per_s > 0 and s.peak_memory_mib > 0
    assert s.first_token_latency_s == pytest.approx(8 / s.prefill_tokens_per_s)
    assert s.per_token_latency_ms == pytest.approx(1000 / s.decode_tokens_per_s)
    with pytest.raises(ValueError, match="repeats=0"):
        E.measure_speed(model, prompt_tokens=8, new_tokens=4, repeats=0)
