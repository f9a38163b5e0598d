"""``python -m helpers <command>``: the workbook's command line.

Commands: ``run`` (every notebook headless, with estimates; what ``make run`` calls), ``corpus`` (build the embedded
corpus with the teacher, resumable), ``report`` (the results table and figures of the last run) and ``shrink``
(the recipe as one command: prune, distil, evaluate, save; runs under ``accelerate launch`` too) and ``students``
(``make students``: the ~80% and ~60% students worth using, built with ``shrink``'s code).
``python -m helpers <command> --help`` documents each.
"""

from __future__ import annotations

import os
import sys

COMMANDS = {"run": "run the notebooks headless at a scale (estimates first, reuses finished ones, stops on failure)",
            "corpus": "build the embedded corpus with the teacher (resumable)",
            "report": "write runs/<scale>/report.md from the recorded metrics (laptop: also the README block)",
            "shrink": "prune a teacher to a target size and distil it: one stock checkpoint (also under accelerate)",
            "students": "build the ~80% and ~60% students worth using (make students; resumable), their table and plot"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = [f"  {name:8s} {what}" for name, what in COMMANDS.items()]
        print("usage: python -m helpers <command> [options]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}; choose one of {', '.join(COMMANDS)}", file=sys.stderr)
            return 2
        return 0
    command, rest = argv[0], argv[1:]
    if command == "run":
        return _run(rest)
    if command == "shrink":
        from .recipes.shrink import main as shrink
        return shrink(rest)
    if command == "students":
        from .recipes.release import main as students
        return students(rest)
    if command == "corpus":
        from .data.corpus import main as corpus
        return corpus(rest)
    from .workbook.report import main as report
    return report(rest)


def _run(argv: list[str]) -> int:
    import argparse
    from pathlib import Path

    from .workbook.scales import SCALES

    ap = argparse.ArgumentParser(prog="python -m helpers run", description="Run the workbook's notebooks with "
                                 "papermill: an estimate first, progress per notebook, the actual times at the end.")
    ap.add_argument("--scale", default=os.environ.get("WORKBOOK_SCALE", "laptop"), choices=SCALES)
    ap.add_argument("--clean", action="store_true", help="rerun notebooks that already finished at this scale")
    ap.add_argument("--declare-work", metavar="MACHINE", help="run nothing: write the last run's measured work into "
                    "the notebooks' metadata (their estimates on a fresh clone), noting MACHINE, e.g. '2-core Xeon'")
    ap.add_argument("notebooks", nargs="*", type=Path, help="only these notebooks (default: notebooks/NN_*.ipynb)")
    args = ap.parse_args(argv)
    os.environ["WORKBOOK_SCALE"] = args.scale  # before runs_dir() is resolved
    from .workbook.runner import declare_work, run_notebooks

    if args.declare_work:
        updated = declare_work(args.scale, args.declare_work, args.notebooks or None)
        print(f"declared the measured {args.scale} work of {', '.join(updated) or 'no notebook (nothing measured)'}")
        return 0
    return run_notebooks(args.scale, args.notebooks or None, args.clean)


if __name__ == "__main__":
    sys.exit(main())
