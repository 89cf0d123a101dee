"""Async vector envs never hang, whatever the multiprocessing start method.

Each case runs in a fresh interpreter under a time-out: a hang inside forked workers
must fail the test, not the suite. The parent runs torch on two threads and takes a
reset first (so its OpenMP pool exists before the workers fork, which is what used to
hang them), then ``gym.make_vec(..., vectorization_mode="async")`` steps, closes, and
reports its workers' exit codes.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SCRIPT = r"""
import json, sys
import gymnasium as gym
import numpy as np
import torch
import envs

torch.set_num_threads(2)  # the default on a 2-core machine: the parent's pool exists before the fork
gym.make("RegionRerank-v0").reset(seed=0)
context = sys.argv[1]
vec = gym.make_vec("RegionRerank-v0", num_envs=2, vectorization_mode="async",
                   vector_kwargs={"context": context})
obs, _ = vec.reset(seed=0)
rewards = []
for _ in range(3):
    action = {"decision": np.array([1, 0]), "box": np.array([[0.1, 0.1, 0.7, 0.7]] * 2, np.float32)}
    obs, reward, terminated, truncated, info = vec.step(action)
    rewards.append(reward.tolist())
workers = list(vec.processes)
vec.close()
print(json.dumps({"rewards": rewards, "alive": [p.is_alive() for p in workers],
                  "exitcodes": [p.exitcode for p in workers], "image": list(obs["image"].shape)}))
"""


# fork is Linux's default start method (the one that hung); spawn and forkserver start every
# worker as a fresh interpreter that imports torch and builds the scorer (~20 s CPU each).
CONTEXTS = ["fork", pytest.param("spawn", marks=pytest.mark.slow), pytest.param("forkserver", marks=pytest.mark.slow)]


@pytest.mark.timeout(400)
@pytest.mark.parametrize("context", CONTEXTS)
def test_async_vector_env_steps_and_closes(context):
    done = subprocess.run([sys.executable, "-c", SCRIPT, context], capture_output=True, text=True, timeout=360)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["image"][0] == 2
    # REGION then FULL: a REGION step ends the episode, autoreset follows, FULL pays 0 or full_reward.
    assert len(report["rewards"]) == 3 and all(len(r) == 2 for r in report["rewards"])
    assert report["alive"] == [False, False], "a worker outlived close()"
    assert report["exitcodes"] == [0, 0]
