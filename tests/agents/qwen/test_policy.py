"""agents/qwen/policy.py: Qwen2.5-VL as a policy callable, on the tiny offline model."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from agents.evaluation.runner import evaluate_policy
from agents.qwen.prompts import build_messages
from agents.qwen.policy import QwenVLPolicy
from agents.qwen.tiny import cached_tiny_qwen
from envs.boxes import QWEN_MIN_PIXELS, qwen_resized_size
from envs.region_rerank import RegionRerankEnv
from envs.settings import ImageSettings
from envs.text_actions import FULL_MARKER, MalformedAction, format_action_text

MAX_PIXELS = 64 * 28 * 28


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> QwenVLPolicy:
    torch.set_num_threads(1)
    return QwenVLPolicy(cached_tiny_qwen(tmp_path_factory.getbasetemp()), max_new_tokens=12, images=ImageSettings(max_pixels=MAX_PIXELS))


def test_zero_shot_policy_runs_through_the_evaluator(policy, tiny_pool, tiny_scorer):
    env = RegionRerankEnv([tiny_pool], tiny_scorer)
    summary, records = evaluate_policy(env, policy, progress=False)
    # a random model writes no valid action: the episode ends malformed, with the penalty
    assert policy.last_text and isinstance(policy.action_from_text(policy.last_text, env), MalformedAction)
    assert records[0].outcome == "malformed" and summary["reward"] == -1.0


def test_greedy_answers_repeat(policy, tiny_pool, tiny_scorer):
    env = RegionRerankEnv([tiny_pool], tiny_scorer)
    obs, info = env.reset(options={"query_index": 0})
    messages = policy.messages(obs, info, env)
    assert policy.generate(messages) == policy.generate(messages)


def test_boxes_are_read_in_pixels_of_the_image_the_model_saw(policy, scene_pools, tiny_scorer):
    env = RegionRerankEnv(scene_pools, tiny_scorer)
    _, info = env.reset(options={"query_index": 0})
    view = info["policy_image"]
    seen = qwen_resized_size(view.width, view.height, QWEN_MIN_PIXELS, MAX_PIXELS)
    assert seen != view.size  # the frames differ, so a wrong one would show
    box = np.array([0.1, 0.2, 0.6, 0.9])
    action = policy.action_from_text(format_action_text(1, box, frame="resized", resized_size=seen), env)
    assert action["decision"] == 1
    np.testing.assert_allclose(action["box"], box, atol=0.5 / min(seen))
    assert policy.action_from_text(FULL_MARKER, env)["decision"] == 0


def test_each_zoom_step_asks_about_the_current_view(policy, scene_pools, tiny_scorer):
    env = RegionRerankEnv(scene_pools, tiny_scorer, max_steps=3)
    env.reset(options={"query_index": 0})
    obs, _, _, _, info = env.step({"decision": 1, "box": np.array([0.0, 0.0, 0.5, 0.5])})
    messages = policy.messages(obs, info, env)
    assert messages == build_messages(info["question"], info["policy_image"], 1, 3, min_pixels=QWEN_MIN_PIXELS, max_pixels=MAX_PIXELS)
    assert "You can crop 2 more times" in messages[1]["content"][1]["text"]


def test_pixel_limits_beyond_the_processor_are_rejected(tmp_path_factory):
    with pytest.raises(ValueError, match="processor's pixel limits"):
        QwenVLPolicy(cached_tiny_qwen(tmp_path_factory.getbasetemp()), images=ImageSettings(max_pixels=10**9))
