"""The workbook's figure convention, and the generic plots every stage shares.

Every figure function in the package returns a ``matplotlib.figure.Figure`` built with :func:`new_figure`: no
pyplot state is created or left behind, so a notebook shows the figure once with ``display(fig)`` and saves it
with :func:`save_figure` (``runs/<scale>/figures/<name>.png``; ``make run`` copies these to ``docs/figures``).
Functions that draw into a panel take ``ax=None, fig=None`` and create their own figure when not given one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from matplotlib.figure import Figure

from ..io import write_file_atomically
from .runs import runs_dir

__all__ = ["new_figure", "save_figure", "plot_curves", "plot_bars"]


def new_figure(width: float = 7.0, height: float = 3.5, nrows: int = 1, ncols: int = 1) -> tuple[Figure, Any]:
    """A pyplot-free ``Figure`` with constrained layout and its axes: one ``Axes`` for 1 x 1, else an array
    (flat for one row, ``[nrows, ncols]`` otherwise)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    if nrows == ncols == 1:
        return fig, axes[0, 0]
    return fig, (axes[0] if nrows == 1 else axes)


def save_figure(fig: Figure, name: str) -> Path:
    """Save ``fig`` as ``runs/<scale>/figures/<name>.png`` (atomically)."""
    path = runs_dir() / "figures" / f"{name}.png"
    return write_file_atomically(path, lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))


def plot_curves(curves: Mapping[str, Mapping[float, float]], xlabel: str, ylabel: str, title: str,
                reference: float | None = None, logy: bool = False, ax: Any = None, fig: Figure | None = None
                ) -> Figure:
    """Line plot of ``{name: {x: y}}`` (e.g. perplexity against layers removed, per strategy); ``reference``
    (the unpruned model) as a dashed line."""
    if ax is None:
        fig, ax = new_figure(6.0, 3.6)
    for name, points in curves.items():
        xs = sorted(points)
        ax.plot(xs, [points[x] for x in xs], marker="o", label=name)
    if reference is not None:
        ax.axhline(reference, color="gray", linestyle="--", label="unpruned")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logy:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return fig


def plot_bars(values: Mapping[str, float], ylabel: str = "held-out perplexity", title: str | None = None,
              references: Mapping[str, float] | None = None, logy: bool = False) -> Figure:
    """Bar chart of named values, each labelled with its number; ``references`` (e.g. ``{"teacher": 8.4}``) as
    dashed horizontal lines."""
    names = list(values)
    fig, ax = new_figure(max(4.0, 1.0 + 1.1 * len(names)), 3.6)
    ys = [float(values[n]) for n in names]
    ax.bar(names, ys, color=[f"C{i}" for i in range(len(names))])
    for i, y in enumerate(ys):
        ax.text(i, y, f"{y:.1f}", ha="center", va="bottom", fontsize=8)
    for j, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", color=f"{0.2 + 0.3 * j:.1f}", lw=1, label=f"{name} {value:.1f}")
    if references:
        ax.legend(fontsize=8)
    if logy:
        ax.set_yscale("log")
    ax.set(ylabel=ylabel, title=title or ylabel)
    ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    return fig
