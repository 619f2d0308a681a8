#!/usr/bin/env bash
# Prepares, on a CPU machine with pip's registry at hand, the folder .gpu_travel/ that goes with the
# working tree to a lent GPU machine (no registry there) for tools/gpu_check.py:
#   .gpu_travel/wheels/             the wheels of tools/gpu_wheels.txt (pip download --no-deps,
#                                   CPython 3.12, manylinux x86-64): what the image lacks
#   .gpu_travel/cache/tiny-random/  the built-in tiny-random model (its tokenizer is SmolLM2's, the
#                                   one every random-initialised model of the check uses; the CUDA
#                                   tests use the model itself). Copied from this machine's cache,
#                                   where the embedded GGUF builds it; the GGUF itself never travels.
# Then checks that every carried wheel's needs are met (by the image or another wheel) and that
# the tree that travels is under 64 MiB. .gpu_travel/ is git-ignored: name it in the run's carry.
#
#     tools/gpu_wheels.sh            (PY=python to use another interpreter than .venv/bin/python)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DEST=.gpu_travel
rm -rf "$DEST/wheels" "$DEST/cache"
mkdir -p "$DEST/wheels" "$DEST/cache"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST/wheels" -r tools/gpu_wheels.txt
model=$("$PY" -c "from selftrain.models import builtin_path; print(builtin_path('tiny-random'))")
cp -r "$model" "$DEST/cache/tiny-random"
"$PY" tools/gpu_check.py --check-travel
