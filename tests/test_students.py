"""The shared ~60% students: targets from the search space, and building them from importance."""

from __future__ import annotations

import pytest
from transformers import LlamaConfig

from helpers import recipes as students
from helpers.pruning import count_parameters

SMOLLM2 = LlamaConfig(
    hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    head_dim=64, vocab_size=49152, tie_word_embeddings=True,
)


def test_targets_for_the_default_teacher_are_near_sixty_percent():
    t = students.target_architectures(SMOLLM2)
    full = count_parameters(SMOLLM2)
    assert abs(t["width"]["params"] / full - 0.6) < 0.05 and t["width"]["num_hidden_layers"] == 30
    assert abs(t["depth"]["params"] / full - 0.6) < 0.05 and t["depth"]["hidden_size"] == 576
    with pytest.raises(ValueError, match="ratio"):
        students.target_architectures(SMOLLM2, ratio=1.5)


@pytest.mark.parametrize("kind", students.STUDENT_KINDS)
def test_build_student_prunes_to_target_and_keeps_teacher(tiny_model, tiny_batches, kind):
    teacher = tiny_model(num_hidden_layers=10, hidden_size=128, intermediate_size=256)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = students.build_student(kind, teacher, tiny_batches)
    target = students.target_architectures(teacher.config)[kind]
    assert count_parameters(student.config) == target["params"] == sum(p.numel() for p in student.parameters())
    assert all((before[k] == v).all() for k, v in teacher.state_dict().items())
    assert student(tiny_batches[0]).logits.shape[-1] == teacher.config.vocab_size


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="width"):
        students.student_name("sideways")
