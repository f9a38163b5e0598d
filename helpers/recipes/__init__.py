"""Recipes: compositions of the stages. Today the shared pruned students every later notebook starts from.

``from helpers.recipes import load_or_build_student, student_name``.
"""

from .students import (DEPTH_CRITERION, STUDENT_KINDS, TARGET_RATIO, WIDTH_AXES, build_student,
                       load_or_build_student, save_student, student_name, target_architectures)

__all__ = ["STUDENT_KINDS", "TARGET_RATIO", "DEPTH_CRITERION", "WIDTH_AXES", "student_name", "target_architectures",
           "build_student", "save_student", "load_or_build_student"]
