"""The shared distillation figures build from run histories without error and draw what they are given."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from helpers import distill as plots  # noqa: E402
from helpers.workbook import plot_bars  # noqa: E402

HISTORIES = {
    "ce": [{"step": 1, "tokens_seen": 100, "loss": 3.0, "ce": 3.0}, {"step": 2, "tokens_seen": 200, "loss": 2.5,
                                                                        "ce": 2.5, "eval_ppl": 40.0}],
    "kd": [{"step": 1, "tokens_seen": 100, "loss": 1.0, "kd": 1.0}, {"step": 2, "tokens_seen": 200, "loss": 0.8,
                                                                        "kd": 0.8, "eval_ppl": 30.0}],
}


def test_curves_and_bars():
    fig = plots.plot_loss_curves(HISTORIES, keys=("loss", "kd", "ce"))
    assert len(fig.axes) == 3 and len(fig.axes[1].lines) == 1  # only the KD run has "kd"
    fig = plots.plot_ppl_vs_tokens(HISTORIES, references={"teacher": 8.0, "pruned": 900.0})
    assert len(fig.axes[0].lines) == 2 + 2
    fig = plot_bars({"pruned": 900.0, "kd": 30.0}, references={"teacher": 8.0})
    assert len(fig.axes[0].patches) == 2


def test_temperature_projection_similarity():
    logits = torch.randn(50)
    fig = plots.plot_temperature(logits, [0.5, 1.0, 2.0], top=5)
    entropies = fig.axes[1].lines[0].get_ydata()
    assert list(entropies) == sorted(entropies)  # entropy grows with temperature
    w0 = torch.zeros(8, 4)
    w0[torch.arange(4), torch.arange(4)] = 1.0
    fig = plots.plot_projection(w0 + 0.01 * torch.randn(8, 4), w0)
    assert len(fig.axes[1].lines) == 2
    fig = plots.plot_layer_similarity({"before": [0.5, 0.6], "after": [0.8, 0.9]}, [3, 7])
    assert len(fig.axes[0].lines) == 2


def test_width_sizer_snaps_hidden_size_and_guards_bad_combinations(tiny_model):
    from helpers.importance import random_importance
    from helpers.pruning import count_parameters, prune_width
    from helpers.workbook import valid_hidden_sizes, width_sizer

    assert valid_hidden_sizes(9, 576)[-1] == 576 and 384 in valid_hidden_sizes(6, 576)
    assert all(h % 6 == 0 for h in valid_hidden_sizes(6, 576))
    model = tiny_model()
    blocks = torch.randint(3, 128, (1, 16), generator=torch.Generator().manual_seed(0))
    calls = []

    def ppl(m, b):
        calls.append(m is model)
        return 1.0

    box = width_sizer(model, random_importance(model), blocks, lambda s: count_parameters(model.config), ppl,
                      prune_width, defaults={"intermediate_size": 64})
    assert box.result[0]["intermediate_size"] == 64 and calls == [True, False], "teacher once, then the student"
    heads, kv, hidden = box.children[0], box.children[1], box.children[2]
    heads.value = 1  # 4 groups x 1 head: hidden sizes snap to multiples of 4
    assert all(h % 4 == 0 for h in hidden.options) and hidden.value % 4 == 0
    kv.value = 3  # 3 x 1 heads: 64 is not a multiple of 3, so the slider snaps to a valid size
    assert hidden.value % 3 == 0
    box.children[5].click()  # the perplexity button: teacher's perplexity is cached
    assert calls.count(True) == 1
