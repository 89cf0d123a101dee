"""Async vector envs never hang, whatever the multiprocessing start method, and play the sync ones' episodes.

Each case runs in a fresh interpreter under a time-out: a hang inside forked workers
must fail the test, not the suite. The parent runs torch on two threads and takes a
reset first (so its OpenMP pool exists before the workers fork, which is what used to
hang them), then ``gym.make_vec(..., vectorization_mode="async")`` steps (with gymnasium's default
``copy=True`` and with ``copy=False``), closes, and reports its workers' exit codes and
what it observed next to a sync vector env's episodes.
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


def play(vec):
    obs, _ = vec.reset(seed=0)
    questions, rewards = [list(obs["question"])], []
    for _ in range(3):
        action = {"decision": np.array([1, 0]), "box": np.array([[0.1, 0.1, 0.7, 0.7]] * 2, np.float32)}
        obs, reward, terminated, truncated, info = vec.step(action)
        questions.append(list(obs["question"]))
        rewards.append(reward.tolist())
    return obs, questions, rewards


obs, questions, rewards = play(gym.make_vec("RegionRerank-v0", num_envs=2, vectorization_mode="sync"))
vec = gym.make_vec("RegionRerank-v0", num_envs=2, vectorization_mode="async", vector_kwargs={"context": context})
obs, async_questions, async_rewards = play(vec)
workers = list(vec.processes)
vec.close()
live = gym.make_vec("RegionRerank-v0", num_envs=2, vectorization_mode="async",
                    vector_kwargs={"context": context, "copy": False})
_, live_questions, _ = play(live)
live.close()
print(json.dumps({"rewards": rewards, "async_rewards": async_rewards, "questions": questions,
                  "async_questions": async_questions, "live_questions": live_questions,
                  "alive": [p.is_alive() for p in workers], "exitcodes": [p.exitcode for p in workers],
                  "image": list(obs["image"].shape)}))
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
    # The same episodes as the sync vector env: questions included (gymnasium's own Text
    # read from shared memory is a copy taken once, the questions' first character repeated).
    assert report["async_questions"] == report["questions"] == report["live_questions"]
    assert all(q.endswith(("?", ".")) for step in report["questions"] for q in step)
    # Equal up to rounding: the parent's sync envs run torch on two threads, the forked workers on one.
    assert sum(report["async_rewards"], []) == pytest.approx(sum(report["rewards"], []), rel=1e-6, abs=1e-6)
    # REGION then FULL: a REGION step ends the episode, autoreset follows, FULL pays 0 or full_reward.
    assert len(report["rewards"]) == 3 and all(len(r) == 2 for r in report["rewards"])
    assert report["alive"] == [False, False], "a worker outlived close()"
    assert report["exitcodes"] == [0, 0]
