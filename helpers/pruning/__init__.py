"""Pruning: width and depth surgery that builds a new, valid Hugging Face model (the input is never changed), GQA-aware
head selection, parameter budgets and the candidate architectures near one; unstructured and N:M sparsity masks
(``sparsity.py``).

``from helpers.pruning import prune_width, prune_depth, count_parameters, candidate_architectures``.
"""

from .budget import ARCHITECTURE_KINDS, SEARCHED, candidate_architectures, count_parameters
from .depth import choose_layers_to_drop, prune_depth
from .heads import EXHAUSTIVE_LIMIT, removal_error, select_heads, select_heads_joint
from .lineage import log_step, pruning_recipe
from .sparsity import (SPARSE_ROLES, MaskKeeper, apply_masks, imp_masks, input_norms, linear_weights, magnitude_masks,
                       nm_masks, random_masks_like, row_masks, sparsity_report, wanda_masks, wanda_scores)
from .width import prune_width

__all__ = ["prune_width", "prune_depth", "choose_layers_to_drop", "select_heads", "select_heads_joint",
           "removal_error", "EXHAUSTIVE_LIMIT", "count_parameters", "candidate_architectures", "ARCHITECTURE_KINDS",
           "SEARCHED", "pruning_recipe", "log_step", "SPARSE_ROLES", "linear_weights", "magnitude_masks", "input_norms",
           "wanda_scores", "row_masks", "wanda_masks", "nm_masks", "imp_masks", "random_masks_like", "apply_masks", "sparsity_report",
           "MaskKeeper"]
