"""Pruning: width and depth surgery that builds a new, valid Hugging Face model (the input is never changed), GQA-aware
head selection, parameter budgets and the candidate architectures near one.

``from helpers.pruning import prune_width, prune_depth, count_parameters, candidate_architectures``.
"""

from .budget import ARCHITECTURE_KINDS, SEARCHED, candidate_architectures, count_parameters
from .depth import choose_layers_to_drop, prune_depth
from .heads import EXHAUSTIVE_LIMIT, removal_error, select_heads, select_heads_joint
from .lineage import log_step, pruning_recipe
from .width import prune_width

__all__ = ["prune_width", "prune_depth", "choose_layers_to_drop", "select_heads", "select_heads_joint",
           "removal_error", "EXHAUSTIVE_LIMIT", "count_parameters", "candidate_architectures", "ARCHITECTURE_KINDS",
           "SEARCHED", "pruning_recipe", "log_step"]
