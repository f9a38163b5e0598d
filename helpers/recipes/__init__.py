"""Recipes: compositions of the stages: the shared pruned students every later notebook starts from, and the
evaluation that puts healed students side by side (``healing.py``), the lab, the command line (``shrink.py``) and
the students worth using (``release.py``, ``card.py``).

``from helpers.recipes import load_or_build_student, student_name, evaluate_healed``.
"""

from .answers import SDG_TEMPERATURE, SDG_TOP_P, teacher_answers
from .card import StudentEvaluation, evaluate_student, flops_per_token, student_card
from .healing import Baseline, HealedRow, evaluate_healed, healed_table, healed_verdicts, save_healed
from .lab import VERDICTS, Claim, claim_verdict, ensure_models, prune_depth_iteratively, scratch_model
from .lottery import TICKET_KINDS, TicketResult, lottery_tickets, small_model
from .release import PRESETS, build_students, plot_tradeoff, students_table
from .progressive import assistant_sizes, prune_width_to, width_sizes
from .scores import cached_importance, importance_path
from .students import (DEPTH_CRITERION, STUDENT_KINDS, TARGET_RATIO, WIDTH_AXES, build_student,
                       load_or_build_student, save_student, student_name, target_architectures)

__all__ = ["STUDENT_KINDS", "TARGET_RATIO", "DEPTH_CRITERION", "WIDTH_AXES", "student_name", "target_architectures",
           "build_student", "save_student", "load_or_build_student", "Baseline", "HealedRow", "evaluate_healed",
           "healed_verdicts", "healed_table", "save_healed", "SDG_TEMPERATURE", "SDG_TOP_P", "teacher_answers", "width_sizes", "assistant_sizes",
           "prune_width_to", "VERDICTS", "Claim", "claim_verdict", "ensure_models", "prune_depth_iteratively",
           "scratch_model", "TICKET_KINDS", "TicketResult", "small_model", "lottery_tickets",
           "StudentEvaluation", "evaluate_student", "flops_per_token", "student_card", "PRESETS", "build_students",
           "students_table", "plot_tradeoff", "cached_importance", "importance_path"]
