"""Distillation: one ``transformers.Trainer``-based engine that every variant (logit KD, hidden-state and embedding
KD, fine-tuning baselines, sequence-level KD on teacher-written answers, on-policy KD on the student's own samples)
configures through :class:`DistillConfig`; its losses (``helpers.distill.losses``),
the teacher-logit cache (the teacher's top-k computed once for runs on the same tokens), diagnostics and figures.

``from helpers.distill import DistillConfig, distill, save_distilled``.
"""

from . import losses
from .config import LOSSES, DistillConfig, LayerMap, last_k_layer_map, resolve_layer_map, uniform_layer_map
from .diagnostics import hidden_similarity, match_hidden_channels, teacher_agreement
from .inputs import REJECTED_KEYS, as_inputs, check_preference_rows, validate
from .logit_cache import LOGIT_CACHE_KEYS, build_logit_cache, cached_or_built, load_logit_cache, topk_exactness
from .plots import (plot_layer_map, plot_layer_similarity, plot_loss_curves, plot_ppl_vs_tokens, plot_projection,
                    plot_temperature)
from .on_policy import OnPolicy, OnPolicyData, on_policy_schedule
from .run import DistillResult, distill, save_distilled
from .synthetic import GenerationSettings, pair_inputs, preference_inputs, sample_answers, synthetic_pairs
from .trainer import PROJECTIONS_FILE, DistillModule, DistillTrainer, PerplexityCallback

__all__ = ["losses", "LOSSES", "LayerMap", "DistillConfig", "last_k_layer_map", "uniform_layer_map",
           "resolve_layer_map", "DistillResult", "validate", "as_inputs", "check_preference_rows", "REJECTED_KEYS", "distill", "save_distilled",
           "LOGIT_CACHE_KEYS", "build_logit_cache", "load_logit_cache", "cached_or_built", "topk_exactness",
           "PROJECTIONS_FILE", "DistillModule", "DistillTrainer", "PerplexityCallback", "match_hidden_channels",
           "teacher_agreement", "hidden_similarity", "plot_loss_curves", "plot_ppl_vs_tokens", "plot_temperature",
           "plot_projection", "plot_layer_similarity", "plot_layer_map", "OnPolicy", "OnPolicyData", "on_policy_schedule", "GenerationSettings",
           "sample_answers", "synthetic_pairs", "pair_inputs", "preference_inputs"]
