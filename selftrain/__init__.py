"""selftrain: iterative self-improvement post-training of LLMs, and whether it is progress or regress."""

import os

__version__ = "0.1.0"

# torch's OpenMP workers (GNU libgomp) spin for ~300k iterations (several ms on these cores) after
# every parallel region before they sleep. The sampler's CPU attention kernel runs on its own
# threads between torch's matmuls, and spinning workers took half its core (decode attention ran
# ~1.8x slower). 1000 spins keeps the workers' wake-up quick for back-to-back matmuls. libgomp
# reads this when torch is first imported, so it only applies when selftrain is imported before
# torch; a value already in the environment wins.
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
