"""Honest numbers: recovery on log-perplexity, bootstrap intervals over windows, seed bands, computed verdicts, and
the per-window statistics ``perplexity()`` now carries."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import evaluate as E
from helpers import workbook as W
from helpers.workbook import Band


def _result(window_nll, window_tokens, window: int = 512) -> E.Perplexity:
    """A ``Perplexity`` built from per-window sums, as ``perplexity()`` would return it."""
    n = int(sum(window_tokens))
    mean = float(sum(window_nll)) / n
    return E.Perplexity(math.exp(mean), mean, n, len(window_nll), window, tuple(window_nll), tuple(window_tokens))


def _windows(n: int, seed: int = 0, mean: float = 3.0, tokens: int = 511) -> tuple[list[float], list[int]]:
    """``n`` windows of ``tokens`` scored tokens whose mean NLL varies around ``mean`` nats from window to window."""
    rng = np.random.default_rng(seed)
    per_token = mean + 0.3 * rng.standard_normal(n)
    return (per_token * tokens).tolist(), [tokens] * n


def test_log_recovery_is_one_at_the_teacher_and_zero_at_the_pruned_model():
    assert W.log_recovery(1000, 8, 8) == pytest.approx(1.0)
    assert W.log_recovery(1000, 1000, 8) == pytest.approx(0.0)
    r = W.log_recovery(1000, 64, 8)  # a student 8x the teacher's perplexity
    linear = (1000 - 64) / (1000 - 8)
    assert linear == pytest.approx(0.94, abs=0.005)
    assert r == pytest.approx(math.log(1000 / 64) / math.log(125)) and r == pytest.approx(0.57, abs=0.005)
    assert 1 - r == pytest.approx(0.43, abs=0.005)  # ln 8 of the ln 125 gap remains
    assert W.log_recovery(1000, 2000, 8) < 0  # worse than the pruned model
    assert W.ratio_to_teacher(64, 8) == 8.0
    with pytest.raises(ValueError, match="no damage"):
        W.log_recovery(8, 9, 8)
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="positive finite"):
            W.log_recovery(1000, bad, 8)
    with pytest.raises(ValueError, match="ppl_teacher"):
        W.ratio_to_teacher(10, 0)


def test_bootstrap_interval_contains_the_estimate_narrows_with_windows_and_is_seeded():
    nll, tokens = _windows(20)
    point = math.exp(sum(nll) / sum(tokens))
    low, high = W.bootstrap_interval(nll, tokens)
    assert low < point < high
    assert W.bootstrap_interval(nll, tokens, seed=0) == (low, high)
    assert W.bootstrap_interval(nll, tokens, seed=1) != (low, high)
    big_low, big_high = W.bootstrap_interval(*_windows(2000))
    assert big_high - big_low < (high - low) / 5  # ~ 1 / sqrt(100)
    assert W.bootstrap_interval(nll, tokens, level=0.5)[1] - W.bootstrap_interval(nll, tokens, level=0.5)[0] \
        < high - low
    band = W.window_band(_result(nll, tokens))
    assert (band.low, band.high, band.n, band.kind) == (low, high, 20, "windows")
    assert band.center == pytest.approx(point)
    with pytest.raises(ValueError, match=">= 2 windows"):
        W.bootstrap_interval(nll, tokens[:-1])
    with pytest.raises(ValueError, match="level"):
        W.bootstrap_interval(nll, tokens, level=1.0)


def test_a_paired_bootstrap_of_identical_results_is_exactly_zero_and_within_noise():
    a = _result(*_windows(30))
    interval = W.paired_bootstrap_diff(a, a)
    assert interval == (0.0, 0.0)
    assert "within noise" in W.verdict_from_diff("A", "B", interval)


def test_a_paired_bootstrap_sees_a_consistent_shift_that_separate_bands_miss():
    nll, tokens = _windows(30, mean=3.0)
    a = _result(nll, tokens)
    b = _result([x + 0.02 * t for x, t in zip(nll, tokens)], tokens)  # b is 0.02 nats/token worse on every window
    low, high = W.paired_bootstrap_diff(a, b)
    assert low == pytest.approx(-0.02) and high == pytest.approx(-0.02)
    assert W.verdict_from_diff("A", "B", (low, high)).startswith("A beats B")
    assert W.verdict_from_diff("B", "A", W.paired_bootstrap_diff(b, a)).startswith("A beats B")
    assert "within noise" in W.verdict("A", W.window_band(a), "B", W.window_band(b))  # unpaired: overlap
    with pytest.raises(ValueError, match="same windows"):
        W.paired_bootstrap_diff(a, _result(nll[:-1], tokens[:-1]))
    with pytest.raises(ValueError, match="same windows"):
        W.paired_bootstrap_diff(a, _result(nll, [t - 1 for t in tokens]))
    with pytest.raises(ValueError, match="helpers.evaluate.perplexity"):
        W.paired_bootstrap_diff(a, E.Perplexity(8.5, 2.14, 20440, 40, 512))  # no per-window statistics


def test_verdicts_say_beats_only_when_bands_separate():
    good, bad = Band(3.1, 2.9, 3.3, 3, "seeds"), Band(4.2, 4.0, 4.5, 3, "seeds")
    assert W.verdict("A", good, "B", bad) == \
        "A beats B (3.10 vs 4.20; bands [2.90, 3.30] and [4.00, 4.50] do not overlap)"
    assert W.verdict("B", bad, "A", good).startswith("A beats B")
    assert W.verdict("A", good, "B", bad, lower_is_better=False).startswith("B beats A")
    close = Band(3.5, 3.2, 4.1, 3, "seeds")
    text = W.verdict("A", good, "C", close)
    assert text.startswith("A and C are within noise") and "overlap" in text and "beats" not in text
    assert "B beats A" in W.verdict_from_diff("A", "B", (0.01, 0.05))
    with pytest.raises(ValueError, match="low <= high"):
        W.verdict_from_diff("A", "B", (0.05, 0.01))
    with pytest.raises(ValueError, match="must not exceed"):
        Band(1.0, 2.0, 1.5, 3, "seeds")


def test_seed_band_is_median_and_range_and_needs_three_seeds():
    band = W.seed_band([30.0, 27.0, 41.0, 29.0])
    assert (band.center, band.low, band.high, band.n, band.kind) == (29.5, 27.0, 41.0, 4, "seeds")
    for few in ([], [1.0], [1.0, 2.0]):
        with pytest.raises(ValueError, match="at least 3 seeds, or a bootstrap over windows"):
            W.seed_band(few)
    with pytest.raises(ValueError, match="finite"):
        W.seed_band([1.0, 2.0, math.nan])


def test_plot_bands_returns_a_figure_and_leaves_no_pyplot_state():
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    bands = {"pruned": W.seed_band([300, 420, 350]), "distilled": W.window_band(_result(*_windows(20)))}
    fig = W.plot_bands(bands, "held-out perplexity", "after healing", reference=8.5)
    assert isinstance(fig, Figure) and fig.axes[0].get_yscale() == "log"
    assert W.plot_bands(bands, "ppl", "linear", logy=False).axes[0].get_yscale() == "linear"
    assert not plt.get_fignums()
    with pytest.raises(ValueError, match="at least one band"):
        W.plot_bands({}, "ppl", "empty")


def _old_perplexity_total(model, blocks, targets, batch_size):
    """The protocol's total before per-window statistics existed (kept to check it did not move)."""
    total_nll, total_tokens = 0.0, 0
    with torch.no_grad():
        for batch, target in zip(blocks.split(batch_size), targets.split(batch_size)):
            target = target[:, 1:]
            logits = model(input_ids=batch).logits
            total_nll += F.cross_entropy(logits[:, :-1].float().flatten(0, 1), target.flatten(), reduction="sum",
                                         ignore_index=-100).item()
            total_tokens += int((target != -100).sum())
    return total_nll / total_tokens, total_tokens


@pytest.mark.parametrize("masked", [False, True])
def test_perplexity_window_sums_add_up_to_the_unchanged_total(tiny_model, masked):
    model = tiny_model()
    blocks = torch.randint(3, 128, (5, 12), generator=torch.Generator().manual_seed(2))
    labels = blocks.clone()
    if masked:
        labels[:, :5] = -100  # prompts as context only
        labels[3] = -100  # a window with nothing to score
    res = E.perplexity(model, blocks, batch_size=2, use_autocast=False, labels=labels if masked else None)
    assert len(res.window_nll) == len(res.window_tokens) == res.n_windows == 5
    assert sum(res.window_tokens) == res.n_tokens
    assert list(res.window_tokens) == ([7, 7, 7, 0, 7] if masked else [11] * 5)
    assert math.isclose(sum(res.window_nll), res.nll * res.n_tokens, rel_tol=1e-6)
    mean, n = _old_perplexity_total(model, blocks, labels, 2)
    assert n == res.n_tokens and res.nll == mean and res.ppl == math.exp(mean)  # bit-identical to before
    assert res.as_dict()["window_tokens"] == res.window_tokens
    low, high = W.bootstrap_interval(res.window_nll, res.window_tokens)
    assert low <= res.ppl <= high


def test_cached_perplexity_measures_once_and_tells_models_apart(tiny_model, tmp_path, monkeypatch):
    from helpers import evaluate as E
    from helpers.evaluate import cache

    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path))
    a, b = tiny_model(seed=0), tiny_model(seed=1)
    blocks = torch.randint(3, 128, (3, 16), generator=torch.Generator().manual_seed(0))
    calls = []
    real = cache.perplexity
    monkeypatch.setattr(cache, "perplexity", lambda *x, **k: calls.append(1) or real(*x, **k))
    first = E.cached_perplexity("m", a, blocks)
    again = E.cached_perplexity("m", a, blocks)
    assert again == first and len(calls) == 1, "the same weights on the same windows are measured once"
    assert E.cached_perplexity("m", b, blocks) != first and len(calls) == 2, "other weights: measured anew"
    E.cached_perplexity("m", a, blocks.flip(1)[:2])
    assert len(calls) == 3, "other windows: measured anew"
    assert E.model_fingerprint(a) == E.model_fingerprint(tiny_model(seed=0)) != E.model_fingerprint(b)


def test_cached_perplexity_reads_a_subset_of_measured_windows_off_the_record(tiny_model, tmp_path, monkeypatch):
    from helpers import evaluate as E
    from helpers.evaluate import cache

    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path))
    model = tiny_model(seed=0)
    blocks = torch.randint(3, 128, (5, 16), generator=torch.Generator().manual_seed(0))
    labels = blocks.clone()
    labels[:, :6] = -100
    calls = []
    real = cache.perplexity
    monkeypatch.setattr(cache, "perplexity", lambda *x, **k: calls.append(1) or real(*x, **k))
    E.cached_perplexity("teacher", model, blocks)
    E.cached_perplexity("teacher", model, blocks, labels=labels)
    assert len(calls) == 2
    for rows in ([0, 1, 2], [4, 1], [3]):
        for lab in (None, labels[rows]):
            got = E.cached_perplexity("other label", model, blocks[rows], labels=lab)
            fresh = real(model, blocks[rows], labels=lab)
            assert len(calls) == 2, "windows already measured for these weights are read off the record"
            assert got.n_tokens == fresh.n_tokens and got.window_tokens == fresh.window_tokens
            torch.testing.assert_close(got.nll, fresh.nll, rtol=1e-6, atol=1e-6)  # float32 batch sums
            torch.testing.assert_close(got.window_nll, fresh.window_nll, rtol=1e-6, atol=1e-6)
    E.cached_perplexity("teacher", model, torch.cat([blocks[:2], blocks[:1].flip(1)]))
    assert len(calls) == 3, "a window never measured: the whole set is measured"
    E.cached_perplexity("teacher", tiny_model(seed=1), blocks[:2])
    assert len(calls) == 4, "other weights: measured anew"


def test_a_distillation_runs_final_evaluation_is_read_back_by_cached_perplexity(tiny_model, tmp_path, monkeypatch):
    from helpers import distill as D
    from helpers import evaluate as E
    from helpers.evaluate import cache

    monkeypatch.setenv("WORKBOOK_RUNS", str(tmp_path))
    teacher, student = tiny_model(seed=0), tiny_model(seed=1)
    blocks = torch.randint(3, 128, (4, 16), generator=torch.Generator().manual_seed(0))
    cfg = D.DistillConfig(max_steps=2, batch_size=2, disable_tqdm=True, bf16=False, eval_at_start=False)
    run = D.distill(student, teacher, blocks, cfg, eval_blocks=blocks)
    monkeypatch.setattr(cache, "perplexity", lambda *a, **k: pytest.fail("measured again"))
    assert E.cached_perplexity("healed", run.student, blocks) == run.final_eval
    assert E.cached_perplexity("healed", run.student, blocks[2:]).n_windows == 2  # a subset, read off the record
    with pytest.raises(ValueError, match="not measured on these blocks"):
        E.remember_perplexity("x", run.student, blocks[:3], run.final_eval)


def test_compare_runs_uses_seed_bands_with_three_seeds_else_the_window_bootstrap():
    from helpers.evaluate import Perplexity

    def result(shift):  # 20 windows of 100 tokens; per-window NLL varies, shifted by `shift` nats/token
        nll = [100 * (2.0 + 0.05 * (i % 5) + shift) for i in range(20)]
        total = sum(nll) / 2000
        return Perplexity(math.exp(total), total, 2000, 20, 101, tuple(nll), (100,) * 20)

    one = W.compare_runs("a", [result(0.0)], "b", [result(0.1)])
    assert one.startswith("a beats b") and one.endswith("window noise only")
    assert "within noise" in W.compare_runs("a", [result(0.0)], "b", [result(0.0)])
    seeds_a, seeds_b = [result(s) for s in (0.0, 0.01, 0.02)], [result(s) for s in (0.015, 0.03, 0.04)]
    assert "within noise" in W.compare_runs("a", seeds_a, "b", seeds_b), "overlapping seed bands"
    assert W.compare_runs("a", seeds_a, "b", [result(s) for s in (0.2, 0.21, 0.22)]).startswith("a beats b")
    with pytest.raises(ValueError, match="at least one result"):
        W.compare_runs("a", [], "b", [result(0.0)])
