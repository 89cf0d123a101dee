"""The composite rank-improvement reward of docs/DESIGN.md, against hand-computed values."""

import math

import numpy as np
import pytest

from rewards import RewardConfig, box_iou, full_reward, ranking_stats, region_reward

POSITIVES = np.array([False, True, False, False])


def test_region_reward_hand_computed_default_weights():
    old = ranking_stats([0.9, 0.5, 0.7, 0.1], POSITIVES)  # positive rank 3, margin -0.4
    new = ranking_stats([0.6, 0.8, 0.7, 0.1], POSITIVES)  # positive rank 1, margin +0.1
    terms = region_reward(old, new)
    d_mrr = 1 - 1 / 3
    d_ndcg = 1 - 1 / math.log2(4)
    d_rank = math.log(4) - math.log(2)
    d_margin = 0.1 - (-0.4)
    assert terms.d_mrr == pytest.approx(d_mrr)
    assert terms.d_ndcg == pytest.approx(d_ndcg)
    assert terms.d_rank == pytest.approx(d_rank)
    assert terms.d_margin == pytest.approx(d_margin)
    expected = 5 * (0.2 * d_mrr + 0.2 * d_ndcg + 0.2 * d_rank + 0.4 * d_margin)
    assert terms.reward == pytest.approx(expected)


def test_region_reward_is_floored():
    old = ranking_stats([0.6, 0.8, 0.7, 0.1], POSITIVES)
    new = ranking_stats([0.9, 0.1, 0.7, 0.5], POSITIVES)  # positive falls to last
    terms = region_reward(old, new)
    assert terms.reward == pytest.approx(5 * -0.05)
    assert region_reward(old, new, RewardConfig(floor=-10.0)).reward < 5 * -0.05


def test_unchanged_ranking_gives_zero():
    stats = ranking_stats([0.9, 0.5, 0.7, 0.1], POSITIVES)
    assert region_reward(stats, stats).reward == 0.0


def test_weights_are_configurable_for_the_ablation():
    old = ranking_stats([0.9, 0.5, 0.7, 0.1], POSITIVES)
    new = ranking_stats([0.6, 0.8, 0.7, 0.1], POSITIVES)
    only_mrr = RewardConfig.ablation("mrr")
    assert region_reward(old, new, only_mrr).reward == pytest.approx(5 * 0.2 * (1 - 1 / 3))
    assert RewardConfig.ablation("full") == RewardConfig()
    no_margin = RewardConfig.ablation("mrr+ndcg+rank")
    assert (no_margin.w_mrr, no_margin.w_ndcg, no_margin.w_rank, no_margin.w_margin) == (0.2, 0.2, 0.2, 0.0)
    assert RewardConfig.ablation("mrr+ndcg").w_rank == 0.0
    with pytest.raises(ValueError, match="unknown reward ablation"):
        RewardConfig.ablation("margin-only")


def test_full_rule():
    first = ranking_stats([0.1, 0.9, 0.2, 0.0], POSITIVES)
    third = ranking_stats([0.9, 0.5, 0.7, 0.1], POSITIVES)
    assert full_reward(first) == 1.0
    assert full_reward(third) == 0.0
    assert full_reward(first, RewardConfig(full_reward=0.3)) == 0.3


def test_iou_term_adds_grounding_signal():
    old = new = ranking_stats([0.9, 0.5, 0.7, 0.1], POSITIVES)
    config = RewardConfig(w_iou=1.0)
    assert region_reward(old, new, config, iou=0.5).reward == pytest.approx(5 * 0.5)
    assert box_iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert box_iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_batched_reward_matches_scalar():
    rng = np.random.default_rng(1)
    positives = rng.random((6, 20)) < 0.1
    old = ranking_stats(rng.normal(size=(6, 20)), positives)
    new = ranking_stats(rng.normal(size=(6, 20)), positives)
    batched = region_reward(old, new).reward
    for i in range(6):
        one = region_reward(type(old)(*(f[i] for f in old)), type(new)(*(f[i] for f in new))).reward
        assert batched[i] == pytest.approx(one)


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="scale"):
        RewardConfig(scale=float("nan"))
    with pytest.raises(ValueError, match="ndcg_k"):
        RewardConfig(ndcg_k=0)
