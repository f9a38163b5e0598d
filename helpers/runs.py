"""Where artifacts go, the workbook scale, metrics records and the results table.

Every notebook writes under ``runs/<scale>/`` (``$WORKBOOK_RUNS`` overrides): models in
``models/<name>``, metrics in one ``metrics.json`` keyed by model name, so one table can compare every model the
workbook produced (DESIGN.md section 4).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, TypeVar

SCALES = ("smoke", "laptop", "gpu")
T = TypeVar("T")


def scale() -> str:
    """``$WORKBOOK_SCALE`` (default ``laptop``), validated."""
    value = os.environ.get("WORKBOOK_SCALE", "laptop")
    if value not in SCALES:
        raise ValueError(f"WORKBOOK_SCALE={value!r} is not a scale; use one of {SCALES}.")
    return value


def by_scale(current: str, smoke: T, laptop: T, gpu: T) -> T:
    """Pick the value for scale ``current`` (validated): ``by_scale(SCALE, smoke=16, laptop=256, gpu=1024)``."""
    if current not in SCALES:
        raise ValueError(f"Unknown scale {current!r}; use one of {SCALES}.")
    return {"smoke": smoke, "laptop": laptop, "gpu": gpu}[current]


def runs_dir() -> Path:
    """``$WORKBOOK_RUNS`` or ``<repo>/runs/<scale>``: each scale keeps its own artifacts, so a smoke test
    never hands its tiny models to a laptop run."""
    default = Path(__file__).resolve().parent.parent / "runs" / scale()
    path = Path(os.environ.get("WORKBOOK_RUNS", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def model_dir(name: str) -> Path:
    """Where the model called ``name`` is (or will be) saved: ``runs/models/<name>``."""
    return runs_dir() / "models" / name


def _write_json_atomically(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


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
    _write_json_atomically(metrics_path(), records)
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


def results_table(columns: tuple[str, ...] = ("notebook", "params", "heldout_ppl", "tokens_seen")) -> str:
    """A markdown table of every recorded model (one row each) with the given columns."""
    records = load_metrics()
    head = "| model | " + " | ".join(columns) + " |"
    rows = [head, "|" + "---|" * (len(columns) + 1)]
    for name, rec in records.items():
        cells = []
        for c in columns:
            v = rec.get(c, "")
            cells.append(f"{v:,.2f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v))
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def check_close(name: str, ours: Any, reference: Any, atol: float = 1e-5, rtol: float = 1e-4) -> str:
    """Raise if a hand-written result differs from the helper's (tensors or numbers); else a short OK line."""
    import torch

    a, b = torch.as_tensor(ours, dtype=torch.float64), torch.as_tensor(reference, dtype=torch.float64)
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    err = (a - b).abs().max().item() if a.numel() else 0.0
    if not torch.allclose(a, b, atol=atol, rtol=rtol):
        raise AssertionError(f"{name}: max abs difference {err:.3g} exceeds atol={atol}, rtol={rtol}")
    return f"{name}: OK (max abs difference {err:.2g})"


def save_figure(fig, name: str) -> Path:
    """Save ``fig`` as ``runs/<scale>/figures/<name>.png`` (``make run`` copies these to docs/figures)."""
    path = runs_dir() / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    tmp.replace(path)
    return path
