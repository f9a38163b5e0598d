"""Distillation: one ``transformers.Trainer``-based engine that every variant (logit KD, hidden-state and embedding
KD, fine-tuning baselines) configures through :class:`DistillConfig`; its losses (``helpers.distill.losses``),
diagnostics and figures.

``from helpers.distill import DistillConfig, distill, save_distilled``.
"""

from . import losses
from .config import LOSSES, DistillConfig, LayerMap, last_k_layer_map, resolve_layer_map, uniform_layer_map
from .diagnostics import hidden_similarity, match_hidden_channels, teacher_agreement
from .plots import (plot_layer_map, plot_layer_similarity, plot_loss_curves, plot_ppl_vs_tokens, plot_projection,
                    plot_temperature)
from .run import DistillResult, as_inputs, distill, save_distilled, validate
from .trainer import PROJECTIONS_FILE, DistillModule, DistillTrainer, PerplexityCallback

__all__ = ["losses", "LOSSES", "LayerMap", "DistillConfig", "last_k_layer_map", "uniform_layer_map",
           "resolve_layer_map", "DistillResult", "validate", "as_inputs", "distill", "save_distilled",
           "PROJECTIONS_FILE", "DistillModule", "DistillTrainer", "PerplexityCallback", "match_hidden_channels",
           "teacher_agreement", "hidden_similarity", "plot_loss_curves", "plot_ppl_vs_tokens", "plot_temperature",
           "plot_projection", "plot_layer_similarity", "plot_layer_map"]
