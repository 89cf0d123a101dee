"""Aggregate per-episode results into the paper's evaluation metrics (pure functions).

MRR, R@1, R@5, NDCG@K are over every query (a query whose pool lacks a positive counts
as a miss). CondR@1 is R@1 over the queries whose positive is in the pool: what a
re-ranker can be blamed for. The region-cropping (RC) rate is the fraction of episodes
whose first decision was REGION, overall and by the baseline (FULL) rank of the
positive: 1, 2-5, 6-10, 11-K (and "absent" for pools without a positive).

With SEARCH (re-retrieval) a pool can change during an episode: MRR and R@1 stay over
EVERY query (one whose original pool lacked the positive counts, and scores if a search
brought it in), CondR@1 stays over the queries whose ORIGINAL pool holds it, and
:func:`summarize_search` adds the pool coverage (positive in the pool) before and after,
the search rate and the KB recall@K of the searches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rewards.metrics import reciprocal_of_rank

RANK_BUCKETS: tuple[tuple[str, int, int], ...] = (("1", 1, 1), ("2-5", 2, 5), ("6-10", 6, 10), ("11-K", 11, 10**9))


@dataclass(frozen=True)
class EpisodeRecord:
    """What evaluation keeps of one episode."""

    query_id: str
    pool_size: int
    has_positive: bool
    baseline_rank: int
    """Rank of the best positive under the FULL image (``pool_size + 1`` if absent)."""
    final_rank: int
    """Rank of the best positive under the view the episode ended on."""
    final_ndcg: float
    cropped: bool
    """The first decision was REGION (a valid or invalid box)."""
    reward: float
    """Sum of the episode's rewards."""
    steps: int
    outcome: str


def rank_bucket(rank: int, pool_size: int) -> str:
    """The baseline-rank bucket of a rank: ``"1"``, ``"2-5"``, ``"6-10"``, ``"11-K"`` or ``"absent"``."""
    if rank > pool_size:
        return "absent"
    for name, lo, hi in RANK_BUCKETS:
        if lo <= rank <= hi:
            return name
    raise ValueError(f"rank {rank} must be >= 1")


def summarize_episodes(records: list[EpisodeRecord]) -> dict:
    """The metrics table row of one policy: every value a plain float or int."""
    if not records:
        raise ValueError("no episodes to summarize")
    final = np.array([r.final_rank for r in records])
    present = np.array([r.has_positive for r in records])
    found = np.array([r.final_rank <= r.pool_size for r in records])
    rr = np.array([reciprocal_of_rank(r.final_rank, r.pool_size) for r in records])
    cropped = np.array([r.cropped for r in records])
    summary = {
        "queries": len(records),
        "MRR": float(rr.mean()),
        "R@1": float((final == 1).mean()),
        "R@5": float((found & (final <= 5)).mean()),
        "NDCG": float(np.mean([r.final_ndcg for r in records])),
        "CondR@1": float((final[present] == 1).mean()) if present.any() else float("nan"),
        "RC": float(cropped.mean()),
        "reward": float(np.mean([r.reward for r in records])),
        "improved": float(np.mean([r.final_rank < r.baseline_rank for r in records])),
        "worsened": float(np.mean([r.final_rank > r.baseline_rank for r in records])),
    }
    buckets = np.array([rank_bucket(r.baseline_rank, r.pool_size) for r in records])
    for name in [b[0] for b in RANK_BUCKETS] + ["absent"]:
        mask = buckets == name
        summary[f"RC[{name}]"] = float(cropped[mask].mean()) if mask.any() else float("nan")
        summary[f"n[{name}]"] = int(mask.sum())
    return summary


SEARCH_COLUMNS = ("cov_before", "cov_after", "searched", "KB-R@K")
"""Columns :func:`summarize_search` adds to a summary, in table order."""


@dataclass(frozen=True)
class SearchRecord:
    """What evaluation keeps of one episode's pools (an env with SEARCH or several regions)."""

    query_id: str
    covered_before: bool
    """The original pool holds a positive."""
    covered_after: bool
    """The pool the episode ended on holds a positive (judged by the query's gold ids)."""
    searches: int
    recall: float | None
    """KB recall@K of the episode's last search (``None`` without a search)."""


def summarize_search(records: list[SearchRecord]) -> dict:
    """Coverage before / after, the fraction of episodes that searched, and the mean KB
    recall@K over the episodes that did (NaN when none did)."""
    if not records:
        raise ValueError("no episodes to summarize")
    recalls = [r.recall for r in records if r.recall is not None]
    return {
        "cov_before": float(np.mean([r.covered_before for r in records])),
        "cov_after": float(np.mean([r.covered_after for r in records])),
        "searched": float(np.mean([r.searches > 0 for r in records])),
        "KB-R@K": float(np.mean(recalls)) if recalls else float("nan"),
    }
