"""How the workbook states a comparison: recovery on log-perplexity, intervals, bands and the verdict text.

A sentence like "A beats B" is computed here, never typed: it says "beats" only when the two bands separate (or
the paired interval excludes 0), else "within noise". Bands are the median and min-max over >= 3 seeds, or a
percentile bootstrap over evaluation windows (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 13;
the paired form resamples the same windows for both models, Koehn, EMNLP 2004).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .figures import new_figure

if TYPE_CHECKING:  # only a type: helpers.evaluate imports the workbook's figures, so no import cycle at run time
    from ..evaluate import Perplexity

__all__ = ["Band", "Verdict", "log_recovery", "ratio_to_teacher", "bootstrap_interval", "paired_bootstrap_diff",
           "window_band", "seed_band", "verdict", "verdict_from_diff", "paired_verdict", "compare_runs", "verdict_cell",
           "plot_bands"]


class Verdict(str):
    """A verdict's text (a ``str``: print it, or test ``startswith``) that also says who won: ``winner`` is the
    better model's name, None when the two are within noise or when no verdict could be computed
    (``decided=False``)."""

    winner: str | None
    decided: bool

    def __new__(cls, text: str, winner: str | None = None, decided: bool = True) -> "Verdict":
        v = super().__new__(cls, text)
        v.winner, v.decided = winner, decided
        return v


@dataclass(frozen=True)
class Band:
    """A value and its spread: ``kind="seeds"`` (median, min-max over ``n`` seeds) or ``"windows"`` (point
    estimate and percentile bootstrap interval over ``n`` evaluation windows)."""

    center: float
    low: float
    high: float
    n: int
    kind: str

    def __post_init__(self):
        if not self.low <= self.high:
            raise ValueError(f"Band low {self.low} must not exceed high {self.high}")


def _positive(**values: float) -> None:
    for name, v in values.items():
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive finite perplexity, got {v}")


def log_recovery(ppl_pruned: float, ppl_method: float, ppl_teacher: float) -> float:
    """Fraction of the pruning damage a method recovers, on log-perplexity (the cross-entropy in nats):
    ``(ln ppl_pruned - ln ppl_method) / (ln ppl_pruned - ln ppl_teacher)``; 1 at the teacher, 0 at the pruned model.

    Linear recovery ``(ppl_pruned - ppl_method) / (ppl_pruned - ppl_teacher)`` overstates it: perplexity is the
    exponential of the loss, so the first nats removed from a broken model shrink it by hundreds of points. A
    student at 64 (8x a teacher at 8) from a pruned 1000 "recovers 94%" linearly, but only 57% of the gap in nats
    (43% of it remains: ln 8 of ln 125).
    """
    _positive(ppl_pruned=ppl_pruned, ppl_method=ppl_method, ppl_teacher=ppl_teacher)
    if ppl_pruned == ppl_teacher:
        raise ValueError(f"ppl_pruned equals ppl_teacher ({ppl_teacher}): there is no damage to recover")
    return (math.log(ppl_pruned) - math.log(ppl_method)) / (math.log(ppl_pruned) - math.log(ppl_teacher))


def ratio_to_teacher(ppl: float, ppl_teacher: float) -> float:
    """``ppl / ppl_teacher`` (1.0 = as good as the teacher; ``exp`` of the gap in nats per token)."""
    _positive(ppl=ppl, ppl_teacher=ppl_teacher)
    return ppl / ppl_teacher


def _windows(window_nll: Sequence[float], window_tokens: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    nll, tokens = np.asarray(window_nll, dtype=np.float64), np.asarray(window_tokens, dtype=np.float64)
    if nll.ndim != 1 or nll.shape != tokens.shape or len(nll) < 2:
        raise ValueError(f"need >= 2 windows with one NLL sum and one token count each, got {nll.shape} NLL sums "
                         f"and {tokens.shape} token counts (evaluate with helpers.evaluate.perplexity)")
    if not np.isfinite(nll).all() or (tokens < 0).any() or tokens.sum() <= 0:
        raise ValueError("window NLL sums must be finite and window token counts >= 0 with a positive total")
    return nll, tokens


def _resample(n: int, n_boot: int, level: float, seed: int) -> np.ndarray:
    """``[n_boot, n]`` window indices drawn with replacement (seeded)."""
    if not 0 < level < 1 or n_boot < 1:
        raise ValueError(f"level must lie in (0, 1) and n_boot >= 1, got level={level}, n_boot={n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(int(n_boot), n))


def _percentiles(samples: np.ndarray, level: float) -> tuple[float, float]:
    samples = samples[np.isfinite(samples)]  # a resample with no scored token has no value
    if samples.size == 0:
        raise ValueError("no resample scored any token: too few scored windows for a bootstrap")
    tail = 50.0 * (1.0 - level)
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return float(low), float(high)


def bootstrap_interval(window_nll: Sequence[float], window_tokens: Sequence[int], n_boot: int = 1000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the perplexity ``exp(sum nll / sum tokens)``, resampling WINDOWS with
    replacement (tokens within a window are not independent); ``window_nll``: per-window NLL sums in nats."""
    nll, tokens = _windows(window_nll, window_tokens)
    idx = _resample(len(nll), n_boot, level, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _percentiles(np.exp(nll[idx].sum(1) / tokens[idx].sum(1)), level)


def paired_bootstrap_diff(a: Perplexity, b: Perplexity, n_boot: int = 1000, level: float = 0.95,
                          seed: int = 0) -> tuple[float, float]:
    """Interval of ``ln ppl_a - ln ppl_b`` (nats per token; < 0: ``a`` is better) resampling the SAME windows for
    both models, which must have been evaluated on the same windows and tokens."""
    nll_a, tokens = _windows(a.window_nll, a.window_tokens)
    nll_b, tokens_b = _windows(b.window_nll, b.window_tokens)
    if len(nll_a) != len(nll_b) or not np.array_equal(tokens, tokens_b) or a.window != b.window:
        raise ValueError(f"a paired bootstrap needs both models scored on the same windows: got {len(nll_a)} vs "
                         f"{len(nll_b)} windows of {a.window} vs {b.window} tokens, {int(tokens.sum())} vs "
                         f"{int(tokens_b.sum())} scored tokens")
    idx = _resample(len(nll_a), n_boot, level, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        return _percentiles((nll_a - nll_b)[idx].sum(1) / tokens[idx].sum(1), level)


def window_band(result: Perplexity, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Band:
    """The perplexity of ``result`` with its bootstrap interval over windows, as a :class:`Band`."""
    low, high = bootstrap_interval(result.window_nll, result.window_tokens, n_boot, level, seed)
    return Band(result.ppl, min(low, result.ppl), max(high, result.ppl), len(result.window_nll), "windows")


def seed_band(values: Sequence[float]) -> Band:
    """Median and min-max of one number over >= 3 seeds."""
    xs = np.asarray(values, dtype=np.float64)
    if xs.ndim != 1 or len(xs) < 3:
        raise ValueError(f"got {xs.size} value(s): a band needs at least 3 seeds, or a bootstrap over windows "
                         "(window_band)")
    if not np.isfinite(xs).all():
        raise ValueError(f"seed values must be finite, got {xs.tolist()}")
    return Band(float(np.median(xs)), float(xs.min()), float(xs.max()), len(xs), "seeds")


def _fmt(x: float) -> str:
    """Three significant digits, never in exponent notation: 8.51, 27.3, 1234, -0.0123."""
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    return f"{x:.{max(0, 2 - math.floor(math.log10(abs(x))))}f}"


def verdict(name_a: str, band_a: Band, name_b: str, band_b: Band, lower_is_better: bool = True) -> Verdict:
    """"A beats B (3.1 vs 4.2; bands [2.9, 3.3] and [4.0, 4.5] do not overlap)" only when the bands separate,
    else "A and B are within noise (...; bands ... overlap)"."""
    a_below, b_below = band_a.high < band_b.low, band_b.high < band_a.low
    if not (a_below or b_below):
        return Verdict(f"{name_a} and {name_b} are within noise ({_fmt(band_a.center)} vs {_fmt(band_b.center)}; bands "
                       f"[{_fmt(band_a.low)}, {_fmt(band_a.high)}] and [{_fmt(band_b.low)}, {_fmt(band_b.high)}] overlap)")
    a_wins = a_below == lower_is_better
    (win, w), (lose, l_) = ((name_a, band_a), (name_b, band_b)) if a_wins else ((name_b, band_b), (name_a, band_a))
    return Verdict(f"{win} beats {lose} ({_fmt(w.center)} vs {_fmt(l_.center)}; bands [{_fmt(w.low)}, {_fmt(w.high)}] "
                   f"and [{_fmt(l_.low)}, {_fmt(l_.high)}] do not overlap)", winner=win)


def verdict_from_diff(name_a: str, name_b: str, interval: tuple[float, float]) -> Verdict:
    """The verdict from a paired interval of ``ln ppl_a - ln ppl_b`` (:func:`paired_bootstrap_diff`): "A beats
    B" when it lies below 0, "B beats A" above, else "within noise"."""
    low, high = (float(v) for v in interval)
    if not low <= high:
        raise ValueError(f"interval must be (low, high) with low <= high, got {interval}")
    detail = (f"ln ppl {name_a} - ln ppl {name_b} in [{_fmt(low)}, {_fmt(high)}], ppl ratio in "
              f"[{_fmt(math.exp(low))}, {_fmt(math.exp(high))}], paired over windows")
    if high < 0:
        return Verdict(f"{name_a} beats {name_b} ({detail})", winner=name_a)
    if low > 0:
        return Verdict(f"{name_b} beats {name_a} ({detail})", winner=name_b)
    return Verdict(f"{name_a} and {name_b} are within noise ({detail})")


def paired_verdict(name_a: str, a: Perplexity, name_b: str, b: Perplexity) -> Verdict:
    """The verdict for two models scored on the same windows (one result each): the paired bootstrap over the
    windows; undecided (``decided=False``, and the text says why) with fewer than 2 windows."""
    if a.n_windows < 2 or b.n_windows < 2:
        return Verdict(f"{name_a} vs {name_b}: no verdict from {min(a.n_windows, b.n_windows)} window "
                       "(a bootstrap needs >= 2)", decided=False)
    return verdict_from_diff(name_a, name_b, paired_bootstrap_diff(a, b))


def verdict_cell(v: Verdict, name_a: str, name_b: str, label_a: str, label_b: str) -> str:
    """A verdict as a short table cell: ``label_a`` or ``label_b`` (whichever model won), "noise" or "n/a"."""
    if not v.decided:
        return "n/a"
    return {name_a: label_a, name_b: label_b}.get(v.winner, "noise") if v.winner else "noise"


def compare_runs(name_a: str, a: Sequence[Perplexity], name_b: str, b: Sequence[Perplexity]) -> Verdict:
    """The one way a notebook states "A vs B" for runs evaluated on the same windows (``a``, ``b``: one result per
    seed). With >= 3 seeds each: seed bands of the perplexity (:func:`verdict`). With fewer: the paired bootstrap
    over the evaluation windows of the first seed (:func:`verdict_from_diff`), marked as covering evaluation noise
    only, not the noise of training (data order, initialisation)."""
    if not a or not b:
        raise ValueError(f"compare_runs needs at least one result for each of {name_a!r} and {name_b!r}")
    if len(a) >= 3 and len(b) >= 3:
        return verdict(name_a, seed_band([r.ppl for r in a]), name_b, seed_band([r.ppl for r in b]))
    v = paired_verdict(name_a, a[0], name_b, b[0])
    return Verdict(f"{v}; one seed each: window noise only", v.winner, v.decided) if v.decided else v


def plot_bands(bands: Mapping[str, Band], ylabel: str, title: str, reference: float | None = None,
               logy: bool = True) -> Figure:
    """Each band as its center with error bars to its low and high, labelled with the center; ``reference``
    (e.g. the teacher's perplexity) as a dashed line."""
    if not bands:
        raise ValueError("plot_bands needs at least one band")
    names = list(bands)
    fig, ax = new_figure(max(4.0, 1.0 + 1.1 * len(names)), 3.6)
    for i, name in enumerate(names):
        b = bands[name]
        ax.errorbar([i], [b.center], yerr=[[b.center - b.low], [b.high - b.center]], fmt="o", color=f"C{i}",
                    capsize=4)
        ax.annotate(_fmt(b.center), (i, b.center), xytext=(6, 0), textcoords="offset points", va="center",
                    fontsize=8)
    if reference is not None:
        ax.axhline(reference, ls="--", color="gray", lw=1, label=f"reference {_fmt(reference)}")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), [f"{n}\n({bands[n].n} {bands[n].kind})" for n in names], fontsize=8)
    ax.set_xlim(-0.5, len(names) - 0.5)
    if logy:
        ax.set_yscale("log")
    ax.set(ylabel=ylabel, title=title)
    return fig
