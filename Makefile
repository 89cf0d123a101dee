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

train: install  ## r-GRPO on the embedded benchmark (train_rgrpo.py picks local without a GPU), then the test table
	$(PY) recipes/train_rgrpo.py

train-verl: install  ## verl's own trainer on CPU: the learner tiny Qwen2.5-VL (warm-started on first use), r-GRPO, the test table
	$(PY) recipes/train_rgrpo.py verl-cpu

compare-verl: install  ## r-GRPO vs GRPO on verl-cpu, 3 paired seeds: tables, learning curves, decision dashboard
	$(PY) recipes/compare_verl.py

# One NVIDIA GPU with vLLM installed next to the project (pip install 'verl[vllm]==0.9.1'): verl's
# GPU path (FSDP, vLLM rollout) on the learner checkpoint (no hub needed), 5 r-GRPO steps.
gpu-check: install  ## on a GPU machine: train_rgrpo.py verl with vLLM, the learner checkpoint, 5 steps
	$(PY) recipes/train_rgrpo.py verl \
	    --model-path "$$($(PY) -c 'from agents.qwen.sft import warm_started_policy; print(warm_started_policy())')" \
	    --total-training-steps 5 --test-freq 5 --save-freq -1 --max-queries 64 --val-queries 32 \
	    --train-batch-size 8 --rollout-n 8 --ppo-mini-batch-size 8 --micro-batch-size-per-gpu 16 \
	    --answer-tokens 32 --prompt-text-tokens 96 --images.max-pixels 50176 --lr 3e-4 \
	    --out runs/gpu-check

eval: install  ## evaluate every baseline on the embedded benchmark's test split
	$(PY) recipes/evaluate.py

bench: install  ## environment speed: cache vs naive, step vs bare forward, batched group
	$(PY) recipes/bench_env.py

clean:
	rm -rf $(VENV) runs .pytest_cache
