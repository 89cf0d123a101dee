"""Stable-Baselines3 drives the env unchanged through the project's own wrappers."""

import warnings

import numpy as np
import pytest

from envs.region_rerank import RegionRerankEnv
from envs.wrappers import FlatBoxAction, HashedQuestion

sb3 = pytest.importorskip("stable_baselines3")


@pytest.fixture()
def sb3_env(scene_pools, tiny_scorer):
    # 36 px: the smallest image SB3's NatureCNN accepts
    return FlatBoxAction(HashedQuestion(RegionRerankEnv(scene_pools, tiny_scorer, obs_size=36), dim=32))


def test_sb3_check_env_passes(sb3_env):
    from stable_baselines3.common.env_checker import check_env

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(sb3_env, warn=True)
    # The default "center" encoding is the [-1, 1] action box SB3 advises: no remark is left.
    assert not [w for w in caught if "stable_baselines3" in (w.filename or "")], [str(w.message) for w in caught]


def test_sb3_ppo_trains_a_few_hundred_steps(sb3_env):
    from stable_baselines3 import PPO

    model = PPO("MultiInputPolicy", sb3_env, n_steps=64, batch_size=32, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=192)
    obs, _ = sb3_env.reset(seed=0)
    action, _ = model.predict(obs, deterministic=True)
    assert action.shape == (5,) and np.all(np.isfinite(action))
    _, reward, terminated, _, info = sb3_env.step(action)
    assert terminated and info["outcome"] in ("full", "region", "invalid_box") and np.isfinite(reward)
