"""The teacher's importance is measured once per inputs and reused bit-identically."""

from __future__ import annotations

import pytest
import torch

from helpers import recipes as R
from helpers.importance import estimate_importance
from helpers.pruning import prune_width
from tests.conftest import make_tiny


@pytest.fixture
def counted(monkeypatch, tmp_path):
    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path / "runs"))
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return estimate_importance(*args, **kwargs)

    monkeypatch.setattr("helpers.recipes.scores.estimate_importance", counting)
    return calls


def _batches(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 128, (2, 16), generator=g) for _ in range(2)]


def test_the_second_call_loads_the_same_scores(counted):
    model = make_tiny()
    first = R.cached_importance(model, _batches(0), "teacher")
    again = R.cached_importance(model, _batches(0), "teacher")
    assert len(counted) == 1 and R.importance_path(model, _batches(0), "teacher").is_file()
    for field in ("heads", "head_gram", "neurons", "channels"):
        torch.testing.assert_close(getattr(again, field), getattr(first, field), rtol=0, atol=0)
    sizes = dict(hidden_size=48, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    a, b = prune_width(model, first, **sizes), prune_width(model, again, **sizes)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_other_inputs_are_measured_anew(counted):
    model = make_tiny()
    R.cached_importance(model, _batches(0), "teacher")
    R.cached_importance(model, _batches(1), "teacher")  # other tokens
    R.cached_importance(model, _batches(0), "teacher", head_score="input")  # other options
    R.cached_importance(make_tiny(intermediate_size=96), _batches(0), "teacher")  # other sizes
    assert len(counted) == 4


def test_a_damaged_file_is_measured_again(counted, capsys):
    model = make_tiny()
    R.cached_importance(model, _batches(0), "teacher")
    R.importance_path(model, _batches(0), "teacher").write_bytes(b"not safetensors")
    R.cached_importance(model, _batches(0), "teacher")
    assert len(counted) == 2 and "could not be read" in capsys.readouterr().out
    R.cached_importance(model, _batches(0), "teacher")
    assert len(counted) == 2  # the replaced file is good again
