"""Figures of distillation runs: loss and perplexity curves, temperature, projections, layer maps.

Every function returns a pyplot-free ``Figure`` (``helpers.workbook.new_figure``; the notebook shows it with
``display(fig)`` or saves it with ``helpers.workbook.save_figure``), so nothing is drawn twice. ``histories`` are ``{run name: DistillResult.history}``:
lists of per-step dicts with keys among ``step, tokens_seen, loss, kd, ce, hidden, embedding, alpha, eval_ppl``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch
from matplotlib.figure import Figure

from ..workbook.figures import new_figure
from .config import LayerMap

__all__ = ["plot_loss_curves", "plot_ppl_vs_tokens", "plot_temperature", "plot_projection", "plot_layer_similarity",
           "plot_layer_map"]

History = Sequence[Mapping[str, float]]


def _series(history: History, key: str, x: str = "tokens_seen") -> tuple[list[float], list[float]]:
    """``(xs, ys)`` of the rows of ``history`` that have ``key`` (and ``x``)."""
    rows = [r for r in history if key in r and x in r]
    return [r[x] for r in rows], [r[key] for r in rows]


def plot_loss_curves(histories: Mapping[str, History], keys: Sequence[str] = ("loss",), x: str = "tokens_seen",
                     title: str | None = None, logy: bool = False) -> Figure:
    """One panel per ``key`` (e.g. ``"loss"``, ``"kd"``, ``"ce"``, ``"hidden"``), one line per run.

    Runs without a key are skipped in that panel (a CE fine-tuning run has no ``kd``).
    """
    fig = Figure(figsize=(4.6 * len(keys), 3.4), layout="constrained")
    axes = fig.subplots(1, len(keys), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, (name, history) in enumerate(histories.items()):
            xs, ys = _series(history, key, x)
            if xs:
                ax.plot(xs, ys, marker=".", color=f"C{i}", label=name)
        ax.set_xlabel("training tokens seen" if x == "tokens_seen" else x)
        ax.set_title(key)
        if logy:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_ppl_vs_tokens(histories: Mapping[str, History], references: Mapping[str, float] | None = None,
                       title: str | None = None, logy: bool = True) -> Figure:
    """Held-out perplexity (``eval_ppl``) against training tokens seen, one line per run; ``references``
    (e.g. ``{"teacher": 4.1, "pruned": 900}``) are drawn as dashed horizontal lines."""
    fig, ax = new_figure(6.4, 4)
    for i, (name, history) in enumerate(histories.items()):
        xs, ys = _series(history, "eval_ppl")
        if xs:
            ax.plot(xs, ys, marker="o", color=f"C{i}", label=name)
    for j, (name, value) in enumerate((references or {}).items()):
        ax.axhline(value, ls="--", color=f"{0.2 + 0.3 * j:.1f}", lw=1)
        ax.annotate(f"{name} {value:.1f}", (0, value), xycoords=("axes fraction", "data"), fontsize=8,
                    xytext=(3, 3), textcoords="offset points")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("training tokens seen")
    ax.set_ylabel("held-out perplexity")
    ax.set_title(title or "Held-out perplexity during healing")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def plot_temperature(logits: torch.Tensor, temperatures: Sequence[float], tokenizer=None, top: int = 12,
                     title: str | None = None) -> Figure:
    """What temperature does to one next-token distribution: ``softmax(logits / tau)`` of ``logits`` ``[V]``
    over the ``top`` most likely tokens on a log probability axis, so the tail stays visible (left), and the entropy
    in nats against tau (right)."""
    logits = logits.detach().float().cpu()
    order = logits.argsort(descending=True)[:top]
    labels = [repr(tokenizer.decode([int(i)])) if tokenizer is not None else str(int(i)) for i in order]
    fig = Figure(figsize=(11, 3.6), layout="constrained")
    ax, ax2 = fig.subplots(1, 2, gridspec_kw={"width_ratios": [2.2, 1]})
    width = 0.8 / len(temperatures)
    entropies = []
    for k, tau in enumerate(temperatures):
        p = torch.softmax(logits / tau, dim=-1)
        entropies.append(float(-(p * p.clamp_min(1e-30).log()).sum()))
        ax.bar([i + (k - (len(temperatures) - 1) / 2) * width for i in range(top)], p[order].tolist(), width,
               label=f"τ = {tau:g} (H = {entropies[-1]:.2f})", color=f"C{k}")
    ax.set_xticks(range(top), labels, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("probability (log scale: the tail the temperature lifts)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title(title or f"teacher's next-token distribution, top {top} tokens")
    ax2.plot(temperatures, entropies, marker="o")
    ax2.axhline(math.log(len(logits)), ls="--", color="0.5", lw=1)
    ax2.annotate(f"uniform: ln V = {math.log(len(logits)):.1f}", (temperatures[0], math.log(len(logits))),
                 fontsize=8, xytext=(0, -12), textcoords="offset points")
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("temperature τ")
    ax2.set_ylabel("entropy (nats)")
    ax2.set_title("entropy grows with τ")
    ax2.grid(alpha=0.3)
    return fig


def plot_projection(weight: torch.Tensor, start: torch.Tensor | None = None, title: str | None = None,
                    max_cells: int = 96) -> Figure:
    """A learned projection ``[H_t, H_s]``: a heatmap of its top-left ``max_cells`` corner (of ``weight - start``
    when the starting weight is given: what training changed) and its singular values (``start``'s dashed)."""
    w = weight.detach().float().cpu()
    shown = w if start is None else w - start.detach().float().cpu()
    corner = shown[:max_cells, :max_cells]
    sv = torch.linalg.svdvals(w)
    fig, (ax, ax2) = new_figure(10, 3.8, ncols=2)
    lim = float(corner.abs().max()) or 1.0
    im = ax.imshow(corner, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_xlabel("student channel")
    ax.set_ylabel("teacher channel")
    what = "weight" if start is None else "weight - start"
    ax.set_title(f"{what} [{w.shape[0]} x {w.shape[1]}], top-left {corner.shape[0]} x {corner.shape[1]}", fontsize=9)
    ax2.plot(sv.numpy(), marker=".", ms=2, label="learned")
    if start is not None:
        ax2.plot(torch.linalg.svdvals(start.detach().float().cpu()).numpy(), ls="--", color="0.5", label="start")
        ax2.legend(fontsize=8)
    if float(sv.max()) > 10 * float(sv.min().clamp_min(1e-12)):
        ax2.set_yscale("log")
    ax2.set_xlabel("index")
    ax2.set_ylabel("singular value")
    ax2.set_title("singular values")
    ax2.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    return fig


def plot_layer_similarity(similarities: Mapping[str, Sequence[float]], teacher_layers: Sequence[int],
                          title: str | None = None) -> Figure:
    """Per mapped layer pair, a similarity (e.g. cosine between projected student and teacher states) for
    several models or moments (``{"before": [...], "after": [...]}``), against the teacher layer index."""
    fig, ax = new_figure(6.4, 3.6)
    for i, (name, values) in enumerate(similarities.items()):
        ax.plot(list(teacher_layers), list(values), marker="o", color=f"C{i}", label=name)
    ax.set_xlabel("teacher layer (of the mapped pair)")
    ax.set_ylabel("cosine similarity")
    ax.set_ylim(top=1.0)
    ax.set_title(title or "student (projected) vs teacher hidden states")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_layer_map(layer_map: LayerMap, n_student: int, n_teacher: int, title: str | None = None) -> Figure:
    """A matplotlib Figure: teacher layers (left) joined to the student layers (right) they supervise."""
    fig, ax = new_figure(4, max(3.0, 0.18 * max(n_student, n_teacher)))
    mapped_s, mapped_t = {s for s, _ in layer_map}, {t for _, t in layer_map}
    ax.scatter([0] * n_teacher, range(n_teacher), c=["C1" if t in mapped_t else "0.8" for t in range(n_teacher)])
    ax.scatter([1] * n_student, range(n_student), c=["C0" if s in mapped_s else "0.8" for s in range(n_student)])
    for s, t in layer_map:
        ax.plot([0, 1], [t, s], color="C2", alpha=0.7)
    ax.set_xticks([0, 1], [f"teacher ({n_teacher})", f"student ({n_student})"])
    ax.set_ylabel("layer index")
    ax.set_xlim(-0.5, 1.5)
    ax.set_title(title or f"{len(layer_map)} mapped layer pairs")
    return fig
