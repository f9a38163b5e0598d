"""After ``make run``: the results table and figures of the run, copied into the README and docs/figures.

``python -m helpers.report`` reads ``runs/<scale>/metrics.json`` (written by the notebooks through
``helpers.runs``), writes ``runs/<scale>/report.md``, and, for the laptop scale, replaces the block between
``<!-- results:start -->`` and ``<!-- results:end -->`` in README.md and copies the figures to docs/figures.
Nothing in that block is typed by hand.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from .runs import load_metrics, results_table, runs_dir, scale

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
COLUMNS = ("notebook", "params", "heldout_ppl", "ppl_tokens", "tokens_seen")


def durations_table() -> str:
    path = runs_dir() / "notebooks" / "durations.txt"
    if not path.is_file():
        return ""
    rows = ["| notebook | seconds |", "|---|---|"]
    last: dict[str, str] = {}
    for line in path.read_text().splitlines():
        name, _, secs = line.partition(" ")
        last[name] = secs
    rows += [f"| {n} | {s} |" for n, s in sorted(last.items())]
    return "\n".join(rows)


def build_report(current: str) -> str:
    figures = sorted((runs_dir() / "figures").glob("*.png"))
    parts = [
        f"Measured by `make run` (WORKBOOK_SCALE={current}); held-out perplexity by the protocol in "
        "`helpers/evaluate.py` (512-token windows, stride 512, held-out split of the embedded corpus).",
        "",
        results_table(COLUMNS),
    ]
    if durations := durations_table():
        parts += ["", "Notebook run times on this machine:", "", durations]
    if figures:
        parts += [""] + [f"![{f.stem}](docs/figures/{f.name})" for f in figures]
    return "\n".join(parts)


def update_readme(block: str, readme: Path = ROOT / "README.md") -> None:
    text = readme.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{readme} lacks the {START} ... {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    tmp = readme.with_name(".README.md.tmp")
    tmp.write_text(f"{head}{START}\n{block}\n{END}{tail}")
    tmp.replace(readme)


def main() -> int:
    current = scale()
    if not load_metrics():
        print(f"No metrics recorded under {runs_dir()}; run the notebooks first (make run).")
        return 1
    block = build_report(current)
    (runs_dir() / "report.md").write_text(block + "\n")
    print(block)
    if current == "laptop":
        dest = ROOT / "docs" / "figures"
        dest.mkdir(parents=True, exist_ok=True)
        for f in (runs_dir() / "figures").glob("*.png"):
            shutil.copy2(f, dest / f.name)
        update_readme(block)
    return 0


if __name__ == "__main__":
    sys.exit(main())
