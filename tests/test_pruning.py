"""Width / depth surgery on tiny random models: exact equivalences, GQA layouts, KV cache, save/reload."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers import architecture as arch
from helpers import pruning
from helpers.importance import Importance, estimate_importance, layer_importance, random_importance
from helpers.pruning import candidate_architectures, count_parameters
from helpers.models import load_recipe, save_model
from helpers.pruning import prune_depth, prune_width, pruning_recipe, select_heads, select_heads_joint
from tests.test_models import tiny_tokenizer

_deepcopy = copy.deepcopy
IDS = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(2))


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def scores_with_low(model, **low) -> Importance:
    """Random scores, except the given units, which get -1 (so pruning removes exactly them)."""
    imp = random_importance(model, seed=5)
    for name, index in low.items():
        getattr(imp, name)[index] = -1.0
    return imp


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("tied", [False, True])
def test_pruning_to_current_sizes_changes_nothing(tiny_model, family, tied):
    model = tiny_model(family, tie_word_embeddings=tied)
    c = model.config
    same = prune_width(model, random_importance(model), c.hidden_size, c.intermediate_size,
                       c.num_attention_heads, c.num_key_value_heads)
    assert torch.equal(logits(same), logits(model))
    assert torch.equal(logits(prune_width(model, None)), logits(model))  # nothing to prune needs no scores
    assert torch.equal(logits(prune_depth(model, [])), logits(model))
    assert torch.equal(logits(prune_depth(model, num_layers=4, importance=random_importance(model))), logits(model))


def test_zeroed_neurons_then_removed_give_identical_logits(tiny_model):
    model = tiny_model("llama", mlp_bias=True)
    drop = torch.stack([torch.randperm(128, generator=torch.Generator().manual_seed(l))[:48] for l in range(4)])
    with torch.no_grad():
        for l, layer in enumerate(arch.layers(model)):
            arch.mlp(layer).down_proj.weight[:, drop[l]] = 0.0  # the consumer no longer reads them
    imp = random_importance(model, seed=5)
    imp.neurons.scatter_(1, drop, -1.0)
    pruned = prune_width(model, imp, intermediate_size=80)
    assert pruned.config.intermediate_size == 80 and arch.mlp(arch.layers(pruned)[0]).gate_proj.bias.shape == (80,)
    torch.testing.assert_close(logits(pruned), logits(model), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_zeroed_query_heads_then_removed_give_identical_logits(tiny_model, family):
    model = tiny_model(family)  # 8 heads in 4 KV groups of 2
    drop = [1, 2, 5, 6]  # one head in every group
    with torch.no_grad():
        for layer in arch.layers(model):
            for h in drop:
                arch.attention(layer).o_proj.weight[:, h * 8:(h + 1) * 8] = 0.0
    imp = scores_with_low(model, heads=(slice(None), drop))
    pruned = prune_width(model, imp, num_attention_heads=4)
    c = pruned.config
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim) == (4, 4, 8)
    assert arch.attention(arch.layers(pruned)[0]).num_key_value_groups == 1
    torch.testing.assert_close(logits(pruned), logits(model), rtol=0, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_zeroed_kv_groups_then_removed_give_identical_logits(tiny_model, family):
    model = tiny_model(family, num_key_value_heads=2)  # 8 heads in 2 KV groups of 4
    with torch.no_grad():
        for layer in arch.layers(model):
            arch.attention(layer).o_proj.weight[:, 32:64] = 0.0  # every query head of group 1
    imp = scores_with_low(model, heads=(slice(None), slice(4, 8)))
    pruned = prune_width(model, imp, num_key_value_heads=1)
    assert (pruned.config.num_attention_heads, pruned.config.num_key_value_heads) == (4, 1)
    torch.testing.assert_close(logits(pruned), logits(model), rtol=0, atol=1e-5)


@pytest.mark.parametrize("tied", [False, True])
def test_zeroed_hidden_channels_then_removed_match_up_to_rmsnorm_scale(tiny_model, tied):
    """A channel that is zero in the whole residual stream (embedding column, o_proj / down_proj rows and
    biases) adds nothing to any output, but it still counts in RMSNorm's mean square:
    mean over d channels = (d'/d) * mean over the d' kept ones. Multiplying every norm weight of the
    pruned model by sqrt(d/d') undoes exactly that (eps ~ 0), so the logits must then match."""
    model = tiny_model("llama", tie_word_embeddings=tied, attention_bias=True, mlp_bias=True, rms_norm_eps=1e-12)
    drop = [0, 7, 8, 12, 30, 31, 50, 63]  # 56 left: Llama needs hidden_size % heads == 0
    with torch.no_grad():
        arch.embed_tokens(model).weight[:, drop] = 0.0
        for layer in arch.layers(model):
            for writer in (arch.attention(layer).o_proj, arch.mlp(layer).down_proj):
                writer.weight[drop] = 0.0
                writer.bias[drop] = 0.0
    pruned = prune_width(model, scores_with_low(model, channels=drop), hidden_size=64 - len(drop))
    assert arch.is_tied(pruned) == tied and pruned.lm_head.weight.shape == (128, 56)
    with torch.no_grad():
        for layer in arch.layers(pruned):
            for norm in arch.layer_norms(layer):
                norm.weight *= (64 / 56) ** 0.5
        arch.final_norm(pruned).weight *= (64 / 56) ** 0.5
    torch.testing.assert_close(logits(pruned), logits(model), rtol=1e-4, atol=1e-5)


# hidden sizes divisible by every head count reached: transformers' Llama config requires it
@pytest.mark.parametrize("heads,kv,hidden", [(9, 3, 72), (8, 4, 168), (8, 2, 168), (4, 4, 168), (8, 1, 168)])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_gqa_layouts_give_valid_models(tiny_model, family, heads, kv, hidden):
    model = tiny_model(family, num_attention_heads=heads, num_key_value_heads=kv, hidden_size=hidden)
    imp = random_importance(model, seed=1)
    per_group = heads // kv
    targets = [{"num_attention_heads": kv * (per_group - 1)}] if per_group > 1 else []
    targets += [{"num_key_value_heads": kv - 1}] if kv > 1 else []
    targets += [{"num_key_value_heads": 1, "num_attention_heads": 1}]
    for target in targets:
        pruned = prune_width(model, imp, **target)
        c = pruned.config
        assert c.num_attention_heads % c.num_key_value_heads == 0
        assert logits(pruned).shape == (2, 10, 128)
        assert count_parameters(c) == sum(p.numel() for p in pruned.parameters())


def test_select_heads_is_group_aware():
    scores = torch.tensor([5.0, 1, 2, 9, 0, 0, 3, 4])  # 4 groups of 2: sums 6, 11, 0, 7
    q, kv = select_heads(scores, 4, 4, 2)
    assert kv.tolist() == [1, 3] and q.tolist() == [2, 3, 6, 7]
    q, kv = select_heads(scores, 4, 4, 4)
    assert kv.tolist() == [0, 1, 2, 3] and q.tolist() == [0, 3, 4, 7]


def _brute_force_heads(gram, n_kv_heads, num_heads, num_kv):
    """Best groups by whole-group error, then the best query heads inside each kept group, by enumeration."""
    per = gram.shape[0] // n_kv_heads
    err = lambda units: float(gram[units][:, units].sum())  # noqa: E731
    heads_of = lambda groups: [h for g in groups for h in range(g * per, (g + 1) * per)]  # noqa: E731
    groups = min(itertools.combinations(range(n_kv_heads), num_kv),
                 key=lambda kept: err(heads_of(g for g in range(n_kv_heads) if g not in kept)))
    queries = []
    for g in groups:
        members = list(range(g * per, (g + 1) * per))
        queries += min(itertools.combinations(members, num_heads // num_kv),
                       key=lambda kept: err([h for h in members if h not in kept]))
    return queries, list(groups)


@pytest.mark.parametrize("num_heads,num_kv", [(8, 4), (4, 4), (4, 2), (2, 2), (6, 2), (3, 1)])
def test_select_heads_joint_matches_brute_force(num_heads, num_kv):
    n_kv_heads = 4 if num_heads % 3 else 3  # 12 heads: 4 groups of 3 or 3 groups of 4
    a = torch.randn(12, 20, generator=torch.Generator().manual_seed(num_heads * 10 + num_kv))
    gram = a @ a.T  # a valid Gram matrix [12, 12]
    q, kv = select_heads_joint(gram, n_kv_heads, num_heads, num_kv)
    want_q, want_kv = _brute_force_heads(gram, n_kv_heads, num_heads, num_kv)
    assert (q.tolist(), kv.tolist()) == (want_q, want_kv)


def test_select_heads_joint_keeps_a_weak_head_over_two_that_cancel():
    """Heads 0 and 1 write opposite outputs: each alone looks important (diagonal 4), together they write nothing.
    Keeping one head of the group, per-head scores keep head 0; the joint error keeps head 2 and loses nothing."""
    o = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 0.1]])  # per-head outputs [3 heads, 2 dims]
    gram = o @ o.T
    assert select_heads(gram.diagonal().sqrt(), 1, 1, 1)[0].tolist() == [0]
    assert select_heads_joint(gram, 1, 1, 1)[0].tolist() == [2]


def test_select_heads_joint_greedy_beyond_the_exhaustive_limit(monkeypatch):
    a = torch.randn(12, 20, generator=torch.Generator().manual_seed(3))
    gram = a @ a.T
    exhaustive = select_heads_joint(gram, 4, 8, 4)  # drop one head per group: greedy is exact there
    monkeypatch.setattr(pruning.heads, "EXHAUSTIVE_LIMIT", 0)
    greedy = select_heads_joint(gram, 4, 8, 4)
    assert [t.tolist() for t in greedy] == [t.tolist() for t in exhaustive]
    q, kv = select_heads_joint(gram, 4, 2, 2)
    assert len(q) == 2 and len(kv) == 2 and all(int(h) // 3 in kv.tolist() for h in q)


def test_activation_pruning_removes_heads_that_write_nothing(tiny_model, tiny_batches):
    """Zero some heads' o_proj columns: activation importance (joint selection) must remove exactly those,
    so the pruned model's logits equal the zeroed model's."""
    model = tiny_model("llama")  # 8 heads in 4 KV groups of 2
    drop = [0, 3, 5, 6]  # one head in every group
    with torch.no_grad():
        for layer in arch.layers(model):
            for h in drop:
                arch.attention(layer).o_proj.weight[:, h * 8:(h + 1) * 8] = 0.0
    imp = estimate_importance(model, tiny_batches, autocast=False, progress=False)
    pruned = prune_width(model, imp, num_attention_heads=4)
    assert pruned.workbook_steps[-1]["importance"]["head_selection"] == "joint"
    torch.testing.assert_close(logits(pruned), logits(model), rtol=0, atol=1e-5)


def test_depth_pruned_model_generates_with_kv_cache(tiny_model):
    model = tiny_model("qwen2", use_sliding_window=True, sliding_window=4, max_window_layers=2, num_hidden_layers=5)
    assert model.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 3
    pruned = prune_depth(model, [1, 3])
    assert pruned.config.layer_types == ["full_attention", "sliding_attention", "sliding_attention"]
    assert pruned.config.max_window_layers == 1 and pruned.config.num_hidden_layers == 3
    assert [arch.attention(layer).layer_idx for layer in arch.layers(pruned)] == [0, 1, 2]
    assert arch.layers(pruned)[1] is not arch.layers(model)[2]  # a copy, never the parent's modules
    with torch.no_grad():
        full = pruned(IDS).logits
        out = pruned(IDS[:, :-3], use_cache=True)
        step = pruned(IDS[:, -3:], cache=out.cache, use_cache=True).logits
    torch.testing.assert_close(step, full[:, -3:], rtol=1e-4, atol=1e-5)
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=1)
    assert torch.equal(pruned.generate(IDS, use_cache=True, **kwargs), pruned.generate(IDS, use_cache=False, **kwargs))


@pytest.mark.parametrize("family,tied", [("llama", True), ("mistral", False), ("qwen2", True), ("qwen2", False)])
def test_saved_pruned_model_reloads_with_stock_transformers(tiny_model, tiny_batches, tmp_path, family, tied):
    model = tiny_model(family, tie_word_embeddings=tied)
    imp = estimate_importance(model, tiny_batches, autocast=False, progress=False)
    imp = imp.merge(layer_importance(model, tiny_batches, criteria=["bi"], autocast=False, progress=False))
    pruned = prune_width(model, imp, hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)
    pruned = prune_depth(pruned, num_layers=3, importance=random_importance(pruned), criterion="random")
    dest = save_model(pruned, tiny_tokenizer(), tmp_path / "student", pruning_recipe(pruned, parent="tiny-teacher"))
    back = AutoModelForCausalLM.from_pretrained(dest).eval()
    assert type(back) is type(model) and arch.is_tied(back) == tied
    assert torch.equal(logits(back), logits(pruned))
    recipe = load_recipe(dest)
    assert [s["op"] for s in recipe["steps"]] == ["prune_width", "prune_depth"]
    assert recipe["params"] == sum(p.numel() for p in back.parameters())


def test_input_model_is_unchanged(tiny_model):
    model = tiny_model("qwen2", tie_word_embeddings=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    imp = random_importance(model)
    prune_width(model, imp, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
    prune_depth(model, num_layers=2, importance=imp, contiguous=True)
    assert model.config.to_dict() == config and model.state_dict().keys() == state.keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert arch.is_tied(model) and not hasattr(model, "workbook_steps")


@pytest.mark.parametrize("kwargs,match", [
    ({"hidden_size": 65}, r"1\.\.64"),
    ({"intermediate_size": 0}, r"1\.\.128"),
    ({"num_key_value_heads": 5}, r"1\.\.4"),
    ({"num_attention_heads": 6}, r"multiple of num_key_value_heads=4.*\[4, 8\]"),
    ({"num_attention_heads": 8, "num_key_value_heads": 2}, r"at most 2 query heads per KV group"),
    ({"hidden_size": 60}, "multiple of the number of attention heads"),  # transformers' own Llama rule
    ({"intermediate_size": 64, "importance": None}, "needs an Importance"),
])
def test_bad_width_targets_raise_before_any_work(tiny_model, monkeypatch, kwargs, match):
    model = tiny_model("llama")
    monkeypatch.setattr(pruning.width.copy, "deepcopy", _no_model_copy)
    importance = kwargs.pop("importance", random_importance(model))
    with pytest.raises(ValueError, match=match):
        prune_width(model, importance, **kwargs)


def _no_model_copy(obj, *args):
    assert not isinstance(obj, torch.nn.Module), "surgery started before validation"
    return _deepcopy(obj, *args)


@pytest.mark.parametrize("kwargs,match", [
    ({"layers_to_drop": [0, 1, 2, 3]}, "Cannot drop all 4 layers"),
    ({"layers_to_drop": [4]}, r"0\.\.3"),
    ({"layers_to_drop": [1, 1]}, "distinct"),
    ({"num_layers": 0, "importance": None}, r"1\.\.4"),
    ({"num_layers": 2}, "needs an importance"),
    ({"num_layers": 2, "importance": "rnd", "criterion": "bi"}, r"available: \['random', 'angular'\]"),
    ({"num_layers": 2, "importance": "rnd", "criterion": "angular"}, "No 'angular_2' scores"),
    ({"layers_to_drop": [1], "num_layers": 3}, "either"),
])
def test_bad_depth_targets_raise_before_any_work(tiny_model, monkeypatch, kwargs, match):
    model = tiny_model("llama")
    if kwargs.get("importance") == "rnd":
        kwargs["importance"] = random_importance(model)
    monkeypatch.setattr(pruning.width.copy, "deepcopy", _no_model_copy)
    with pytest.raises(ValueError, match=match):
        prune_depth(model, **kwargs)


def test_scores_of_another_model_are_refused(tiny_model):
    model, other = tiny_model("llama"), tiny_model("llama", intermediate_size=256)
    with pytest.raises(ValueError, match="other sizes"):
        prune_width(model, random_importance(other), intermediate_size=64)


@pytest.mark.parametrize("family,extra", [("llama", {}), ("llama", {"attention_bias": True, "mlp_bias": True}),
                                          ("mistral", {}), ("qwen2", {}), ("qwen2", {"head_dim": 16})])
@pytest.mark.parametrize("tied", [False, True])
def test_count_parameters_equals_real_count(tiny_model, family, extra, tied):
    model = tiny_model(family, tie_word_embeddings=tied, **extra)
    assert count_parameters(model.config) == sum(p.numel() for p in model.parameters())


def test_candidate_architectures(tiny_model):
    model = tiny_model("llama", hidden_size=128, intermediate_size=256, num_hidden_layers=6, head_dim=16)
    full = count_parameters(model.config)
    cands = candidate_architectures(model.config, full // 2, 0.1, hidden_multiple=32, intermediate_multiple=32)
    assert {c["kind"] for c in cands} == {"width", "depth", "both"}
    errors = [abs(c["error"]) for c in cands]
    assert errors == sorted(errors) and max(errors) <= 0.1
    for c in cands:
        assert c["hidden_size"] % c["num_attention_heads"] == 0  # Llama configs must validate
        assert (c["num_hidden_layers"] < 6) == (c["kind"] in ("depth", "both"))
    best = next(c for c in cands if c["kind"] == "both")
    sizes = {k: best[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads")}
    pruned = prune_width(model, random_importance(model), **sizes)
    pruned = prune_depth(pruned, num_layers=best["num_hidden_layers"], importance=random_importance(pruned))
    assert sum(p.numel() for p in pruned.parameters()) == best["params"]
    small = candidate_architectures(model.config, full // 2, 0.1, kinds=["width"])  # default grid: 128 / 8 = 16
    assert {c["kind"] for c in small} == {"width"} and len({c["hidden_size"] for c in small}) > 2
    assert all(c["hidden_size"] % 16 == 0 and c["intermediate_size"] % 32 == 0 for c in small)
    with pytest.raises(ValueError, match="between 0 and the current"):
        candidate_architectures(model.config, full + 1)
    with pytest.raises(ValueError, match="width, depth, both"):
        candidate_architectures(model.config, full // 2, kinds=["deep"])
