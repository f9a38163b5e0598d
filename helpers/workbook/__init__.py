"""The workbook itself: scales, where runs write, metrics records and the report, figure conventions, widgets and
the verification cells (``check_close``), and how a comparison is stated (``log_recovery``, bootstrap bands,
``verdict``).

``from helpers.workbook import by_scale, check_close, record_metrics, save_figure, verdict``.
"""

from .checks import check_close
from .figures import new_figure, plot_bars, plot_curves, save_figure
from .runs import (load_metrics, metrics_path, model_dir, model_facts, record_baseline, record_metrics, results_rows,
                   results_table, runs_dir, write_results_csv)
from .scales import SCALES, by_scale, scale
from .verdicts import (Band, bootstrap_interval, log_recovery, paired_bootstrap_diff, plot_bands, ratio_to_teacher,
                       seed_band, verdict, verdict_from_diff, window_band, compare_runs, Verdict,
                       paired_verdict, verdict_cell)

__all__ = ["SCALES", "scale", "by_scale", "runs_dir", "model_dir", "metrics_path", "load_metrics", "record_metrics", "model_facts",
           "record_baseline", "results_table", "results_rows", "write_results_csv",
           "check_close", "new_figure", "save_figure", "plot_curves",
           "plot_bars", "prompt_box", "sliders", "valid_hidden_sizes", "width_sizer", "Band", "log_recovery", "ratio_to_teacher", "bootstrap_interval",
           "paired_bootstrap_diff", "window_band", "seed_band", "verdict", "verdict_from_diff", "compare_runs", "plot_bands",
           "Verdict", "paired_verdict", "verdict_cell"]


def __getattr__(name: str):  # the widgets import ipywidgets/IPython: only when a notebook asks for them
    if name in ("prompt_box", "sliders", "valid_hidden_sizes", "width_sizer"):
        from . import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
