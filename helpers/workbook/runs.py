"""Where artifacts go, metrics records and the results table (markdown, plain rows, CSV).

Every notebook writes under ``runs/<scale>/`` (``$WORKBOOK_RUNS`` overrides): models in
``models/<name>``, metrics in one ``metrics.json`` keyed by model name, so one table can compare every model the
workbook produced.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

from ..io import repo_root, write_json_atomically, write_text_atomically
from .scales import scale

__all__ = ["runs_dir", "model_dir", "metrics_path", "load_metrics", "record_metrics", "record_baseline",
           "model_facts", "results_table", "results_rows", "write_results_csv"]

_MISSING = "–"  # an en dash: the cell of a value a model has no record of
_DEFAULT_COLUMNS = ("notebook", "params", "heldout_ppl", "tokens_seen")
_PERCENT = ("log_recovery",)  # stored as a fraction, shown as a percentage
_ONE_DECIMAL_SUFFIXES = ("_per_s", "_mib")  # speeds and memory


def runs_dir() -> Path:
    """``$WORKBOOK_RUNS`` or ``<repo>/runs/<scale>``: each scale keeps its own artifacts, so a smoke test
    never hands its tiny models to a laptop run."""
    default = repo_root() / "runs" / scale()
    path = Path(os.environ.get("WORKBOOK_RUNS", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir(name: str) -> Path:
    """Where the model called ``name`` is (or will be) saved: ``runs/models/<name>``."""
    return runs_dir() / "models" / name


def metrics_path() -> Path:
    return runs_dir() / "metrics.json"


def load_metrics() -> dict[str, dict]:
    """All records: ``{model_name: {notebook, scale, updated, **metrics}}``; ``{}`` when none (or corrupt)."""
    try:
        return json.loads(metrics_path().read_text())
    except (OSError, ValueError):
        return {}


def record_metrics(name: str, notebook: str, metrics: dict[str, Any], scale_name: str | None = None) -> dict:
    """Merge ``metrics`` into the record of model ``name`` (atomic rewrite of ``runs/metrics.json``)."""
    records = load_metrics()
    entry = records.get(name, {})
    entry.update(metrics)
    entry.update(notebook=notebook, scale=scale_name or scale(), updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    records[name] = entry
    write_json_atomically(metrics_path(), records)
    return entry


def record_baseline(name: str, notebook: str, params: int, ppl: Any) -> str:
    """Record an undistilled model (teacher or pruned student) re-measured on a notebook's own evaluation windows.

    ``ppl``: an ``evaluate.Perplexity``. The row is named ``"<name> @ <tokens> tokens"`` so it sits beside the runs
    it is compared with, on the same tokens, and the full-split row written by notebooks 00-03 is kept.
    """
    key = f"{name} @ {ppl.n_tokens:,} tokens"
    record_metrics(key, notebook, {"params": params, "heldout_ppl": round(ppl.ppl, 3), "ppl_tokens": ppl.n_tokens,
                                   "tokens_seen": 0})
    return key


def model_facts(name: str, params: int | None = None) -> dict[str, Any]:
    """What the saved checkpoint ``models/<name>`` says of itself: ``parent`` and ``method`` (its recipe.json: the
    last step's method), ``non_embedding_params`` (``params`` less the embedding and, when untied, the LM head, from
    its config.json), ``memory_mib`` (weights + KV cache at batch 1 after 320 tokens, fp32) and ``path``; ``{}`` when
    no checkpoint was saved under that name."""
    folder = model_dir(name)
    try:
        recipe = json.loads((folder / "recipe.json").read_text())
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    steps = recipe.get("steps") or [{}]
    facts = {"parent": Path(str(recipe.get("parent", ""))).name or None, "path": str(folder),
             "method": recipe.get("method") or steps[-1].get("method")}
    if params is not None and {"vocab_size", "hidden_size"} <= set(config):
        embeddings = config["vocab_size"] * config["hidden_size"]
        facts["non_embedding_params"] = params - embeddings * (1 if config.get("tie_word_embeddings", True) else 2)
    return {**facts, **_memory(config, params)}


def _memory(config: dict, params: int | None) -> dict[str, float]:
    """``{"memory_mib": ...}`` (weights + KV cache at batch 1, :func:`helpers.evaluate.model_memory_mib`), or ``{}``."""
    from ..evaluate import model_memory_mib

    try:
        return {"memory_mib": round(model_memory_mib(config, params), 1)} if params else {}
    except (TypeError, ValueError, ZeroDivisionError):
        return {}


def _teacher_facts(params: int | None) -> dict[str, Any]:
    """The embedded teacher has no checkpoint under ``models/``: its config is in the teacher cache (never built here)."""
    from ..models import DEFAULT_TEACHER, cache_root

    try:
        return _memory(json.loads((cache_root() / DEFAULT_TEACHER / "config.json").read_text()), params)
    except (OSError, ValueError):
        return {}


def results_rows(columns: tuple[str, ...] = _DEFAULT_COLUMNS) -> list[dict[str, Any]]:
    """Every recorded model as a plain dict ``{"model": name, column: value, ...}``; ``None`` where not recorded.
    Columns ``parent``, ``method``, ``non_embedding_params``, ``memory_mib`` fall back on the saved checkpoint
    (:func:`model_facts`; the teacher's config comes from the teacher cache)."""
    rows = []
    for name, rec in load_metrics().items():
        facts = {}
        if {"parent", "method", "non_embedding_params", "memory_mib"} & set(columns):
            facts = model_facts(name, rec.get("params")) or (_teacher_facts(rec.get("params")) if name == "teacher" else {})
        rows.append({"model": name, **{c: rec.get(c, facts.get(c)) for c in columns}})
    return rows


def _cell(column: str, value: Any) -> str:
    """One markdown cell: recovery as a percentage (1 decimal), tokens/s and MiB with 1 decimal, other floats 2,
    integers with thousands separators, "–" for no value."""
    if value is None or value == "":
        return _MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if column in _PERCENT:
        return f"{100 * value:.1f}%"
    if column.endswith(_ONE_DECIMAL_SUFFIXES):
        return f"{value:,.1f}"
    return f"{value:,.2f}" if isinstance(value, float) else f"{value:,}"


def results_table(columns: tuple[str, ...] = _DEFAULT_COLUMNS) -> str:
    """A markdown table of every recorded model (one row each) with the given columns ("–" where none)."""
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for row in results_rows(columns):
        lines.append(f"| {row['model']} | " + " | ".join(_cell(c, row[c]) for c in columns) + " |")
    return "\n".join(lines)


def write_results_csv(path: str | Path, columns: tuple[str, ...] = _DEFAULT_COLUMNS) -> Path:
    """``results_rows(columns)`` as CSV (header ``model,<columns>``; raw values, recovery as a fraction, an empty
    field where none), written atomically. Returns the path."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["model", *columns], lineterminator="\n")
    writer.writeheader()
    writer.writerows(results_rows(columns))
    return write_text_atomically(path, buffer.getvalue())
