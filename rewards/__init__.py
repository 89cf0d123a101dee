"""Ranking metrics and the Region-R1 rank-improvement reward (pure numpy functions)."""

from rewards.metrics import (
    best_positive_rank,
    margin,
    ndcg_at_k,
    positive_ranks,
    ranking_order,
    recall_at_k,
    reciprocal_rank,
)
from rewards.region import (
    RankingStats,
    RewardConfig,
    RewardTerms,
    box_iou,
    full_reward,
    log_rank_gain,
    ranking_stats,
    region_reward,
)
from rewards.search import kb_recall_at_k, pool_coverage, positives_by_id, search_reward

__all__ = [
    "RankingStats",
    "RewardConfig",
    "RewardTerms",
    "best_positive_rank",
    "box_iou",
    "full_reward",
    "log_rank_gain",
    "margin",
    "ndcg_at_k",
    "positive_ranks",
    "kb_recall_at_k",
    "pool_coverage",
    "positives_by_id",
    "ranking_order",
    "ranking_stats",
    "recall_at_k",
    "reciprocal_rank",
    "region_reward",
    "search_reward",
]
