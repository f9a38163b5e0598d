"""``make run``: every notebook, headless, with an estimate first, progress while it runs, reuse of finished work and
a clear stop on failure.

Before it starts, a few seconds of matrix products measure this machine's speed (GFLOP/s, in the precision the
notebooks will use: :func:`helpers.hardware.fast_dtype`, bf16 autocast where this CPU measured it faster, else
fp32). Each notebook declares its work at each scale in its metadata (``metadata.workbook.work_gflop``: seconds x GFLOP/s of a measured run); after a run, the work
measured here (``runs/<scale>/notebooks/timings.json``) replaces the declaration. Estimate = work / speed.
:func:`declare_work` (``python -m helpers run --declare-work``) writes a run's measured work back into the notebooks'
metadata, so a fresh clone's first run estimates from it.

A notebook whose executed copy in ``runs/<scale>/notebooks/`` finished without error and holds the source's current
cells is reused (its artifacts are on disk) unless ``clean`` is asked for. A kernel that hangs (no CPU progress for
``WORKBOOK_STALL_MINUTES`` while a cell runs) is killed and its notebook started once more
(:mod:`helpers.workbook.watchdog`). A failing notebook stops the run with its name,
the cell and the error; what finished stays.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..hardware import cpu_precision, fast_dtype, matmul_gflops
from ..io import repo_root, write_json_atomically, write_text_atomically
from .runs import runs_dir
from .scales import SCALES
from .watchdog import KernelWatchdog, stall_seconds

__all__ = ["NotebookPlan", "calibrate", "plan", "run_notebooks", "timings_path", "declare_work"]


@dataclass
class NotebookPlan:
    """One notebook of a run: where it is, where its executed copy goes, its work and what it will do."""

    source: Path
    output: Path
    work_gflop: float | None
    reuse: bool

    def estimate_s(self, gflops: float) -> float | None:
        return None if self.work_gflop is None else self.work_gflop / gflops


def calibrate(seconds: float = 2.0, size: int = 1024, dtype: torch.dtype | None = None) -> float:
    """Effective GFLOP/s of ``size`` x ``size`` matrix products on this CPU, in ``dtype`` (default: the notebooks'
    precision), over about ``seconds`` (after one warm-up product)."""
    return matmul_gflops(dtype or fast_dtype("cpu"), seconds, rows=size, k=size, n=size)


def _cells(notebook: dict) -> list[tuple[str, str]]:
    """(type, source) of every cell but the one papermill injects with the parameters."""
    return [(c.get("cell_type", ""), "".join(c.get("source", "")))
            for c in notebook.get("cells", []) if "injected-parameters" not in c.get("metadata", {}).get("tags", [])]


def _finished(source: Path, output: Path) -> bool:
    """The executed copy exists, holds the source's cells as they are now (metadata such as the declared work may
    differ), and papermill recorded an end without exception."""
    try:
        executed, current = json.loads(output.read_text()), json.loads(source.read_text())
    except (OSError, ValueError):
        return False
    meta = executed.get("metadata", {}).get("papermill", {})
    return bool(meta.get("end_time")) and not meta.get("exception") and _cells(executed) == _cells(current)


def _precision() -> str:
    """The notebooks' compute precision on this machine ("float32" or "bfloat16"; ``WORKBOOK_BF16=0`` forces float32)."""
    return str(fast_dtype(torch.device("cuda" if torch.cuda.is_available() else "cpu"))).replace("torch.", "")


def timings_path() -> Path:
    """``runs/<scale>/notebooks/timings.json``: measured seconds, GFLOP/s and work per notebook (read by the report)."""
    return runs_dir() / "notebooks" / "timings.json"


def _work(source: Path, scale_name: str, timings: dict) -> float | None:
    if source.name in timings:
        return float(timings[source.name]["work_gflop"])
    declared = json.loads(source.read_text()).get("metadata", {}).get("workbook", {}).get("work_gflop", {})
    return float(declared[scale_name]) if scale_name in declared else None


def plan(scale_name: str, notebooks: list[Path] | None = None, clean: bool = False) -> list[NotebookPlan]:
    """What a run at ``scale_name`` will do, notebook by notebook (validated before anything runs)."""
    if scale_name not in SCALES:
        raise ValueError(f"Unknown scale {scale_name!r}; use one of {SCALES}.")
    os.environ["WORKBOOK_SCALE"] = scale_name  # runs_dir() and the notebooks' kernels read it
    sources = notebooks or sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    missing = [str(p) for p in sources if not Path(p).is_file()]
    if missing or not sources:
        raise FileNotFoundError(f"No such notebook: {missing or 'notebooks/NN_*.ipynb is empty'}")
    out_dir = runs_dir() / "notebooks"
    timings = _load_timings()
    return [NotebookPlan(Path(s), out_dir / Path(s).name, _work(Path(s), scale_name, timings),
                         reuse=not clean and _finished(Path(s), out_dir / Path(s).name)) for s in sources]


def _load_timings() -> dict:
    try:
        return json.loads(timings_path().read_text())
    except (OSError, ValueError):
        return {}


def _minutes(seconds: float | None) -> str:
    return "unknown" if seconds is None else f"{seconds / 60:.1f} min"


def _print_plan(plans: list[NotebookPlan], gflops: float) -> None:
    print(f"This machine: {gflops:.0f} GFLOP/s in {str(fast_dtype('cpu')).replace('torch.', '')}. Estimated times:")
    todo = [p.estimate_s(gflops) for p in plans if not p.reuse]
    for p in plans:
        print(f"  {p.source.name:45s} {'reused (finished earlier)' if p.reuse else _minutes(p.estimate_s(gflops))}")
    if todo and None not in todo:
        print(f"  total about {_minutes(sum(todo))}; `make run CLEAN=1` starts from scratch")


def _explain_precision() -> None:
    """Say which precision the notebooks will use and why: the one-off measurement of :func:`cpu_precision` (some
    CPUs report native bf16 yet multiply bf16 matrices slower than fp32, e.g. a Xeon with AVX512-BF16 and no AMX)."""
    if torch.cuda.is_available() or os.environ.get("WORKBOOK_BF16", "auto") != "auto":
        return
    measured = cpu_precision()
    if measured["bfloat16"] is not None:
        print(f"Precision: {measured['dtype']} (measured once on this CPU: fp32 {measured['float32']:.0f}, bf16 "
              f"{measured['bfloat16']:.0f} GFLOP/s; WORKBOOK_BF16=0 or 1 overrides).", flush=True)


class _Stalled(RuntimeError):
    """A notebook's kernel stopped working mid-cell, on every attempt."""


def _execute(p: NotebookPlan, stall_s: float, attempts: int = 2) -> float:
    """Run one notebook with papermill under a :class:`KernelWatchdog`; a hung kernel is killed and the notebook
    started again (``attempts`` in all). Returns the seconds of the attempt that finished."""
    import papermill

    for attempt in range(1, attempts + 1):
        start = time.perf_counter()
        with KernelWatchdog(stall_s) as watchdog:
            try:
                papermill.execute_notebook(str(p.source), str(p.output), kernel_name="python3",
                                           cwd=str(p.source.parent), progress_bar=True)
            except Exception:
                if not watchdog.stalled:
                    raise
        if not watchdog.stalled:
            return time.perf_counter() - start
        print(f"\n{p.source.name}: the kernel did no work for {stall_s / 60:.0f} minutes while a cell was running "
              f"(a hung kernel); killed it (attempt {attempt} of {attempts}).", flush=True)
        _mark_unfinished(p.output)
    raise _Stalled(p.source.name)


def _mark_unfinished(output: Path) -> None:
    """Flag a killed run's executed copy so that :func:`_finished` never takes it for a finished one."""
    try:
        nb = json.loads(output.read_text())
    except (OSError, ValueError):
        return
    nb.setdefault("metadata", {}).setdefault("papermill", {})["exception"] = True
    write_text_atomically(output, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")


def run_notebooks(scale_name: str, notebooks: list[Path] | None = None, clean: bool = False) -> int:
    """Execute the notebooks at ``scale_name`` with papermill; 0 when all finished, 1 on the first failure."""
    from papermill.exceptions import PapermillExecutionError

    plans = plan(scale_name, notebooks, clean)
    stall_s = stall_seconds()
    gflops = calibrate()
    _print_plan(plans, gflops)
    _explain_precision()
    timings, actual = _load_timings(), {}
    for k, p in enumerate(plans, 1):
        if p.reuse:
            continue
        print(f"== [{k}/{len(plans)}] {p.source.name} (WORKBOOK_SCALE={scale_name}, "
              f"estimate {_minutes(p.estimate_s(gflops))})", flush=True)
        p.output.parent.mkdir(parents=True, exist_ok=True)
        try:
            seconds = _execute(p, stall_s)
        except PapermillExecutionError as err:
            print(f"\nmake run stopped: {p.source.name} failed in cell {err.cell_index} (execution count "
                  f"{err.exec_count}): {err.ename}: {err.evalue}\nThe executed copy up to that cell is {p.output}; "
                  "the notebooks before it finished and are kept.")
            return 1
        except _Stalled:
            print(f"\nmake run stopped: {p.source.name} hung twice (its kernel did no work for "
                  f"{stall_s / 60:.0f} minutes while a cell was running). The notebooks before it finished and are kept.")
            return 1
        actual[p.source.name] = seconds
        timings[p.source.name] = {"seconds": round(seconds, 1), "gflops": round(gflops, 1),
                                  "work_gflop": round(seconds * gflops, 1), "dtype": _precision()}
        write_json_atomically(timings_path(), timings)
    print("Actual times: " + (", ".join(f"{n} {_minutes(s)}" for n, s in actual.items()) or "nothing ran"))
    return 0


def declare_work(scale_name: str, machine: str, notebooks: list[Path] | None = None) -> list[str]:
    """Write each measured notebook's work (``timings.json`` of ``scale_name``) into its source's
    ``metadata.workbook.work_gflop[scale_name]`` with a ``work_note`` naming ``machine``. Returns the notebooks
    updated; one without a measurement at this scale is left as it is."""
    if scale_name not in SCALES:
        raise ValueError(f"Unknown scale {scale_name!r}; use one of {SCALES}.")
    os.environ["WORKBOOK_SCALE"] = scale_name
    timings = _load_timings()
    updated = []
    for source in notebooks or sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        t = timings.get(Path(source).name)
        if t is None:
            continue
        nb = json.loads(Path(source).read_text())
        meta = nb.setdefault("metadata", {}).setdefault("workbook", {})
        meta.setdefault("work_gflop", {})[scale_name] = t["work_gflop"]
        meta["work_note"] = (f"seconds x GFLOP/s of a measured make run (helpers.workbook.runner); {scale_name}: "
                             f"{t['seconds']:.0f} s at {t['gflops']:.0f} GFLOP/s ({t.get('dtype', '?')}), {machine}")
        write_text_atomically(source, json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        updated.append(Path(source).name)
    return updated
