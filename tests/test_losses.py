"""Mathematical properties of the distillation losses (helpers/distill/losses/), on small random tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers.distill import losses as HL
from helpers.distill import losses as L
from helpers.distill.losses import _chunks as logit_chunks




B, S, V, H = 2, 5, 11, 8


@pytest.fixture
def logits() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, S, V, generator=g) * 2, torch.randn(B, S, V, generator=g) * 2


def _reference_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) per position, the textbook way."""
    p = p_logits.softmax(-1)
    return (p * (p_logits.log_softmax(-1) - q_logits.log_softmax(-1))).sum(-1)


@pytest.mark.parametrize("name", L.LOGIT_LOSSES)
def test_zero_for_identical_logits(logits, name):
    s, _ = logits
    assert L.logit_distillation_loss(s, s.clone(), name).abs() < 1e-6


@pytest.mark.parametrize("name", L.LOGIT_LOSSES)
def test_positive_for_different_logits(logits, name):
    s, t = logits
    assert L.logit_distillation_loss(s, t, name) > 1e-3


def test_forward_kl_matches_torch_kl_div(logits):
    s, t = logits
    expected = F.kl_div(s.log_softmax(-1), t.log_softmax(-1), log_target=True, reduction="sum") / (B * S)
    torch.testing.assert_close(L.forward_kl(s, t), expected)


def test_reverse_kl_swaps_roles(logits):
    s, t = logits
    torch.testing.assert_close(L.reverse_kl(s, t), _reference_kl(s, t).mean())
    torch.testing.assert_close(L.reverse_kl(s, t), L.forward_kl(t, s))


def test_jsd_symmetric_at_half_and_endpoints(logits):
    s, t = logits
    torch.testing.assert_close(L.generalized_jsd(s, t, 0.5), L.generalized_jsd(t, s, 0.5))
    torch.testing.assert_close(L.generalized_jsd(s, t, 0.0), L.forward_kl(s, t))
    torch.testing.assert_close(L.generalized_jsd(s, t, 1.0), L.reverse_kl(s, t))
    # the GKD definition with m = beta p_t + (1 - beta) p_s, written out
    beta = 0.3
    p_s, p_t = s.softmax(-1), t.softmax(-1)
    m = beta * p_t + (1 - beta) * p_s
    ref = beta * (p_t * (p_t / m).log()).sum(-1) + (1 - beta) * (p_s * (p_s / m).log()).sum(-1)
    torch.testing.assert_close(L.generalized_jsd(s, t, beta), ref.mean())
    assert L.generalized_jsd(s, t, 0.5) <= torch.log(torch.tensor(2.0)) + 1e-6  # JSD is bounded by log 2


@pytest.mark.parametrize("name", L.LOGIT_LOSSES)
def test_temperature_squared_scaling(logits, name):
    s, t = logits
    tau = 2.5
    scaled = L.logit_distillation_loss(s, t, name, temperature=tau)
    torch.testing.assert_close(scaled, tau**2 * L.logit_distillation_loss(s / tau, t / tau, name))


@pytest.mark.parametrize("name", L.LOGIT_LOSSES)
def test_masked_positions_change_nothing(logits, name):
    s, t = logits
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, 1], mask[1, 3:] = False, False
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = torch.randn_like(s2[~mask]) * 50
    t2[~mask] = float("nan")  # even garbage at ignored positions must not leak in
    a = L.logit_distillation_loss(s, t, name, mask=mask)
    b = L.logit_distillation_loss(s2, t2, name, mask=mask)
    torch.testing.assert_close(a, b)
    labels = torch.where(mask, 1, -100)
    torch.testing.assert_close(L.logit_distillation_loss(s2, t2, name, labels=labels), a)
    # mean over the unmasked positions only
    if name == "forward_kl":
        torch.testing.assert_close(a, _reference_kl(t, s)[mask].mean())


def test_masked_gradients_are_zero(logits):
    s, t = logits
    s = s.clone().requires_grad_(True)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 2] = False
    L.forward_kl(s, t, mask=mask).backward()
    assert s.grad[1, 2].abs().max() == 0
    assert s.grad[0, 0].abs().max() > 0


@pytest.mark.parametrize("name", L.LOGIT_LOSSES)
def test_top_k_with_full_vocab_equals_full_loss(logits, name):
    s, t = logits
    full = L.logit_distillation_loss(s, t, name)
    torch.testing.assert_close(L.logit_distillation_loss(s, t, name, top_k=V), full)
    if name == "forward_kl":
        torch.testing.assert_close(L.forward_kl(s, t, top_k=V, renormalize_student=False), full)


def _naive(name: str, s: torch.Tensor, t: torch.Tensor, tau: float, mask: torch.Tensor, beta: float = 0.3,
           top_k: int | None = None, renormalize_student: bool = True) -> torch.Tensor:
    """Textbook versions on full tensors, differentiated by plain autograd."""
    s, t = s / tau, t / tau
    s_logp = s.log_softmax(-1)
    if top_k is not None:
        t, index = t.topk(top_k, -1)
        s_logp = s.gather(-1, index).log_softmax(-1) if renormalize_student else s_logp.gather(-1, index)
    t_logp = t.log_softmax(-1)
    p_s, p_t = s_logp.exp(), t_logp.exp()
    if name == "forward_kl":
        per = (p_t * (t_logp - s_logp)).sum(-1)
    elif name == "reverse_kl":
        per = (p_s * (s_logp - t_logp)).sum(-1)
    else:
        m = beta * p_t + (1 - beta) * p_s
        per = beta * (p_t * (p_t / m).log()).sum(-1) + (1 - beta) * (p_s * (p_s / m).log()).sum(-1)
    return per[mask].mean() * tau**2


@pytest.mark.parametrize("name, top_k, renormalize", [
    ("forward_kl", None, True), ("reverse_kl", None, True), ("jsd", None, True),
    ("forward_kl", 4, True), ("forward_kl", 4, False), ("reverse_kl", 4, True), ("jsd", 4, True),
])
@pytest.mark.parametrize("rows_per_chunk", [1, 1000])
def test_values_and_gradients_match_textbook_formulas(logits, name, top_k, renormalize, rows_per_chunk, monkeypatch):
    """The chunked, fused-gradient implementation against plain autograd on the formulas (fp64)."""
    monkeypatch.setitem(logit_chunks.CHUNK_ELEMENTS, "cpu", rows_per_chunk * V)
    s, t = (x.double() for x in logits)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[0, 3] = mask[1, 0] = False
    s1, s2 = s.clone().requires_grad_(True), s.clone().requires_grad_(True)
    ours = L.logit_distillation_loss(s1, t, name, mask=mask, temperature=1.7, beta=0.3, top_k=top_k,
                                     renormalize_student=renormalize)
    ref = _naive(name, s2, t, 1.7, mask, 0.3, top_k, renormalize)
    torch.testing.assert_close(ours, ref)
    (3.0 * ours).backward()
    (3.0 * ref).backward()
    torch.testing.assert_close(s1.grad, s2.grad)


def test_top_k_renormalisation_conventions(logits):
    s, t = logits
    k = 3
    values, index = t.topk(k, -1)
    t_k = values.log_softmax(-1)
    ref_renorm = (t_k.exp() * (t_k - s.gather(-1, index).log_softmax(-1))).sum(-1).mean()
    ref_full = (t_k.exp() * (t_k - s.log_softmax(-1).gather(-1, index))).sum(-1).mean()
    torch.testing.assert_close(L.forward_kl(s, t, top_k=k), ref_renorm)
    torch.testing.assert_close(L.forward_kl(s, t, top_k=k, renormalize_student=False), ref_full)
    assert ref_full >= ref_renorm  # the un-renormalised student also pays for its tail mass
    with pytest.raises(ValueError, match="top_k"):
        L.forward_kl(s, t, top_k=V + 1)
    with pytest.raises(ValueError, match="forward_kl"):
        L.logit_distillation_loss(s, t, "jsd", top_k=3, renormalize_student=False)


def test_bf16_logits_are_computed_in_fp32(logits):
    s, t = logits
    out = L.forward_kl(s.bfloat16(), t.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, L.forward_kl(s.bfloat16().float(), t.bfloat16().float()))


def test_bad_arguments_are_refused(logits):
    s, t = logits
    with pytest.raises(ValueError, match="temperature"):
        L.forward_kl(s, t, temperature=0.0)
    with pytest.raises(ValueError, match="beta"):
        L.generalized_jsd(s, t, beta=1.5)
    with pytest.raises(ValueError, match="allowed"):
        L.logit_distillation_loss(s, t, "kl")


def test_causal_lm_loss_matches_shifted_cross_entropy(logits):
    s, _ = logits
    labels = torch.randint(0, V, (B, S))
    labels[0, 2] = -100
    expected = F.cross_entropy(s[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(L.causal_lm_loss(s, labels), expected)
    shifted = L.shift_labels(labels, attention_mask=torch.tensor([[1] * S, [1] * (S - 1) + [0]]))
    assert shifted[0, 1] == -100 and shifted[1, -2] == -100 and (shifted[:, -1] == -100).all()


# ----------------------------------------------------------------------------------------------------
# Hidden states


@pytest.mark.parametrize("kind", HL.HIDDEN_LOSSES)
def test_hidden_losses_zero_for_identical_states(kind):
    h = torch.randn(B, S, H)
    assert HL.hidden_state_loss([h, h * 2], [h, h * 2], kind).abs() < 1e-6


@pytest.mark.parametrize("kind", HL.HIDDEN_LOSSES)
def test_hidden_losses_respect_mask(kind):
    s, t = torch.randn(B, S, H), torch.randn(B, S, H)
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 1:] = False
    s2 = s.clone()
    s2[~mask] = 1e4
    torch.testing.assert_close(HL.hidden_state_loss([s], [t], kind, mask), HL.hidden_state_loss([s2], [t], kind, mask))


def test_hidden_loss_values():
    s, t = torch.randn(B, S, H), torch.randn(B, S, H)
    torch.testing.assert_close(HL.cosine_loss(s, t), (1 - F.cosine_similarity(s, t, dim=-1)).mean())
    torch.testing.assert_close(HL.mse_loss(s, t), F.mse_loss(s, t))
    variance = t.reshape(-1, H).var(0, unbiased=False).mean()
    torch.testing.assert_close(HL.nmse_loss(s, t), F.mse_loss(s, t) / (variance + 1e-6))
    # nmse is scale-free: scaling both states changes nothing; cosine ignores the student's scale
    torch.testing.assert_close(HL.nmse_loss(10 * s, 10 * t), HL.nmse_loss(s, t), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(HL.cosine_loss(3 * s, t), HL.cosine_loss(s, t))


def test_projection_shapes_and_identity_init():
    same = HL.HiddenProjection(H, H, num_layers=2)
    h = torch.randn(B, S, H)
    out = same([h, h])
    assert len(out) == 2 and torch.equal(out[0], h)
    wide = HL.HiddenProjection(6, H, num_layers=3)
    out = wide([torch.randn(B, S, 6)] * 3)
    assert [tuple(o.shape) for o in out] == [(B, S, H)] * 3
    assert wide.proj[0].weight.shape == (H, 6)
    with pytest.raises(ValueError):
        wide([torch.randn(B, S, 6)])
    # a student that kept teacher channels [1, 3, 4, 5, 6, 7]: selection init reproduces them exactly
    kept = torch.tensor([1, 3, 4, 5, 6, 7])
    wide.init_from_channels(kept)
    t = torch.randn(B, S, H)
    projected = wide([t[..., kept]] * 3)[0]
    torch.testing.assert_close(projected[..., kept], t[..., kept])
    # gradients reach the projection through the loss
    loss = HL.hidden_state_loss([torch.randn(B, S, 6)], [t], "mse", projection=HL.HiddenProjection(6, H, 1))
    assert loss.requires_grad


def test_embedding_loss_is_a_one_layer_hidden_loss():
    s, t = torch.randn(B, S, H), torch.randn(B, S, H)
    proj = HL.HiddenProjection(H, H)
    torch.testing.assert_close(HL.embedding_loss(s, t, "cosine", projection=proj), HL.cosine_loss(s, t))


def test_dynamic_alpha_is_detached():
    w = torch.tensor(2.0, requires_grad=True)
    logit_loss, intermediate = 3 * w, w**2  # 6 and 4 at w = 2
    alpha = HL.dynamic_alpha(logit_loss, intermediate)
    assert not alpha.requires_grad
    torch.testing.assert_close(alpha, torch.tensor(1.5))
    (alpha * intermediate).backward()
    torch.testing.assert_close(w.grad, torch.tensor(1.5 * 2 * 2.0))  # alpha * d(w^2)/dw, no d(alpha)/dw term
    torch.testing.assert_close(alpha * intermediate.detach(), logit_loss.detach())
