"""Importance: which heads, neurons, hidden channels and layers matter (activation scores, depth criteria,
baselines), how the choices compare (studies, rankings), and their figures.

``from helpers.importance import estimate_importance, layer_importance, Importance``.
"""

from ._pass import AGGREGATIONS, HEAD_SCORES
from .activation import estimate_importance, head_norms
from .baselines import magnitude_importance, random_importance
from .layers import ANGULAR_TOKENS, LAYER_CRITERIA, layer_importance, skip_layer
from .plots import (plot_channels, plot_criteria_sweep, plot_head_sets, plot_heads, plot_layers, plot_neurons,
                    plot_rank_matrix)
from .probe import ResidualProbe
from .ranking import compare, kendall, spearman, topk_overlap
from .results import Importance
from .study import UNITS, ImportanceStats, collect_statistics

__all__ = ["AGGREGATIONS", "HEAD_SCORES", "Importance", "estimate_importance", "head_norms", "layer_importance",
           "LAYER_CRITERIA", "ANGULAR_TOKENS", "skip_layer", "magnitude_importance", "random_importance",
           "ResidualProbe", "UNITS", "ImportanceStats", "collect_statistics", "spearman", "kendall", "topk_overlap",
           "compare", "plot_heads", "plot_neurons", "plot_channels", "plot_head_sets", "plot_layers",
           "plot_rank_matrix", "plot_criteria_sweep"]
