"""The teacher-logit cache (``helpers.distill.logit_cache``), its loss (``losses.topk_cached_kl``) and distillation
from it: the cache holds the teacher's top-k log-probs, survives a save/load round trip, refuses files of another
teacher, other tokens or corrupt ones, and a run from an fp32 cache without a teacher ends with the weights of the
run with the teacher and ``top_k=k``."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from helpers import distill as D
from helpers.distill import DistillTrainer
from helpers.distill.losses import forward_kl, topk_cached_kl

K = 16


@pytest.fixture
def teacher(tiny_model):
    return tiny_model()


@pytest.fixture
def student(tiny_model):
    return tiny_model(seed=1, num_hidden_layers=2)


@pytest.fixture(scope="module")
def blocks() -> torch.Tensor:
    """[16, 16] ids in [3, 128): a repeated (learnable) pattern and random blocks."""
    g = torch.Generator().manual_seed(0)
    pattern = torch.randint(3, 128, (8,), generator=g)
    return torch.cat([pattern.repeat(2).expand(8, 16), torch.randint(3, 128, (8, 16), generator=g)])


@pytest.fixture
def cache32(teacher, blocks) -> dict[str, torch.Tensor]:
    return D.build_logit_cache(teacher, blocks, top_k=K, progress=False, use_autocast=False, dtype=torch.float32)


def config(**overrides) -> D.DistillConfig:
    base = dict(max_steps=6, batch_size=4, learning_rate=5e-3, logging_steps=1, disable_tqdm=True, bf16=False, seed=0)
    return D.DistillConfig(**{**base, **overrides})


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------------
# The cache


def test_cache_holds_the_teachers_topk_log_probs(teacher, blocks, cache32):
    with torch.no_grad():
        want_values, want_index = teacher(blocks).logits.log_softmax(-1).topk(K, dim=-1)
    assert cache32["topk_logprobs"].shape == cache32["topk_indices"].shape == (16, 16, K)
    assert cache32["topk_logprobs"].dtype == torch.float32 and cache32["topk_indices"].dtype == torch.int32
    assert torch.equal(cache32["topk_indices"].long(), want_index)
    torch.testing.assert_close(cache32["topk_logprobs"], want_values, atol=1e-5, rtol=0)
    half = D.build_logit_cache(teacher, blocks, top_k=K, batch_size=3, progress=False, use_autocast=False)
    assert half["topk_logprobs"].dtype == torch.float16 and torch.equal(half["topk_indices"], cache32["topk_indices"])
    torch.testing.assert_close(half["topk_logprobs"].float(), want_values, atol=0, rtol=1e-3)  # fp16: 11-bit mantissa
    assert bool((half["topk_logprobs"][..., :-1] >= half["topk_logprobs"][..., 1:]).all())  # sorted, most likely first


def test_attention_mask_reaches_the_teacher(teacher, blocks):
    mask = torch.ones_like(blocks)
    mask[:, :4] = 0
    cache = D.build_logit_cache(teacher, {"input_ids": blocks, "attention_mask": mask}, top_k=4, progress=False,
                                use_autocast=False, dtype=torch.float32)
    with torch.no_grad():
        want = teacher(blocks, attention_mask=mask).logits.log_softmax(-1).topk(4, dim=-1).values
    torch.testing.assert_close(cache["topk_logprobs"][:, 4:], want[:, 4:], atol=1e-5, rtol=0)


def test_save_load_round_trip(teacher, blocks, tmp_path):
    path = tmp_path / "cache" / "teacher.safetensors"
    built = D.build_logit_cache(teacher, blocks, top_k=K, progress=False, use_autocast=False, path=path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # written atomically, no temp file left
    loaded = D.load_logit_cache(path, teacher, blocks, top_k=K)
    assert loaded.keys() == built.keys() and all(torch.equal(loaded[k], built[k]) for k in built)
    assert D.load_logit_cache(path).keys() == built.keys()  # nothing to check against: just read
    again = D.cached_or_built(path, teacher, blocks, top_k=K, progress=False)
    assert torch.equal(again["topk_logprobs"], built["topk_logprobs"])


def test_another_teacher_or_other_tokens_refused(teacher, student, blocks, tmp_path):
    path = tmp_path / "teacher.safetensors"
    D.build_logit_cache(teacher, blocks, top_k=K, progress=False, use_autocast=False, path=path)
    with pytest.raises(ValueError, match="another teacher.*delete it or build it again"):
        D.load_logit_cache(path, teacher=student)
    other = blocks.clone()
    other[0, 0] = 3 if other[0, 0] != 3 else 4
    with pytest.raises(ValueError, match="other tokens.*delete it or build it again"):
        D.load_logit_cache(path, inputs=other)
    with pytest.raises(ValueError, match="other tokens"):
        D.load_logit_cache(path, teacher, {"input_ids": blocks, "attention_mask": torch.ones_like(blocks)})
    with pytest.raises(ValueError, match="top 16 tokens, not top_k=8"):
        D.load_logit_cache(path, top_k=8)
    rebuilt = D.cached_or_built(path, teacher, other, top_k=8, progress=False)  # stale: built again and saved
    assert rebuilt["topk_indices"].shape == (16, 16, 8)
    assert torch.equal(D.load_logit_cache(path, teacher, other, 8)["topk_indices"], rebuilt["topk_indices"])


def test_corrupt_or_foreign_files_refused(teacher, blocks, tmp_path):
    path = tmp_path / "teacher.safetensors"
    D.build_logit_cache(teacher, blocks, top_k=K, progress=False, path=path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(ValueError, match="corrupt.*delete it or build it again"):
        D.load_logit_cache(path, teacher, blocks)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="corrupt"):
        D.load_logit_cache(path)
    safetensors.torch.save_file({"weight": torch.zeros(2)}, str(path))  # a safetensors file, but no cache
    with pytest.raises(ValueError, match="not written by build_logit_cache"):
        D.load_logit_cache(path)
    with pytest.raises(FileNotFoundError, match="build_logit_cache"):
        D.load_logit_cache(tmp_path / "missing.safetensors")
    assert D.cached_or_built(path, teacher, blocks, top_k=4, progress=False)["topk_indices"].shape[-1] == 4


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(top_k=0), ValueError, "top_k=0.*1..128"),
    (dict(top_k=129), ValueError, "top_k=129"),
    (dict(top_k=4.0), TypeError, "top_k"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(dtype=torch.int8), ValueError, "dtype"),
])
def test_bad_arguments_refused_before_the_teacher_runs(teacher, blocks, kwargs, error, match, monkeypatch):
    monkeypatch.setattr(type(teacher), "forward", lambda *a, **k: pytest.fail("the teacher ran"))
    with pytest.raises(error, match=match):
        D.build_logit_cache(teacher, blocks, **{"top_k": 4, "progress": False, **kwargs})


def test_bad_blocks_refused(teacher, blocks):
    with pytest.raises(ValueError, match=r"outside the model.s vocabulary \[0, 128\)"):
        D.build_logit_cache(teacher, blocks + 125, top_k=4, progress=False)
    with pytest.raises(ValueError, match=r"\[n_blocks"):
        D.build_logit_cache(teacher, blocks[0], top_k=4, progress=False)
    with pytest.raises(TypeError, match="integer"):
        D.build_logit_cache(teacher, blocks.float(), top_k=4, progress=False)
    with pytest.raises(ValueError, match="attention_mask"):
        D.build_logit_cache(teacher, {"input_ids": blocks, "attention_mask": blocks[:2]}, top_k=4, progress=False)


def test_topk_exactness(teacher, blocks, cache32):
    mass = D.topk_exactness(teacher, blocks, ks=(128, 1, K), use_autocast=False)
    assert list(mass) == [1, K, 128] and mass[1] < mass[K] < mass[128]
    assert mass[128] == pytest.approx(1.0, abs=1e-6)
    assert mass[K] == pytest.approx(cache32["topk_logprobs"].double().exp().sum(-1).mean().item(), abs=1e-6)
    with pytest.raises(ValueError, match="ks=0"):
        D.topk_exactness(teacher, blocks, ks=(0,))


# ----------------------------------------------------------------------------------------------------
# The loss


def _logits(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype), 2 * torch.randn(*shape, generator=g, dtype=dtype)


def _cache(teacher_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    values, index = teacher_logits.log_softmax(-1).topk(k, dim=-1)
    return values, index.int()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("renormalize", [True, False])
def test_cached_kl_equals_forward_kl_on_full_logits(temperature, renormalize):
    s, t = _logits(3, 7, 50)
    labels = torch.randint(0, 50, (3, 7))
    labels[0, :3] = -100
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(1)) > 0.2
    s.requires_grad_(True)
    want = forward_kl(s, t, mask, labels, temperature, top_k=8, renormalize_student=renormalize)
    got = topk_cached_kl(s, *_cache(t, 8), mask, labels, temperature, renormalize)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.autograd.grad(got, s)[0], torch.autograd.grad(want, s)[0], atol=1e-6, rtol=1e-5)
    # a teacher temperature T: cached log-probs / T give the target of logits / T
    torch.testing.assert_close(topk_cached_kl(s, _cache(t, 8)[0] / 3.0, _cache(t, 8)[1], mask),
                               forward_kl(s, t / 3.0, mask, top_k=8), atol=1e-5, rtol=1e-5)


def test_k_equal_to_the_vocabulary_is_the_full_forward_kl():
    s, t = _logits(2, 5, 40)
    for renormalize in (True, False):
        torch.testing.assert_close(topk_cached_kl(s, *_cache(t, 40), renormalize_student=renormalize),
                                   forward_kl(s, t), atol=1e-5, rtol=1e-5)


def test_float16_storage_error_is_small():
    """Measured: the loss from an fp16 cache is 1.6e-5 relative off the fp32 one here; asserted within 2e-3."""
    s, t = _logits(4, 32, 128, seed=3)
    values, index = _cache(t, 16)
    exact = topk_cached_kl(s, values, index)
    half = topk_cached_kl(s, values.half(), index)
    assert abs(half - exact) <= 2e-3 * exact


def test_properties_nonnegative_zero_at_the_teacher_and_nan_safe():
    s, t = _logits(2, 6, 30)
    values, index = _cache(t, 5)
    assert topk_cached_kl(s, values, index) >= 0
    assert topk_cached_kl(t, values, index).abs() < 1e-6  # the student *is* the teacher: zero on the k tokens
    s = s.clone()
    s[0, 0] = float("nan")
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 0] = False
    for renormalize in (True, False):
        z = s.clone().requires_grad_(True)
        loss = topk_cached_kl(z, values, index, mask, renormalize_student=renormalize)
        (grad,) = torch.autograd.grad(loss, z)
        assert torch.isfinite(loss) and torch.isfinite(grad).all() and not grad[0, 0].any()
    assert topk_cached_kl(s, values, index, torch.zeros(2, 6)) == 0  # no valid position: 0, not NaN


@pytest.mark.parametrize("renormalize", [True, False])
def test_gradcheck(renormalize):
    s, t = _logits(1, 3, 6, dtype=torch.float64)
    values, index = _cache(t, 3)
    mask = torch.tensor([[True, False, True]])
    fn = lambda z: topk_cached_kl(z, values, index, mask, temperature=1.5, renormalize_student=renormalize)  # noqa
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(True),))


def test_full_vocabulary_backward_matches_autograd_and_keeps_the_dtype():
    """The hand-written backward of the full-vocabulary path equals autograd through ``log_softmax`` (fp32), and a
    bf16 student gets a bf16 gradient computed in fp32."""
    s, t = _logits(2, 7, 50, seed=5)
    values, index = _cache(t, 6)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, -1] = False
    z = s.clone().requires_grad_(True)
    (got,) = torch.autograd.grad(topk_cached_kl(z, values, index, mask, temperature=2.0, renormalize_student=False), z)
    ref_z = s.clone().requires_grad_(True)
    s_logp = torch.log_softmax(ref_z / 2.0, -1).gather(-1, index)[mask]
    t_logp = torch.log_softmax(values / 2.0, -1)[mask]
    ref = (t_logp.exp() * (t_logp - s_logp)).sum(-1).mean() * 4.0
    (want,) = torch.autograd.grad(ref, ref_z)
    torch.testing.assert_close(got, want)
    zb = s.bfloat16().requires_grad_(True)
    (gb,) = torch.autograd.grad(topk_cached_kl(zb, values, index, mask, renormalize_student=False), zb)
    assert gb.dtype == torch.bfloat16 and not gb[1, -1].any()


def test_bad_shapes_refused():
    s, t = _logits(2, 5, 40)
    values, index = _cache(t, 4)
    with pytest.raises(ValueError, match="shape"):
        topk_cached_kl(s, values[:1], index[:1])
    with pytest.raises(ValueError, match="integer"):
        topk_cached_kl(s, values, index.float())


# ----------------------------------------------------------------------------------------------------
# Distillation from the cache


def test_distill_from_the_cache_without_a_teacher(student, blocks, cache32):
    result = D.distill(student, None, blocks, config(), teacher_logits=cache32)
    with torch.no_grad():
        before, after = (topk_cached_kl(m(blocks).logits, cache32["topk_logprobs"], cache32["topk_indices"],
                                        renormalize_student=False) for m in (student, result.student))  # as trained
    assert after < 0.9 * before  # the KL to the cached teacher falls (6 steps)
    assert result.student.workbook_steps[-1]["teacher_logit_cache"] == {"top_k": K}
    assert [r["step"] for r in result.history if "kd" in r] == list(range(1, 7))


def test_cached_run_matches_the_teacher_run_with_top_k(student, teacher, blocks, cache32):
    """Measured: max |weight difference| ~ 2e-6 after 6 AdamW steps (fp32 rounding of the two log-softmaxes)."""
    with_teacher = weights(D.distill(student, teacher, blocks, config(top_k=K)).student)
    cached = weights(D.distill(student, None, blocks, config(), teacher_logits=cache32).student)
    also_given = weights(D.distill(student, teacher, blocks, config(top_k=K), teacher_logits=cache32).student)
    for name in with_teacher:
        torch.testing.assert_close(cached[name], with_teacher[name], atol=1e-5, rtol=0)
        assert torch.equal(also_given[name], cached[name])  # a teacher passed with a cache is not run


def test_resume_from_a_checkpoint_with_the_cache(student, blocks, cache32, tmp_path):
    cfg = dict(max_steps=6, save_steps=3, teacher_temperature=2.0)
    full = D.distill(student, None, blocks, config(**cfg, output_dir=str(tmp_path / "a")), teacher_logits=cache32)
    resumed = D.distill(student, None, blocks, config(**cfg, output_dir=str(tmp_path / "b"),
                                                      resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-3")),
                        teacher_logits=cache32)
    a, b = weights(full.student), weights(resumed.student)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def no_training(monkeypatch):
    monkeypatch.setattr(DistillTrainer, "train", lambda *a, **k: pytest.fail("training started before validation"))


@pytest.mark.parametrize("overrides, match", [
    (dict(loss="jsd"), "loss='jsd' cannot train from a teacher-logit cache"),
    (dict(loss="reverse_kl"), "forward_kl' only"),
    (dict(loss="ce"), "drop teacher_logits"),
    (dict(hidden_loss="cosine"), "hidden states"),
    (dict(embedding_weight=1.0), "hidden states"),
    (dict(top_k=8), "top_k=8 but the teacher-logit cache keeps the top 16"),
])
def test_unsupported_configs_refused_before_training(student, teacher, blocks, cache32, no_training, overrides,
                                                     match):
    for t in (None, teacher):
        with pytest.raises(ValueError, match=match):
            D.distill(student, t, blocks, config(**overrides), teacher_logits=cache32)


def test_misfit_caches_refused_before_training(student, blocks, cache32, no_training):
    rows = {k: v[:4] for k, v in cache32.items()}
    with pytest.raises(ValueError, match="rows aligned with the blocks"):
        D.distill(student, None, blocks, config(), teacher_logits=rows)
    with pytest.raises(ValueError, match="keys"):
        D.distill(student, None, blocks, config(), teacher_logits={"topk_logprobs": cache32["topk_logprobs"]})
    out_of_range = {**cache32, "topk_indices": cache32["topk_indices"] + 128}
    with pytest.raises(ValueError, match="ids in"):
        D.distill(student, None, blocks, config(), teacher_logits=out_of_range)
    with pytest.raises(ValueError, match="needs a teacher"):
        D.distill(student, None, blocks, config())  # no cache, no teacher


def test_as_inputs_takes_the_cache_rows(blocks, cache32):
    inputs = D.as_inputs({"input_ids": blocks, **cache32}, 128)
    assert set(inputs) == {"input_ids", *D.LOGIT_CACHE_KEYS}
    with pytest.raises(ValueError, match="topk_logprobs and topk_indices"):
        D.as_inputs({"input_ids": blocks, "topk_indices": cache32["topk_indices"]}, 128)
    with pytest.raises(ValueError, match="floating point"):
        D.as_inputs({"input_ids": blocks, "topk_logprobs": cache32["topk_indices"],
                     "topk_indices": cache32["topk_indices"]}, 128)


def test_renormalised_topk_leaves_the_tail_free_so_forward_kl_defaults_to_the_full_student():
    """Renormalised over the teacher's top-k, the loss cannot see how much mass the student keeps outside them:
    lowering all k logits together changes nothing. With the full student distribution it does."""
    from helpers.distill import DistillConfig

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(1, 6, 50, generator=g), torch.randn(1, 6, 50, generator=g)
    values, index = _cache(t, 8)
    shifted = s.scatter_add(-1, index.long(), torch.full(index.shape, -5.0))  # the top-k lose mass to the tail
    same = [topk_cached_kl(z, values, index, renormalize_student=True) for z in (s, shifted)]
    torch.testing.assert_close(same[0], same[1])
    full = [topk_cached_kl(z, values, index, renormalize_student=False) for z in (s, shifted)]
    assert full[1] > full[0] + 1.0
    assert DistillConfig().renormalize_student is False and DistillConfig(loss="jsd").renormalize_student is True
