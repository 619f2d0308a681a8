"""selftrain: iterative self-improvement post-training of LLMs, and whether it is progress or regress."""

__version__ = "0.1.0"
