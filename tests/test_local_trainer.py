"""The CPU r-GRPO backend: balanced groups, verl's estimators by name, a real learning signal."""

import numpy as np
import pytest
import torch

from agents.local_policy import CropPolicyNet, PolicyConfig, load_policy, question_features, save_policy
from agents.local_trainer import GroupSampler, LocalTrainConfig, action_tokens, compute_advantages, train


@pytest.fixture()
def pool_files(scene_pool_files):
    return scene_pool_files


def small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, **overrides) -> LocalTrainConfig:
    config = dict(
        data=pool_files["train"],
        val_data=pool_files["val"],
        scorer_model=tiny_model_name,
        scorer_pretrained=str(tiny_checkpoint),
        iterations=30,
        queries_per_batch=6,
        group_size=6,
        eval_every=15,
        eval_queries=6,
        obs_size=32,
        policy=PolicyConfig(image_size=32, channels=16, hidden=32, grid=4),
        out=tmp_path / "run",
        progress=False,
        lr=2e-2,
    )
    config.update(overrides)
    return LocalTrainConfig(**config)


def test_group_sampler_balances_every_group():
    sampler = GroupSampler(group_size=4, budget=3, balance=True, generator=torch.Generator().manual_seed(0))
    # The policy almost surely says REGION: the missing FULL must be resampled or forced.
    decision_logits, box_logits = torch.tensor([-9.0, 9.0]), torch.zeros(16)
    decisions, box_ids, mask, result = sampler.sample(decision_logits, box_logits)
    assert set(decisions) == {0, 1} and result.path == "forced"
    assert mask == [1.0, 1.0, 1.0, 0.0]  # the forced decision token is masked out of the loss
    decisions, _, mask, result = sampler.sample(torch.tensor([0.0, 0.0]), box_logits)
    assert set(decisions) == {0, 1} and result.path in ("balanced", "resampled") and all(mask)


def test_action_tokens_put_reward_on_last_unmasked_token():
    rewards, mask = action_tokens([1, 0, 1], [1.0, 1.0, 0.0], [0.5, 1.0, -0.2])
    assert mask.tolist() == [[1, 1], [1, 0], [0, 1]]
    assert rewards.tolist() == [[0.0, 0.5], [1.0, 0.0], [0.0, pytest.approx(-0.2)]]


@pytest.mark.parametrize("estimator", ["rgrpo", "grpo", "rloo", "reinforce_plus_plus"])
def test_estimators_run_through_verls_dispatch(estimator):
    decisions = [1, 1, 1, 0, 0, 1]
    rewards, mask = action_tokens(decisions, [1.0] * 6, [1.0, 1.0, 1.0, 0.0, 0.2, 0.4])
    uids = ["a"] * 4 + ["b"] * 2
    advantages = compute_advantages(estimator, rewards, mask, uids, decisions, group_size=4, norm_by_std=True)
    assert advantages.shape == (6, 2)
    assert torch.all(advantages[mask == 0] == 0)
    # The best rollout of group "a" gets a positive advantage, the worst a negative one.
    assert advantages[0].sum() > 0 > advantages[3].sum()


def test_rgrpo_differs_from_grpo_on_an_unbalanced_group():
    decisions = [1, 1, 1, 0]
    rewards, mask = action_tokens(decisions, [1.0] * 4, [1.0, 1.0, 1.0, 0.0])
    r = compute_advantages("rgrpo", rewards, mask, ["g"] * 4, decisions, 4, norm_by_std=False)
    g = compute_advantages("grpo", rewards, mask, ["g"] * 4, decisions, 4, norm_by_std=False)
    # GRPO baseline: mean 0.75. r-GRPO: mean of per-decision means (1.0 + 0.0) / 2 = 0.5.
    assert r[0, 1] == pytest.approx(0.5) and g[0, 1] == pytest.approx(0.25)
    assert r[3, 0] == pytest.approx(-0.5) and g[3, 0] == pytest.approx(-0.75)


def test_unknown_or_critic_estimators_fail_before_training(pool_files, tiny_model_name, tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="not in verl's registry"):
        train(small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, estimator="nope"))
    with pytest.raises(ValueError, match="critic"):
        train(small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, estimator="gae"))


def test_short_run_raises_mean_reward_and_is_reproducible(pool_files, tiny_model_name, tiny_checkpoint, tmp_path):
    config = small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path)
    result = train(config)
    rewards = [h["reward"] for h in result.history]
    assert np.mean(rewards[-8:]) > np.mean(rewards[:8]) + 0.05
    assert (config.out / "metrics.csv").exists() and (config.out / "curves.png").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (config.out / "tb").iterdir())
    assert "val_MRR" in result.history[14]
    again = train(small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path / "again", iterations=5))
    assert [h["reward"] for h in again.history] == rewards[:5]


def test_checkpoint_round_trip(tmp_path):
    net = CropPolicyNet(PolicyConfig(image_size=32, channels=8, hidden=16, grid=4))
    save_policy(net, tmp_path / "p.pt", note="x")
    policy = load_policy(tmp_path / "p.pt")
    obs = {"image": np.zeros((32, 32, 3), np.uint8), "question": "where is the red square?"}
    torch.testing.assert_close(policy.net(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), ["q"]).box_logits,
                               net.eval()(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), ["q"]).box_logits)
    action = policy(obs, {}, None)
    assert action["decision"] in (0, 1) and action["box"].shape == (4,)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_policy(tmp_path / "missing.pt")


def test_question_features_are_stable_hashes():
    assert question_features("The RED square", 4096) == question_features("the red square!", 4096)
    assert question_features("", 16) == [0]
