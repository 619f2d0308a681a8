#!/usr/bin/env bash
# Prepares, on a CPU machine with pip's registry at hand, the folder .gpu_travel/ that goes with the
# working tree to a lent GPU machine (no registry there) for tools/gpu_check.py:
#   .gpu_travel/wheels/             the wheels of tools/gpu_wheels.txt (pip download --no-deps for
#                                   CPython 3.12 on manylinux x86-64): what the image lacks
#   .gpu_travel/cache/tiny-random/  the built-in tiny-random model (16 MB): its tokenizer is SmolLM2's,
#                                   the one every random-initialised model of the check uses, and the
#                                   CUDA tests run the model itself. Copied from this machine's cache
#                                   ($SELFTRAIN_CACHE), where the embedded GGUF builds it; the 98 MB
#                                   GGUF itself never travels.
# Then checks that every carried wheel's needs are met (by the image, tools/gpu_image.txt, or another
# wheel) and that the tree that travels is under 64 MiB, and prints the sizes; exit 1 otherwise.
# .gpu_travel/ is git-ignored: name it in the device run's carry.
#
#     tools/gpu_wheels.sh            (PY=python3 for another interpreter than .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PY:-.venv/bin/python}" tools/gpu_check.py --prepare-travel
