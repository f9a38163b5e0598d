"""After ``make run``: the results table and figures of the run, copied into the README and docs/figures.

``python -m helpers report`` reads ``runs/<scale>/metrics.json`` (written by the notebooks through
``helpers.workbook``), writes ``runs/<scale>/report.md`` and ``runs/<scale>/results.csv``, and, for the laptop
scale, replaces the block between ``<!-- results:start -->`` and ``<!-- results:end -->`` in README.md and copies
the figures to docs/figures.
Nothing in that block is typed by hand.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..hardware import cpu_has_fast_bf16, cpu_precision, fast_dtype
from ..io import repo_root, write_text_atomically
from .runner import timings_path
from .runs import load_metrics, results_table, runs_dir, write_results_csv
from .scales import scale

__all__ = ["COLUMNS", "machine_line", "durations_table", "build_report", "update_readme", "main"]

START, END = "<!-- results:start -->", "<!-- results:end -->"
# every model: size, corpus and real-text perplexity, ratio to the teacher, log-space recovery, speed, memory, tokens
COLUMNS = ("notebook", "parent", "method", "params", "non_embedding_params", "heldout_ppl", "realtext_ppl", "ppl_ratio",
           "log_recovery", "decode_tokens_per_s", "memory_mib", "tokens_seen")


def durations_table() -> str:
    """Notebook run times on this machine, from ``runs/<scale>/notebooks/timings.json`` (written by the runner)."""
    try:
        timings = json.loads(timings_path().read_text())
    except (OSError, ValueError):
        return ""
    rows = ["| notebook | seconds | machine GFLOP/s | precision |", "|---|---|---|---|"]
    rows += [f"| {n} | {t['seconds']:.0f} | {t['gflops']:.0f} | {t.get('dtype', '–')} |" for n, t in sorted(timings.items())]
    return "\n".join(rows)


def machine_line() -> str:
    """The CPU this report was built on: model name, cores, native bf16 or not, and the precision used."""
    try:
        model = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        model = "unknown CPU"
    bf16 = "no native bf16"
    if cpu_has_fast_bf16():
        speeds = cpu_precision()
        bf16 = (f"native bf16 (matrix products measured at {speeds['float32']:.0f} GFLOP/s in fp32, "
                f"{speeds['bfloat16']:.0f} in bf16)")
    return (f"Machine: {model}, {os.cpu_count()} cores, {bf16}; notebooks computed in "
            f"{str(fast_dtype('cpu')).replace('torch.', '')}.")


def build_report(current: str) -> str:
    figures = sorted((runs_dir() / "figures").glob("*.png"))
    parts = [
        machine_line(),
        "",
        f"Measured by `make run` (WORKBOOK_SCALE={current}); held-out perplexity by the protocol in "
        "`helpers/evaluate/perplexity.py` (512-token windows, stride 512, held-out split of the embedded corpus).",
        "",
        results_table(COLUMNS),
        "",
        "`parent` / `method`: from each checkpoint's recipe.json; `non_embedding_params`: without the embedding "
        "(and LM head when untied); `ppl_ratio`: perplexity over the teacher's; `log_recovery`: share of the pruning damage recovered, in "
        "log-perplexity (100% = the teacher); `decode_tokens_per_s`: batch 1, median of interleaved rounds "
        "(`helpers/evaluate/speed.py`), ≈ where the model was not timed itself and the figure is that of a timed model "
        "with the same architecture (`decode_measured_on` in results.csv; dense kernels do not depend on the weights' "
        "values: notebook 11 timed 50% zeros at the teacher's speed); `memory_mib`: what the model holds at batch 1 after 256 + 64 tokens, fp32 "
        "weights plus KV cache, from its config (`model_memory_mib`: on a CPU the resident set of a process that "
        "holds several models cannot be split between them, so no per-model peak is measured there); "
        "– = not measured for that model.",
    ]
    lab = runs_dir() / "lab_verdicts.md"
    if lab.is_file():  # notebook 10's claims with their computed verdicts
        parts += ["", "Best-practice claims tested by notebook 10 (agrees / disagrees / within noise):", "",
                  lab.read_text().strip()]
    if durations := durations_table():
        parts += ["", "Notebook run times on this machine:", "", durations]
    if figures:
        parts += [""] + [f"![{f.stem}](docs/figures/{f.name})" for f in figures]
    return "\n".join(parts)


def update_readme(block: str, readme: Path | None = None, markers: tuple[str, str] | None = None) -> None:
    """Replace the results block of the README (between the markers; default the results markers) with ``block``."""
    readme = readme or repo_root() / "README.md"
    start, end = markers or (START, END)
    text = readme.read_text()
    if start not in text or end not in text:
        raise ValueError(f"{readme} lacks the {start} ... {end} markers")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    write_text_atomically(readme, f"{head}{start}\n{block}\n{end}{tail}")


def main(argv: list[str] | None = None) -> int:
    """``python -m helpers report``: write ``runs/<scale>/report.md`` and ``results.csv``; at the laptop scale also
    the README block."""
    current = scale()
    if not load_metrics():
        print(f"No metrics recorded under {runs_dir()}; run the notebooks first (make run).")
        return 1
    block = build_report(current)
    write_text_atomically(runs_dir() / "report.md", block + "\n")
    write_results_csv(runs_dir() / "results.csv", COLUMNS)
    print(block)
    if current == "laptop":
        dest = repo_root() / "docs" / "figures"
        dest.mkdir(parents=True, exist_ok=True)
        for f in (runs_dir() / "figures").glob("*.png"):
            shutil.copy2(f, dest / f.name)
        update_readme(block)
    return 0

