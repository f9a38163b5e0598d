"""``python -m helpers <command>``: the workbook's command line.

Commands: ``corpus`` (build the embedded corpus with the teacher, resumable) and ``report`` (the results table and
figures of the last ``make run``). ``python -m helpers <command> --help`` documents each.
"""

from __future__ import annotations

import sys

COMMANDS = {"corpus": "build the embedded corpus with the teacher (resumable)",
            "report": "write runs/<scale>/report.md from the recorded metrics (laptop: also the README block)"}


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
    if command == "corpus":
        from .data.corpus import main as run
    else:
        from .workbook.report import main as run
    return run(rest)


if __name__ == "__main__":
    sys.exit(main())
