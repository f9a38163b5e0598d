"""Importance scores on tiny random models: hand computations, streaming, depth criteria, baselines, I/O."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import architecture as arch
from helpers.importance import Importance, estimate_importance, magnitude_importance, random_importance
from helpers.importance import layer_importance
from helpers.workbook import plot_curves
from helpers.importance import (plot_channels, plot_criteria_sweep, plot_head_sets, plot_heads, plot_layers,
                                      plot_neurons, plot_rank_matrix)
from helpers.importance import collect_statistics, compare, kendall, spearman, topk_overlap
from helpers.pruning import prune_depth

SEQ = {"mean": lambda x: x.abs().mean(1), "l2": lambda x: x.pow(2).sum(1).sqrt(),
       "var": lambda x: x.abs().var(1, unbiased=False)}
BATCH = {"mean": lambda v: v.mean(0), "l2": lambda v: v.pow(2).sum(0).sqrt(), "var": lambda v: v.var(0, unbiased=False)}


def _capture(model, batches):
    """Plain hooks storing every tensor the scores are made of, concatenated over batches."""
    store: dict[str, list] = {}

    def keep(key, pick):
        return lambda module, args, *rest: store.setdefault(key, []).append(pick(args, rest).detach().clone())

    handles = []
    for i, layer in enumerate(arch.layers(model)):
        handles += [arch.attention(layer).o_proj.register_forward_pre_hook(keep(f"o{i}", lambda a, r: a[0])),
                    arch.mlp(layer).down_proj.register_forward_pre_hook(keep(f"d{i}", lambda a, r: a[0])),
                    layer.register_forward_hook(keep(f"in{i}", lambda a, r: a[0])),
                    layer.register_forward_hook(keep(f"out{i}", lambda a, r: r[0]))]
        for j, norm in enumerate(arch.layer_norms(layer)):
            handles.append(norm.register_forward_hook(keep(f"n{i}.{j}", lambda a, r: r[0])))
    handles.append(arch.final_norm(model).register_forward_hook(keep("final", lambda a, r: r[0])))
    with torch.no_grad():
        for ids in batches:
            model(ids)
    for h in handles:
        h.remove()
    return {k: torch.cat(v) for k, v in store.items()}


@pytest.mark.parametrize("seq_agg,batch_agg", [("mean", "l2"), ("l2", "mean"), ("var", "var")])
def test_scores_match_hand_computation(tiny_model, tiny_batches, seq_agg, batch_agg):
    model = tiny_model("llama")
    c = model.config
    imp = estimate_importance(model, tiny_batches, seq_agg, batch_agg, autocast=False, progress=False,
                              block_importance=True)
    t = _capture(model, tiny_batches)
    agg = lambda x: BATCH[batch_agg](SEQ[seq_agg](x))  # noqa: E731
    L = c.num_hidden_layers
    H, hd = c.num_attention_heads, c.head_dim

    def contribution(i):  # ||o_proj restricted to head h, applied to z_h|| -> [N, S, H], the long way
        z, W = t[f"o{i}"].unflatten(-1, (H, hd)), arch.layers(model)[i].self_attn.o_proj.weight
        return torch.stack([(z[:, :, h] @ W[:, h * hd:(h + 1) * hd].T).norm(dim=-1) for h in range(H)], -1)

    heads = torch.stack([agg(contribution(i)) for i in range(L)])
    minitron = torch.stack([agg(t[f"o{i}"].unflatten(-1, (H, hd)).norm(dim=-1)) for i in range(L)])
    imp_in = estimate_importance(model, tiny_batches, seq_agg, batch_agg, autocast=False, progress=False,
                                 head_score="input", block_importance=False)
    torch.testing.assert_close(imp_in.heads, minitron, rtol=1e-4, atol=1e-6)
    assert (imp.head_score, imp_in.head_score) == ("output", "input")
    neurons = torch.stack([agg(t[f"d{i}"]) for i in range(L)])
    channels = sum(agg(t[f"n{i}.{j}"]) for i in range(L) for j in (0, 1)) + agg(t["final"])
    bi = torch.stack([1 - F.cosine_similarity(t[f"in{i}"], t[f"out{i}"], dim=-1).mean() for i in range(L)])
    for got, want in ((imp.heads, heads), (imp.neurons, neurons), (imp.channels, channels), (imp.layers["bi"], bi)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    assert (imp.n_samples, imp.n_tokens) == (6, 96)


def _post_attention_residual(model, batches, layer: int) -> torch.Tensor:
    """What post_attention_layernorm of ``layer`` reads, [N, S, hidden] over all batches."""
    seen = []
    norm = arch.layer_norms(arch.layers(model)[layer])[1]
    handle = norm.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        for ids in batches:
            model(ids)
    handle.remove()
    return torch.cat(seen)


@pytest.mark.parametrize("removed", [[3], [0, 1], [1, 2, 5, 6], list(range(8))])
def test_head_gram_is_the_joint_removal_error(tiny_model, tiny_batches, removed):
    """sum(head_gram[l][R, R]) = mean over tokens of ||change of the post-attention residual||^2 / ms(residual)
    when the heads R of layer l are removed (their o_proj columns zeroed): measured, not derived."""
    model, layer = tiny_model("llama"), 1  # 8 heads of 8 dims in 4 KV groups
    imp = estimate_importance(model, tiny_batches, autocast=False, progress=False)
    x = _post_attention_residual(model, tiny_batches, layer)
    ablated = copy.deepcopy(model)
    with torch.no_grad():
        for h in removed:
            arch.attention(arch.layers(ablated)[layer]).o_proj.weight[:, h * 8:(h + 1) * 8] = 0.0
    change = x - _post_attention_residual(ablated, tiny_batches, layer)
    eps = arch.layer_norms(arch.layers(model)[layer])[1].variance_epsilon
    measured = (change.square().sum(-1) / (x.square().mean(-1) + eps)).mean()
    gram = imp.head_gram[layer]
    torch.testing.assert_close(gram[removed][:, removed].sum(), measured, rtol=1e-4, atol=1e-7)
    assert imp.head_gram.shape == (model.config.num_hidden_layers, 8, 8)
    torch.testing.assert_close(gram, gram.T)


def test_head_gram_can_be_skipped(tiny_model, tiny_batches):
    imp = estimate_importance(tiny_model(), tiny_batches, autocast=False, progress=False, head_gram=False)
    assert imp.head_gram is None and imp.metadata()["head_selection"] == "scores"


@pytest.mark.parametrize("batch_agg", ["mean", "l2", "var"])
def test_streaming_over_batches_equals_one_big_batch(tiny_model, tiny_batches, batch_agg):
    model = tiny_model("qwen2")
    a = estimate_importance(model, tiny_batches, batch_agg=batch_agg, autocast=False, progress=False,
                            block_importance=True)
    b = estimate_importance(model, [torch.cat(tiny_batches)], batch_agg=batch_agg, autocast=False, progress=False)
    assert b.layers == {} and "bi" in a.layers
    for name in ("heads", "head_gram", "neurons", "channels"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-6)


def _no_batches():
    raise AssertionError("validation must happen before any forward pass")
    yield  # pragma: no cover


@pytest.mark.parametrize("kwargs,match", [({"seq_agg": "max"}, "allowed: mean, l2, var"),
                                          ({"batch_agg": "sum"}, "allowed: mean, l2, var"),
                                          ({"head_score": "qk"}, "allowed: output, input")])
def test_bad_aggregation_raises_before_any_forward(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        estimate_importance(tiny_model(), _no_batches(), progress=False, **kwargs)


@pytest.mark.parametrize("kwargs,match", [({"criteria": ["bi", "fisher"]}, "bi, drop_one, angular"),
                                          ({"angular_tokens": "first"}, "last, all"),
                                          ({"block_sizes": [4]}, "1..3")])
def test_bad_layer_options_raise_before_any_forward(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        layer_importance(tiny_model(), _no_batches(), progress=False, **kwargs)


def test_layer_importance_matches_hand_computation(tiny_model, tiny_batches):
    model = tiny_model("mistral")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    imp = layer_importance(model, tiny_batches, angular_tokens="all", autocast=False, progress=False)
    # drop-one = loss of the physically depth-pruned model minus the full model's loss
    loss = lambda m: sum(m(ids, labels=ids).loss * ids[:, 1:].numel() for ids in tiny_batches) / sum(  # noqa: E731
        ids[:, 1:].numel() for ids in tiny_batches)
    with torch.no_grad():
        base = loss(model)
        for i in range(4):
            want = loss(prune_depth(model, [i])) - base
            assert imp.layers["drop_one"][i].item() == pytest.approx(want.item(), abs=1e-5)
    # angular distance of blocks, over all tokens, from the captured residual stream
    t = _capture(model, tiny_batches)
    h = [t[f"in{i}"] for i in range(4)] + [t["out3"]]
    for n in (1, 2, 3):
        want = [torch.arccos(F.cosine_similarity(h[l], h[l + n], dim=-1).clamp(-1, 1)).mean() / math.pi
                for l in range(5 - n)]
        torch.testing.assert_close(imp.layers[f"angular_{n}"], torch.stack(want), rtol=1e-4, atol=1e-6)
        assert imp.best_block(n)[0] == int(torch.stack(want).argmin())
    step = prune_depth(model, num_layers=2, importance=imp, criterion="angular").workbook_steps[-1]
    start = imp.best_block(2)[0]
    assert step["dropped_layers"] == [start, start + 1] and step["contiguous"]
    # BI agrees with the width pass; the model is untouched (weights, no leftover hooks or overrides)
    torch.testing.assert_close(imp.layers["bi"], estimate_importance(model, tiny_batches, autocast=False, progress=False,
                                                                    block_importance=True).layers["bi"])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not any("forward" in layer.__dict__ for layer in arch.layers(model))


def test_last_token_angular_uses_final_position(tiny_model, tiny_batches):
    model = tiny_model("llama")
    imp = layer_importance(model, tiny_batches, criteria=["angular"], block_sizes=[2], autocast=False, progress=False)
    t = _capture(model, tiny_batches)
    h = [t[f"in{i}"][:, -1] for i in range(4)] + [t["out3"][:, -1]]
    want = torch.stack([torch.arccos(F.cosine_similarity(h[l], h[l + 2], dim=-1).clamp(-1, 1)).mean() / math.pi
                        for l in range(3)])
    torch.testing.assert_close(imp.layers["angular_2"], want, rtol=1e-4, atol=1e-6)
    assert set(imp.layers) == {"angular_2"}


def test_baselines_share_the_interface(tiny_model, tiny_batches):
    model = tiny_model("qwen2", tie_word_embeddings=True)
    act = estimate_importance(model, tiny_batches, autocast=False, progress=False)
    mag, rnd = magnitude_importance(model), random_importance(model, seed=3)
    for imp in (mag, rnd):
        assert isinstance(imp, Importance) and imp.sizes == act.sizes
        for name in ("heads", "neurons", "channels"):
            assert getattr(imp, name).shape == getattr(act, name).shape
    assert torch.equal(rnd.neurons, random_importance(model, seed=3).neurons)
    assert not torch.equal(rnd.neurons, random_importance(model, seed=4).neurons)
    o = arch.attention(arch.layers(model)[1]).o_proj.weight
    torch.testing.assert_close(mag.heads[1, 5], o[:, 40:48].norm())
    embed = arch.embed_tokens(model).weight
    assert mag.channels[0] > embed[:, 0].norm()  # the readers and writers of channel 0 add to its norm


def test_save_load_roundtrip(tiny_model, tiny_batches, tmp_path):
    model = tiny_model("llama")
    imp = estimate_importance(model, tiny_batches, "l2", "var", autocast=False, progress=False)
    imp = imp.merge(layer_importance(model, tiny_batches, criteria=["drop_one"], autocast=False, progress=False))
    path = imp.save(tmp_path / "sub" / "scores.safetensors")
    back = Importance.load(path)
    assert [p.name for p in path.parent.iterdir()] == ["scores.safetensors"]  # no temp file left
    assert back.metadata() == imp.metadata()
    for name in ("heads", "head_gram", "neurons", "channels"):
        assert torch.equal(getattr(back, name), getattr(imp, name))
    assert back.layers.keys() == imp.layers.keys() and back.extra["base_loss"] == imp.extra["base_loss"]


def test_plots_return_figures(tiny_model, tiny_batches):
    from matplotlib.figure import Figure

    model = tiny_model("llama")
    imp = estimate_importance(model, tiny_batches, autocast=False, progress=False)
    imp = imp.merge(layer_importance(model, tiny_batches, criteria=["angular"], autocast=False, progress=False))
    sweep = {"mlp": {"activation": {0.9: 10.0, 0.5: 20.0}, "random": {0.9: [30.0, 40.0], 0.5: [90.0, 80.0, 99.0]}},
             "heads": {"activation": {0.6: 12.0}}}
    for fig in (plot_heads(imp), plot_neurons(imp), plot_channels(imp, sort=True, log=True), plot_layers(imp),
                plot_rank_matrix(torch.eye(3), ["a", "b", "c"], "agreement"),
                plot_criteria_sweep(sweep, reference=8.0), plot_curves({"x": {1: 2.0, 2: 3.0}}, "n", "ppl", "t"),
                plot_head_sets(imp.head_gram[0], {"one by one": [2.0, 3.0], "joint": [1.0, 2.0]}, layer=0, kv_groups=4)):
        assert isinstance(fig, Figure) and fig.axes
    assert len(plot_criteria_sweep(sweep).axes) == 2
    assert len(plot_criteria_sweep({**sweep, "a": sweep["mlp"], "b": sweep["mlp"]}).axes) == 4  # a 2 x 2 grid


# ----------------------------------------------------------------------------------------------------
# One pass, every aggregation and calibration subset (helpers.importance.study)


@pytest.mark.parametrize("chunk_size", [2, 3])
def test_statistics_reproduce_every_aggregation_and_subset(tiny_model, tiny_batches, chunk_size):
    model = tiny_model("llama")
    stats = collect_statistics(model, tiny_batches, chunk_size=chunk_size, autocast=False, progress=False)
    assert stats.n_samples == 6 and stats.n_chunks == 6 // chunk_size and stats.counts.tolist() == [chunk_size] * (6 // chunk_size)
    for seq_agg in ("mean", "l2", "var"):
        for batch_agg in ("mean", "l2", "var"):
            want = estimate_importance(model, tiny_batches, seq_agg, batch_agg, autocast=False, progress=False)
            got = stats.importance(seq_agg, batch_agg)
            for name in ("heads", "neurons", "channels"):
                torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-6)
    # one chunk = calibrating on just its samples (chunks of 3 straddle the batches of 2)
    samples = torch.cat(tiny_batches)
    want = estimate_importance(model, [samples[chunk_size:2 * chunk_size]], autocast=False, progress=False)
    got = stats.importance(chunks=[1])
    assert got.n_samples == chunk_size
    for name in ("heads", "neurons", "channels"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="chunks"):
        stats.importance(chunks=[9])


def test_rank_statistics():
    a = torch.tensor([[1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]])
    b = torch.tensor([[10.0, 20.0, 30.0, 40.0], [1.0, 2.0, 3.0, 4.0]])
    torch.testing.assert_close(spearman(a, b), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(kendall(a, b), torch.tensor([1.0, -1.0]))
    x, y = torch.randn(50, generator=torch.Generator().manual_seed(0)), torch.randn(50)
    pairs = [(i, j) for i in range(50) for j in range(i + 1, 50)]
    tau = sum(float(torch.sign(x[i] - x[j]) * torch.sign(y[i] - y[j])) for i, j in pairs) / len(pairs)
    assert kendall(x, y).item() == pytest.approx(tau, abs=1e-6)
    assert topk_overlap(torch.tensor([4.0, 3, 2, 1]), torch.tensor([4.0, 1, 3, 2]), keep=0.5).item() == 0.5
    imp = Importance(heads=a, neurons=a, channels=a[0])
    assert compare(imp, imp, method="overlap") == {"heads": 1.0, "neurons": 1.0, "channels": 1.0}
    with pytest.raises(ValueError, match="spearman, kendall, overlap"):
        compare(imp, imp, method="pearson")
