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

.PHONY: install test test-all train train-verl compare-verl gpu-check eval bench clean

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

train-verl: install  ## verl's own trainer on CPU: the learner tiny Qwen2.5-VL (warm-started on first use), r-GRPO, the test table
	$(PY) recipes/train_rgrpo.py --backend verl-cpu

compare-verl: install  ## r-GRPO vs GRPO on verl-cpu, 3 paired seeds: tables, learning curves, decision dashboard
	$(PY) recipes/compare_verl.py

# One NVIDIA GPU with vLLM installed next to the project (pip install 'verl[vllm]==0.9.1'): verl's
# GPU path (FSDP, vLLM rollout) on the learner checkpoint (no hub needed), 5 r-GRPO steps.
gpu-check: install  ## on a GPU machine: --backend verl with vLLM, the learner checkpoint, 5 steps
	$(PY) recipes/train_rgrpo.py --backend verl \
	    --verl.model-path "$$($(PY) -c 'from agents.qwen.sft import warm_started_policy; print(warm_started_policy())')" \
	    --verl.total-training-steps 5 --verl.test-freq 5 --verl.save-freq -1 --verl.max-queries 64 --verl.val-queries 32 \
	    --verl.train-batch-size 8 --verl.rollout-n 8 --verl.ppo-mini-batch-size 8 --verl.micro-batch-size-per-gpu 16 \
	    --verl.answer-tokens 32 --verl.prompt-text-tokens 96 --verl.images.max-pixels 50176 --verl.lr 3e-4 \
	    --verl.out runs/gpu-check

eval: install  ## evaluate every baseline on the embedded benchmark's test split
	$(PY) recipes/evaluate.py

bench: install  ## environment speed: cache vs naive, step vs bare forward, batched group
	$(PY) recipes/bench_env.py

clean:
	rm -rf $(VENV) runs .pytest_cache
