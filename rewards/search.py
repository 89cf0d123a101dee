"""The reward and metrics of SEARCH (re-retrieval) episodes: pure functions.

A SEARCH replaces the candidate pool with the top-K knowledge-base entities of the
current view. Rankings of different pools are compared through :class:`RankingStats`,
whose conventions make that meaningful: the rank of the best positive, ``K + 1`` when a
pool holds none (so a search that brings a missing positive into the pool lowers the
rank from ``K + 1`` and pays, and one that loses it raises the rank to ``K + 1`` and
costs), reciprocal rank and NDCG 0 without a positive, the margin 0 without a positive.

The episode's reward is the rank-improvement reward of :func:`rewards.region_reward`
of its FINAL ranking (last view, last pool) against the ORIGINAL pool's FULL-image
ranking, minus ``search_cost`` per search performed::

    reward = scale * max(w . (dMRR, dNDCG, dRank, dMargin), floor) - search_cost * searches

The cost is subtracted after the floor, so a search that gains nothing still costs its
price (inside the clip, the floor would hide it).

Positives of a re-retrieved pool are judged by the query's gold entity ids
(:func:`positives_by_id`), never by anything the index returns.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from rewards.region import RankingStats, RewardConfig, RewardTerms, region_reward


def positives_by_id(candidate_ids: Sequence[str], gold_ids: Sequence[str]) -> np.ndarray:
    """Boolean relevance of a pool's candidates: a candidate is positive iff its id is a gold id."""
    gold = set(gold_ids)
    return np.array([candidate_id in gold for candidate_id in candidate_ids], dtype=bool)


def search_reward(
    baseline: RankingStats, final: RankingStats, searches: int, config: RewardConfig = RewardConfig(),
    search_cost: float = 0.0, iou=0.0,
) -> RewardTerms:
    """Reward of ending on ranking ``final`` after ``searches`` searches, against ``baseline``
    (the original pool under the FULL image); see the module docstring."""
    if searches < 0:
        raise ValueError(f"searches must be >= 0, got {searches}")
    terms = region_reward(baseline, final, config, iou)
    return terms._replace(reward=terms.reward - search_cost * searches)


def pool_coverage(positives) -> float:
    """1.0 if a pool holds a positive, else 0.0 (averaged over queries: the coverage rate)."""
    return float(np.asarray(positives, dtype=bool).any())


def kb_recall_at_k(retrieved_ids: Sequence[str], gold_ids: Sequence[str], k: int) -> float:
    """1.0 if a gold id is among the first ``k`` retrieved ids (a search's recall@K), else 0.0."""
    if k < 1:
        raise ValueError(f"recall cutoff k must be >= 1, got {k}")
    gold = set(gold_ids)
    return float(any(entity in gold for entity in list(retrieved_ids)[:k]))
