# PointINS — one-command set-up, training and tests.
#   make train [ARGS='k=v ...']   create .venv if missing, then train the embedded demo
#   make test                     create .venv if missing, then run the fast test suite
#   make test-slow | lint | preview | bench   the slow tests, ruff, a data preview, benchmarks
#   make compare [ARGS='--seeds 42 43 44']    PointINS against Mask R-CNN at equal wall clock
#   make bench-gpu                every GPU row of docs/benchmarks.md, one process, one GPU
#   make clean                    remove caches: .pytest_cache .ruff_cache __pycache__
#                                 lightning_logs wandb/; runs (outputs/, multirun/) stay
#   make clean-runs               DELETE outputs/ and multirun/: every run's checkpoints and logs
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=
# The CPU/CUDA wheels this machine serves from disk; other versions download gigabytes.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1

.PHONY: venv train test test-slow lint preview bench bench-gpu compare clean clean-runs

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS)
	$(PY) -m pip install --quiet -e '.[dev,export]'
	touch $(STAMP)

train: $(STAMP)
	$(PY) train.py experiment=shapes $(ARGS)

# one pytest worker per core, at most 8, each computing on one thread (tests/conftest.py)
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 8 $(ARGS)

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

preview: $(STAMP)
	$(PY) -m datamodules.preview experiment=shapes $(ARGS)

bench: $(STAMP)
	$(PY) -m benchmarks.bench $(ARGS)

bench-gpu: $(STAMP)
	$(PY) -m benchmarks.gpu $(ARGS)

compare: $(STAMP)
	$(PY) -m benchmarks.compare experiment=shapes --also mask=pointins_small $(ARGS)

clean:
	rm -rf .pytest_cache .ruff_cache lightning_logs wandb
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +

clean-runs:
	@echo "Deleting outputs/ and multirun/: all run folders, checkpoints and logs"
	rm -rf outputs multirun
