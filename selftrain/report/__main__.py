"""`python -m selftrain.report RUN [RUN ...] [out=DIR]`: one run -> its report.md and plots;
several runs -> comparison plots (one line per run/paradigm) and comparison.md in DIR."""

from __future__ import annotations

import sys

from .summary import report_runs, write_run_report


def main(argv: list[str]) -> int:
    out = None
    folders = []
    for word in argv:
        if word.startswith("out="):
            out = word[4:]
        else:
            folders.append(word)
    if not folders:
        print(__doc__, file=sys.stderr)
        return 2
    if len(folders) == 1 and out is None:
        print(write_run_report(folders[0]))
    else:
        print(report_runs(folders, out or "runs/comparison"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
