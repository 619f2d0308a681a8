"""Run logging (W&B + metrics.jsonl), plots and the run summary."""

from .logger import RunLogger, append_jsonl, write_json_atomic, write_text_atomic

__all__ = ["RunLogger", "append_jsonl", "write_json_atomic", "write_text_atomic"]
