"""TAID: the moving target between the student's distribution and the teacher's, and its schedules."""

from __future__ import annotations

import pytest
import torch

from helpers import distill as D
from helpers.distill import losses as L


def _logits(seed: int) -> torch.Tensor:
    return torch.randn(2, 5, 17, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_taid_target_is_the_student_at_the_start_and_the_teacher_at_the_end():
    student, teacher = _logits(0), _logits(1)
    torch.testing.assert_close(torch.softmax(L.taid_target(student, teacher, 0.0), -1), torch.softmax(student.float(), -1))
    torch.testing.assert_close(torch.softmax(L.taid_target(student, teacher, 1.0), -1), torch.softmax(teacher.float(), -1))
    assert L.taid_loss(student, teacher, 0.0).item() == pytest.approx(0.0, abs=1e-6)
    assert L.taid_loss(student, teacher, 1.0).item() == pytest.approx(L.forward_kl(student, teacher).item(), rel=1e-5)
    half = L.taid_loss(student, teacher, 0.5).item()
    assert 0 < half < L.taid_loss(student, teacher, 1.0).item()
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        L.taid_target(student, teacher, 1.5)


def test_the_target_carries_no_gradient_to_the_student():
    student, teacher = _logits(0).float().requires_grad_(True), _logits(1).float()
    L.taid_loss(student, teacher, 1.0).backward()
    grad_taid = student.grad.clone()
    student.grad = None
    L.forward_kl(student, teacher).backward()
    torch.testing.assert_close(grad_taid, student.grad)


def test_schedules():
    linear = D.losses.TaidSchedule(10, "linear", t_start=0.4)
    ts = [linear.t] + [linear.update(1.0, step) for step in range(1, 11)]
    assert ts[0] == 0.4 and ts[-1] == pytest.approx(1.0) and ts == sorted(ts)
    falling, rising = D.losses.TaidSchedule(10, alpha=0.5), D.losses.TaidSchedule(10, alpha=0.5)
    for step in range(1, 6):
        falling.update(10.0 / step, step)  # the loss keeps falling: t runs ahead of the linear schedule
        rising.update(float(step), step)
        assert falling.t >= falling.linear(step) and rising.t >= rising.linear(step)
    assert falling.t > rising.t and falling.t <= 1.0
    with pytest.raises(ValueError, match="unknown"):
        D.losses.TaidSchedule(10, "cosine")


def test_distill_with_taid_logs_a_rising_t(tiny_model):
    blocks = torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    cfg = D.DistillConfig(taid="linear", taid_t_start=0.2, max_steps=4, batch_size=2, learning_rate=1e-3,
                          logging_steps=1, disable_tqdm=True, bf16=False)
    result = D.distill(tiny_model(seed=1, num_hidden_layers=2), tiny_model(seed=0), blocks, cfg)
    ts = [row["taid_t"] for row in result.history if "taid_t" in row]
    assert ts == pytest.approx([0.2, 0.4, 0.6, 0.8])


@pytest.mark.parametrize("change, match", [
    (dict(taid="linear", loss="reverse_kl"), "taid"),
    (dict(taid="adaptive", top_k=8), "taid"),
    (dict(taid="sometimes"), "taid"),
])
def test_bad_taid_configs(change, match):
    with pytest.raises(ValueError, match=match):
        D.DistillConfig(**change)


def test_a_resumed_taid_run_continues_the_schedule_exactly(tiny_model, tmp_path):
    blocks = torch.randint(3, 128, (8, 16), generator=torch.Generator().manual_seed(0))
    base = dict(taid="adaptive", taid_alpha=0.3, max_steps=4, batch_size=2, learning_rate=1e-3, logging_steps=1,
                disable_tqdm=True, bf16=False)
    student, teacher = tiny_model(seed=1, num_hidden_layers=2), tiny_model(seed=0)
    straight = D.distill(student, teacher, blocks, D.DistillConfig(**base))
    out = tmp_path / "ckpt"
    D.distill(student, teacher, blocks, D.DistillConfig(**{**base, "max_steps": 4}, output_dir=str(out), save_steps=2))
    import shutil
    shutil.rmtree(out / "checkpoint-4")  # as if the run had died after step 2's checkpoint
    resumed = D.distill(student, teacher, blocks, D.DistillConfig(**base, output_dir=str(out), resume_from_checkpoint=True))
    ts = lambda r: [row["taid_t"] for row in r.history if "taid_t" in row]  # noqa: E731
    assert ts(resumed)[-2:] == pytest.approx(ts(straight)[-2:])
    for a, b in zip(straight.student.parameters(), resumed.student.parameters()):
        torch.testing.assert_close(a, b)
