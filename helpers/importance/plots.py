"""Figures of importance scores and of what pruning by them costs (notebooks 01-03).

Every function returns a matplotlib ``Figure`` built without pyplot state, so a notebook shows it once with
``display(fig)`` and can save it with ``helpers.workbook.save_figure``.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import torch
from matplotlib.figure import Figure
from torch import Tensor

from ..workbook.figures import new_figure
from .results import Importance

__all__ = ["plot_heads", "plot_neurons", "plot_channels", "plot_head_sets", "plot_layers", "plot_rank_matrix",
           "plot_criteria_sweep"]


def _heatmap(scores: Tensor, title: str, ylabel: str, ax: Any = None, fig: Figure | None = None, log: bool = False
             ) -> Figure:
    from matplotlib.colors import LogNorm

    if ax is None:
        fig, ax = new_figure()
    values = scores.T.float()
    norm = LogNorm(vmin=float(values[values > 0].min()), vmax=float(values.max())) if log and (values > 0).any() else None
    im = ax.imshow(values.numpy(), aspect="auto", origin="lower", cmap="viridis", interpolation="nearest", norm=norm)
    ax.set(xlabel="layer", ylabel=ylabel, title=title)
    fig.colorbar(im, ax=ax, label="importance")
    return fig


def plot_heads(imp: Importance, ax: Any = None, fig: Figure | None = None, log: bool = True) -> Figure:
    """Heatmap heads x layers; ``log`` colours on a log scale (the heads of one KV group can score far above the
    rest and would otherwise saturate the map)."""
    return _heatmap(imp.heads, f"Attention-head importance ({imp.criterion})", "head", ax, fig, log)


def plot_neurons(imp: Importance, sort: bool = True, ax: Any = None, fig: Figure | None = None, log: bool = True
                 ) -> Figure:
    """Heatmap neurons x layers; ``sort`` orders each layer's neurons by score (shows the long tail); ``log``
    colours on a log scale (a few outlier neurons would otherwise paint everything else dark)."""
    scores = imp.neurons.sort(dim=1, descending=True).values if sort else imp.neurons
    return _heatmap(scores, f"MLP-neuron importance ({imp.criterion})", "neuron (sorted)" if sort else "neuron",
                    ax, fig, log)


def plot_channels(imp: Importance, sort: bool = False, ax: Any = None, fig: Figure | None = None, log: bool = False
                  ) -> Figure:
    """Bar chart of the hidden-channel scores (``log``: logarithmic y axis, for outlier channels)."""
    if ax is None:
        fig, ax = new_figure()
    scores = imp.channels.sort(descending=True).values if sort else imp.channels
    ax.bar(range(len(scores)), scores.float().numpy(), width=1.0)
    ax.set(xlabel="channel (sorted)" if sort else "channel", ylabel="importance",
           title=f"Hidden-channel importance ({imp.criterion})")
    if log:
        ax.set_yscale("log")
    return fig


def plot_head_sets(gram: Tensor, errors: Mapping[str, Sequence[float]], layer: int, kv_groups: int) -> Figure:
    """Why heads are removed as sets. Left: correlation of the heads' outputs in one layer, from its
    ``head_gram`` [heads, heads] (white lines split the KV groups). Right: ``errors[name]`` [layers], the joint
    removal error per layer of each way of choosing the heads (log scale)."""
    fig, (left, right) = new_figure(11.0, 3.8, ncols=2)
    d = gram.diagonal().clamp_min(1e-30).sqrt()
    corr = (gram / (d[:, None] * d[None])).float()
    im = left.imshow(corr.numpy(), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    per_group = gram.shape[0] // kv_groups
    for g in range(1, kv_groups):
        left.axhline(g * per_group - 0.5, color="white", lw=2)
        left.axvline(g * per_group - 0.5, color="white", lw=2)
    left.set(xlabel="head", ylabel="head", title=f"layer {layer}: correlation of head outputs")
    fig.colorbar(im, ax=left, label="cosine of the mean product")
    for name, values in errors.items():
        right.plot(range(len(values)), values, marker="o", label=name)
    right.set(xlabel="layer", ylabel="joint removal error", yscale="log", title="error of the heads each choice removes")
    right.legend()
    return fig


def plot_layers(imp: Importance, criteria: Iterable[str] | None = None, normalize: bool = True, ax: Any = None,
                fig: Figure | None = None) -> Figure:
    """One line per layer criterion (``angular_n`` plotted at each block's first layer); ``normalize``
    rescales each to [0, 1] so criteria on different scales share an axis."""
    if ax is None:
        fig, ax = new_figure()
    for name in criteria or sorted(imp.layers):
        y = imp.layers[name].float()
        if normalize:
            y = (y - y.min()) / (y.max() - y.min()).clamp_min(1e-12)
        ax.plot(range(len(y)), y.numpy(), marker="o", label=name)
    ax.set(xlabel="layer (block start)", ylabel="normalized score" if normalize else "score",
           title="Layer importance (higher = keep)")
    ax.legend()
    return fig


def plot_rank_matrix(matrix: Tensor, labels: Sequence[str], title: str, ax: Any = None, fig: Figure | None = None,
                     vmin: float = 0.0) -> Figure:
    """A labelled square matrix of rank correlations (or overlaps) with the value written in each cell."""
    if ax is None:
        fig, ax = new_figure(4.2, 3.6)
    m = matrix.float().numpy()
    im = ax.imshow(m, vmin=vmin, vmax=1.0, cmap="magma")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if m[i, j] > (vmin + 1) / 2 else "white")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_criteria_sweep(
    results: Mapping[str, Mapping[str, Mapping[float, float | Sequence[float]]]],
    reference: float | None = None,
    xlabels: Mapping[str, str] | None = None,
    logy: bool = True,
) -> Figure:
    """One panel per axis: perplexity against the kept fraction, one line per criterion.

    ``results[axis][criterion][kept_fraction]`` is a perplexity, or a list of them (e.g. one per random seed:
    drawn as the median with a min-max band). ``reference`` (the unpruned model) is a dashed line;
    ``xlabels[axis]`` names the x axis of that panel.
    """
    axes_names = list(results)
    nrows = 1 if len(axes_names) <= 3 else 2  # four axes: a 2 x 2 grid
    ncols = -(-len(axes_names) // nrows)
    fig = Figure(figsize=(4.6 * ncols, 3.6 * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flatten())
    for extra in axes[len(axes_names):]:
        extra.set_visible(False)
    colors = {"activation": "C0", "magnitude": "C1", "random": "C3"}
    for ax, axis in zip(axes, axes_names):
        for k, (criterion, points) in enumerate(results[axis].items()):
            xs = sorted(points, reverse=True)
            vals = [torch.as_tensor(points[x], dtype=torch.float64).flatten() for x in xs]
            color = colors.get(criterion, f"C{k + 4}")
            many = any(v.numel() > 1 for v in vals)
            label = f"{criterion} (median, min-max of {max(v.numel() for v in vals)})" if many else criterion
            ax.plot(xs, [float(v.median()) for v in vals], marker="o", label=label, color=color)
            if many:
                ax.fill_between(xs, [float(v.min()) for v in vals], [float(v.max()) for v in vals], color=color, alpha=0.15)
        if reference is not None:
            ax.axhline(reference, color="gray", linestyle="--", label="unpruned")
        ax.invert_xaxis()  # left to right: more and more pruned
        ax.set(xlabel=(xlabels or {}).get(axis, "fraction kept"), ylabel="held-out perplexity", title=axis)
        if logy:
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    return fig
