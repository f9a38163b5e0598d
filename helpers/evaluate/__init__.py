"""Evaluation: perplexity (one documented protocol, each baseline measured once per scale), multiple-choice scoring (lm-eval's protocol), generation,
the teacher's agreement with a model's answers,
inference speed and memory, model summaries.

``from helpers.evaluate import perplexity, generate, measure_speed, model_summary``.
"""

from .agreement import AnswerAgreement, answer_agreement
from .cache import cached_perplexity, model_fingerprint, remember_perplexity
from .choice import ChoiceItem, ChoiceScore, choice_loglikelihoods, load_choice_items, score_choices
from .generation import generate
from .perplexity import PERPLEXITY_WINDOW, Perplexity, perplexity
from .speed import PeakMemory, Speed, compare_speed, measure_speed, model_memory_mib
from .summary import COMPONENTS, model_summary, parameters_by_component, plot_parameters

__all__ = ["PERPLEXITY_WINDOW", "Perplexity", "perplexity", "generate", "PeakMemory", "Speed", "measure_speed",
           "compare_speed", "model_memory_mib", "COMPONENTS", "parameters_by_component", "model_summary",
           "plot_parameters",
           "ChoiceItem", "ChoiceScore", "load_choice_items", "choice_loglikelihoods", "score_choices",
           "cached_perplexity", "remember_perplexity", "model_fingerprint", "AnswerAgreement", "answer_agreement"]
