# The two commands of the README: `make demo` (train then evaluate) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

export WANDB_MODE ?= offline

.PHONY: demo test test-slow install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python train.py
	$(BIN)/python evaluate.py --ckpt runs/demo/last.ckpt --out runs/demo/eval --n 500 --suite demo
	@echo "Results: runs/demo (checkpoints, metrics.csv) and runs/demo/eval (results.json, report.md, curves.png, examples.png)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/attacks.py
	$(BIN)/python bench/training.py

clean:
	rm -rf runs lightning_logs wandb .pytest_cache
