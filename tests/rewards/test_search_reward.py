"""The SEARCH reward and metrics (rewards/search.py), on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from rewards import RewardConfig, kb_recall_at_k, pool_coverage, positives_by_id, ranking_stats, search_reward


def test_positives_are_judged_by_gold_id():
    assert positives_by_id(["a", "b", "c"], ["c", "z"]).tolist() == [False, False, True]
    assert not positives_by_id(["a"], []).any()


def test_recovering_a_missing_positive_pays_and_losing_it_costs():
    missing = ranking_stats(np.array([0.9, 0.5, 0.1]), np.array([False, False, False]))  # rank K + 1 = 4
    found = ranking_stats(np.array([0.2, 0.8, 0.1]), np.array([False, True, False]))  # rank 1, margin 0.6
    assert missing.rank == 4 and found.rank == 1
    gain = search_reward(missing, found, 1, RewardConfig(), search_cost=0.0)
    # 5 * (0.2 * 1 + 0.2 * 1 + 0.2 * (log 5 - log 2) + 0.4 * 0.6)
    assert float(gain.reward) == pytest.approx(5 * (0.2 + 0.2 + 0.2 * (np.log(5) - np.log(2)) + 0.4 * 0.6))
    loss = search_reward(found, missing, 1, RewardConfig(), search_cost=0.0)
    assert float(loss.reward) == pytest.approx(5 * -0.05)  # clipped at the floor


def test_the_search_cost_is_paid_per_search_after_the_floor():
    same = ranking_stats(np.array([0.9, 0.5]), np.array([True, False]))
    terms = search_reward(same, same, 2, RewardConfig(), search_cost=0.1)
    assert float(terms.reward) == pytest.approx(0.0 - 0.2)  # no gain: nothing to clip, the cost stays
    worse = ranking_stats(np.array([0.1, 0.5]), np.array([True, False]))
    assert float(search_reward(same, worse, 1, RewardConfig(), search_cost=0.1).reward) == pytest.approx(-0.25 - 0.1)
    with pytest.raises(ValueError, match="searches must be >= 0"):
        search_reward(same, same, -1)


def test_coverage_and_kb_recall():
    assert pool_coverage([False, True]) == 1.0 and pool_coverage([False, False]) == 0.0
    assert kb_recall_at_k(["a", "b", "c"], ["c"], 3) == 1.0 and kb_recall_at_k(["a", "b", "c"], ["c"], 2) == 0.0
    with pytest.raises(ValueError, match="k must be >= 1"):
        kb_recall_at_k(["a"], ["a"], 0)
