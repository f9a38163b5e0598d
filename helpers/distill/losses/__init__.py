"""Distillation losses as pure, typed functions: logits (``logits.py``, with the chunked kernels in ``_chunks.py``),
the forward KL against a cached top-k teacher (``cached.py``) and hidden states / embeddings through a learned
projection (``hidden.py``), and the contrastive ones: the teacher's answer against the student's (DPO with the
teacher as reference) and in-batch InfoNCE between pooled representations (``contrastive.py``); TAID's moving target (``taid.py``)."""

from .cached import topk_cached_kl
from .contrastive import (info_nce, masked_mean_pool, preference_loss, preference_margin, retrieval_accuracy,
                          sequence_logprobs)
from .hidden import (HIDDEN_LOSS_FNS, HIDDEN_LOSSES, HiddenProjection, cosine_loss, dynamic_alpha, embedding_loss,
                     hidden_state_loss, mse_loss, nmse_loss)
from .taid import TAID_SCHEDULES, TaidSchedule, taid_loss, taid_target
from .logits import (IGNORE_INDEX, LOGIT_LOSSES, causal_lm_loss, forward_kl, generalized_jsd, logit_distillation_loss,
                     masked_mean, resolve_mask, reverse_kl, shift_labels)

__all__ = ["IGNORE_INDEX", "LOGIT_LOSSES", "shift_labels", "resolve_mask", "masked_mean", "forward_kl", "reverse_kl",
           "generalized_jsd", "logit_distillation_loss", "causal_lm_loss", "topk_cached_kl", "HIDDEN_LOSSES",
           "HIDDEN_LOSS_FNS", "HiddenProjection", "cosine_loss", "mse_loss", "nmse_loss", "hidden_state_loss",
           "embedding_loss", "dynamic_alpha", "sequence_logprobs", "preference_margin", "preference_loss", "masked_mean_pool",
           "info_nce", "retrieval_accuracy", "TAID_SCHEDULES", "TaidSchedule", "taid_target", "taid_loss"]
