# Two commands on a fresh machine:  `make train` (the main job on the embedded default)
# and `make test`. Both create .venv and install the project into it first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# Every pip call is constrained: unpinned torch/open_clip would pull a multi-GB CUDA torch
# whose torchvision does not import on these CPU machines (see constraints.txt).
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
# No model hub is reachable: fail fast instead of waiting on network time-outs.
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install test test-all train train-verl eval bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

install: $(VENV)/.installed

test: install  ## the default test suite (fast; one end-to-end test included)
	$(PY) -m pytest -q

test-all: install  ## every test, the slow end-to-end ones too
	$(PY) -m pytest -q -m ''

train: install  ## r-GRPO on the embedded benchmark (CPU backend without a GPU), then the test table
	$(PY) recipes/train_rgrpo.py

train-verl: install  ## verl's own trainer on CPU: the warm-started tiny Qwen2.5-VL, r-GRPO, the embedded benchmark
	$(PY) recipes/train_rgrpo.py --backend verl-cpu

eval: install  ## evaluate every baseline on the embedded benchmark's test split
	$(PY) recipes/evaluate.py

bench: install  ## environment speed: cache vs naive, step vs bare forward, batched group
	$(PY) recipes/bench_env.py

clean:
	rm -rf $(VENV) runs .pytest_cache
