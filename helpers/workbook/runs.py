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
_SPEED, _TWIN = "decode_tokens_per_s", "decode_measured_on"
_SHAPE_FIELDS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads", "tie_word_embeddings")  # the last defaults to True when absent


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
    its config.json), ``memory_mib`` (weights + KV cache at batch 1 after 320 tokens, fp32), ``architecture`` (its
    shape fields, equal for models that run the same kernels) and ``path``; ``{}`` when no checkpoint was saved under
    that name."""
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
    return {**facts, **_memory(config, params), "architecture": _architecture(config)}


def _architecture(config: dict) -> tuple | None:
    """The shape fields of a Llama-family config (lists made tuples), or ``None`` when a field is missing: two models
    with the same tuple run the same dense kernels, so they decode at the same speed whatever their weights."""
    if not set(_SHAPE_FIELDS[:-1]) <= set(config):
        return None
    return tuple(tuple(v) if isinstance(v, list) else v for v in (config.get(k, True) for k in _SHAPE_FIELDS))


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
        config = json.loads((cache_root() / DEFAULT_TEACHER / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {**_memory(config, params), "architecture": _architecture(config)}


def results_rows(columns: tuple[str, ...] = _DEFAULT_COLUMNS) -> list[dict[str, Any]]:
    """Every recorded model as a plain dict ``{"model": name, column: value, ...}``; ``None`` where not recorded.
    Columns ``parent``, ``method``, ``non_embedding_params``, ``memory_mib`` fall back on the saved checkpoint
    (:func:`model_facts`; the teacher's config comes from the teacher cache; a baseline row ``"<name> @ <n> tokens"``
    is the checkpoint ``<name>``). With ``decode_tokens_per_s`` every row also gets ``decode_measured_on``: the model
    whose timing the speed is, itself or, for a model never timed, the first timed model of the same architecture
    (one of its own notebook first)."""
    rows, archs = [], {}
    for name, rec in load_metrics().items():
        facts = {}
        if {"parent", "method", "non_embedding_params", "memory_mib", _SPEED} & set(columns):
            base = name.split(" @ ")[0]
            facts = model_facts(base, rec.get("params"))
            if not facts and base == "teacher":  # the embedded teacher: its config is in the teacher cache
                facts = _teacher_facts(rec.get("params"))
        archs[name] = (facts.get("architecture"), rec.get("notebook"))
        rows.append({"model": name, **{c: rec.get(c, facts.get(c)) for c in columns}})
    if _SPEED in columns:
        _speed_of_twins(rows, archs)
    return rows


def _speed_of_twins(rows: list[dict[str, Any]], archs: dict[str, tuple]) -> None:
    """Fill the decode speed of untimed models from a timed model of the same architecture (in place)."""
    timed = [r for r in rows if r[_SPEED] is not None]
    for row in rows:
        if row[_SPEED] is not None:
            row[_TWIN] = row["model"]
            continue
        arch, notebook = archs[row["model"]]
        twins = [t for t in timed if arch is not None and archs[t["model"]][0] == arch]
        twins.sort(key=lambda t: archs[t["model"]][1] != notebook)  # stable: same notebook first, then record order
        row[_TWIN] = twins[0]["model"] if twins else None
        row[_SPEED] = twins[0][_SPEED] if twins else None


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
    """A markdown table of every recorded model (one row each) with the given columns ("–" where none; "≈" before a
    decode speed timed on another model of the same architecture)."""
    lines = ["| model | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 1)]
    for row in results_rows(columns):
        cells = [_cell(c, row[c]) for c in columns]
        if row.get(_TWIN) not in (None, row["model"]):  # the speed of a twin architecture, not of this model
            cells[columns.index(_SPEED)] = "≈" + cells[columns.index(_SPEED)]
        lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results_csv(path: str | Path, columns: tuple[str, ...] = _DEFAULT_COLUMNS) -> Path:
    """``results_rows(columns)`` as CSV (header ``model,<columns>`` and ``decode_measured_on`` with the speed;
    raw values, recovery as a fraction, an empty
    field where none), written atomically. Returns the path."""
    buffer = io.StringIO()
    rows = results_rows(columns)
    fields = ["model", *columns] + ([_TWIN] if _SPEED in columns else [])
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomically(path, buffer.getvalue())
