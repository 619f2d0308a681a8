"""Run logging (W&B + metrics.jsonl), plots and the run summary (report.md).

Compare several runs (one line per paradigm): `python -m selftrain.report runs/a runs/b out=runs/cmp`.
"""

from .logger import RunLogger, append_jsonl, write_json_atomic, write_text_atomic

__all__ = [
    "RunLogger",
    "append_jsonl",
    "load_run",
    "report_runs",
    "write_json_atomic",
    "write_run_report",
    "write_text_atomic",
]


def __getattr__(name: str):  # matplotlib is imported only when a report is drawn
    if name in ("write_run_report", "report_runs"):
        from . import summary

        return getattr(summary, name)
    if name == "load_run":
        from .runs import load_run

        return load_run
    raise AttributeError(f"module 'selftrain.report' has no attribute {name!r}")
