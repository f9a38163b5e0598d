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
