"""Small helpers the notebooks lean on for their figures: the head heatmap's colour scale."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402

from helpers.importance import Importance, plot_heads  # noqa: E402


def _heads(scores: torch.Tensor) -> Importance:
    layers, heads = scores.shape
    return Importance(heads=scores, neurons=torch.ones(layers, 4), channels=torch.ones(8), criterion="activation")


def test_plot_heads_colours_on_a_log_scale_by_default():
    scores = torch.tensor([[1.0, 2.0, 1000.0], [0.5, 3.0, 800.0]])  # one head far above the rest saturates a linear map
    image = plot_heads(_heads(scores)).axes[0].images[0]
    assert isinstance(image.norm, LogNorm)
    assert image.norm.vmin == 0.5 and image.norm.vmax == 1000.0
    linear = plot_heads(_heads(scores), log=False).axes[0].images[0]
    assert not isinstance(linear.norm, LogNorm)


def test_plot_heads_log_scale_ignores_zero_scores():
    scores = torch.tensor([[0.0, 2.0, 10.0], [0.0, 4.0, 20.0]])  # a pruned or silent head scores 0
    image = plot_heads(_heads(scores)).axes[0].images[0]
    assert isinstance(image.norm, LogNorm) and image.norm.vmin == 2.0
