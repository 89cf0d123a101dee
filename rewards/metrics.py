"""Ranking metrics for one candidate pool (or a batch of pools), as pure numpy functions.

Every function takes ``scores`` (similarities, higher is better) and ``positives``
(binary relevance) with the same shape ``(..., K)``: the last axis is the pool, any
leading axes are a batch. Results have the leading shape.

Conventions a user can rely on:

- **Ties are broken against positives.** A positive that ties with a negative is ranked
  after it, so a constant scorer never looks good. Positives that tie with each other
  keep their pool order (the sort is stable).
- **Multiple positives.** Rank, reciprocal rank and margin use the best-ranked / best-
  scored positive; NDCG counts every positive.
- **No positive in the pool.** Rank is ``K + 1`` (one past the end, so ``log(rank + 1)``
  stays finite and a reward delta between two such rankings is 0), reciprocal rank and
  NDCG are 0, margin is 0.
- **No negative in the pool** (e.g. a single-candidate pool): margin is 0, since there
  is nothing to separate the positive from; rank is 1.
"""

from __future__ import annotations

import numpy as np


def _as_arrays(scores, positives) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape:
        raise ValueError(f"scores shape {scores.shape} != positives shape {positives.shape}")
    if scores.ndim == 0 or scores.shape[-1] == 0:
        raise ValueError(f"a pool needs at least one candidate, got scores of shape {scores.shape}")
    return scores, positives


def ranking_order(scores, positives) -> np.ndarray:
    """Candidate indices from best to worst, ties broken against positives (stable)."""
    scores, positives = _as_arrays(scores, positives)
    # lexsort sorts by the last key first: descending score, then negatives before positives.
    return np.lexsort((positives, -scores), axis=-1)


def positive_ranks(scores, positives) -> np.ndarray:
    """1-based rank of every candidate; shape ``(..., K)`` (meaningful at positives)."""
    order = ranking_order(scores, positives)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, order.shape[-1] + 1), axis=-1)
    return ranks


def best_positive_rank(scores, positives) -> np.ndarray:
    """1-based rank of the best-ranked positive; ``K + 1`` when the pool has none."""
    scores, positives = _as_arrays(scores, positives)
    ranks = positive_ranks(scores, positives)
    k = scores.shape[-1]
    return np.where(positives, ranks, k + 1).min(axis=-1)


def reciprocal_rank(scores, positives) -> np.ndarray:
    """``1 / rank`` of the best positive; 0 when the pool has none."""
    rank = best_positive_rank(scores, positives)
    k = np.shape(scores)[-1]
    return np.where(rank <= k, 1.0 / rank, 0.0)


def recall_at_k(scores, positives, k: int) -> np.ndarray:
    """1.0 if a positive is ranked within the top ``k``, else 0.0."""
    if k < 1:
        raise ValueError(f"recall cutoff k must be >= 1, got {k}")
    return (best_positive_rank(scores, positives) <= k).astype(np.float64)


def ndcg_at_k(scores, positives, k: int | None = None) -> np.ndarray:
    """NDCG@k with binary relevance; ``k=None`` means the whole pool. 0 without positives."""
    scores, positives = _as_arrays(scores, positives)
    pool = scores.shape[-1]
    k = pool if k is None else k
    if k < 1:
        raise ValueError(f"NDCG cutoff k must be >= 1, got {k}")
    ranks = positive_ranks(scores, positives)
    gains = np.where(positives & (ranks <= k), 1.0 / np.log2(ranks + 1.0), 0.0).sum(axis=-1)
    n_ideal = np.minimum(positives.sum(axis=-1), k)
    ideal_discounts = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    idcg = np.where(n_ideal > 0, ideal_discounts[np.maximum(n_ideal, 1) - 1], 1.0)
    return gains / idcg


def margin(scores, positives) -> np.ndarray:
    """Best positive similarity minus best negative similarity; 0 if either side is empty."""
    scores, positives = _as_arrays(scores, positives)
    best_pos = np.where(positives, scores, -np.inf).max(axis=-1)
    best_neg = np.where(positives, -np.inf, scores).max(axis=-1)
    defined = np.isfinite(best_pos) & np.isfinite(best_neg)
    with np.errstate(invalid="ignore"):  # inf - inf where a side is empty; masked below
        return np.where(defined, best_pos - best_neg, 0.0)
