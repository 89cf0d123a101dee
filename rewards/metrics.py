"""Ranking metrics for one candidate pool (or a batch of pools), as pure numpy functions.

Every function takes ``scores`` (similarities, higher is better) and ``positives``
(binary relevance) with the same shape ``(..., K)``: the last axis is the pool, any
leading axes are a batch. Results have the leading shape.

Conventions a user can rely on (the defaults; the options reproduce the public
Region-R1 code, see ``RewardConfig.region_r1_public``):

- **Ties are broken against positives** (``tie_break="against_positives"``). A positive
  that ties with a negative is ranked after it, so a constant scorer never looks good.
  Positives that tie with each other keep their pool order (the sort is stable).
  ``tie_break="pool_order"`` keeps every tie in pool order, as Python's stable
  ``sorted(..., reverse=True)`` in the public code does.
- **Multiple positives.** Rank and reciprocal rank use the best-ranked positive; NDCG
  counts every positive; margin uses the best-scored positive (``positive="best"``) or
  the mean of the positives (``positive="mean"``, the public code).
- **No positive in the pool.** Rank is ``K + 1`` (one past the end, so ``log(rank + 1)``
  stays finite and a reward delta between two such rankings is 0), reciprocal rank and
  NDCG are 0, margin is 0.
- **No negative in the pool** (e.g. a single-candidate pool): rank is 1 and margin is
  ``without_negatives`` (0 by default, since there is nothing to separate the positive
  from; the public code uses 1.0).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

TieBreak = Literal["against_positives", "pool_order"]
MarginPositive = Literal["best", "mean"]
TIE_BREAKS: tuple[str, ...] = ("against_positives", "pool_order")
MARGIN_POSITIVES: tuple[str, ...] = ("best", "mean")


def _as_arrays(scores, positives) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    positives = np.asarray(positives, dtype=bool)
    if scores.shape != positives.shape:
        raise ValueError(f"scores shape {scores.shape} != positives shape {positives.shape}")
    if scores.ndim == 0 or scores.shape[-1] == 0:
        raise ValueError(f"a pool needs at least one candidate, got scores of shape {scores.shape}")
    return scores, positives


def ranking_order(scores, positives, tie_break: TieBreak = "against_positives") -> np.ndarray:
    """Candidate indices from best to worst; ties broken by ``tie_break`` (both stable)."""
    scores, positives = _as_arrays(scores, positives)
    if tie_break == "pool_order":
        return np.argsort(-scores, axis=-1, kind="stable")
    if tie_break != "against_positives":
        raise ValueError(f"unknown tie_break {tie_break!r}; choose from {TIE_BREAKS}")
    # lexsort sorts by the last key first: descending score, then negatives before positives.
    return np.lexsort((positives, -scores), axis=-1)


def positive_ranks(scores, positives, tie_break: TieBreak = "against_positives") -> np.ndarray:
    """1-based rank of every candidate; shape ``(..., K)`` (meaningful at positives)."""
    order = ranking_order(scores, positives, tie_break)
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(1, order.shape[-1] + 1), axis=-1)
    return ranks


def best_positive_rank(scores, positives, tie_break: TieBreak = "against_positives") -> np.ndarray:
    """1-based rank of the best-ranked positive; ``K + 1`` when the pool has none."""
    scores, positives = _as_arrays(scores, positives)
    ranks = positive_ranks(scores, positives, tie_break)
    k = scores.shape[-1]
    return np.where(positives, ranks, k + 1).min(axis=-1)


def reciprocal_rank(scores, positives, tie_break: TieBreak = "against_positives") -> np.ndarray:
    """``1 / rank`` of the best positive; 0 when the pool has none."""
    return reciprocal_of_rank(best_positive_rank(scores, positives, tie_break), np.shape(scores)[-1])


def reciprocal_of_rank(rank, pool_size: int) -> np.ndarray:
    """``1 / rank`` of a best-positive rank; 0 for a rank beyond ``pool_size`` (no positive in the pool)."""
    rank = np.asarray(rank, dtype=np.float64)
    return np.where(rank <= pool_size, 1.0 / np.maximum(rank, 1.0), 0.0)


def recall_at_k(scores, positives, k: int, tie_break: TieBreak = "against_positives") -> np.ndarray:
    """1.0 if a positive is ranked within the top ``k``, else 0.0."""
    if k < 1:
        raise ValueError(f"recall cutoff k must be >= 1, got {k}")
    return (best_positive_rank(scores, positives, tie_break) <= k).astype(np.float64)


def ndcg_at_k(scores, positives, k: int | None = None, tie_break: TieBreak = "against_positives") -> np.ndarray:
    """NDCG@k with binary relevance; ``k=None`` means the whole pool. 0 without positives."""
    scores, positives = _as_arrays(scores, positives)
    pool = scores.shape[-1]
    k = pool if k is None else k
    if k < 1:
        raise ValueError(f"NDCG cutoff k must be >= 1, got {k}")
    ranks = positive_ranks(scores, positives, tie_break)
    gains = np.where(positives & (ranks <= k), 1.0 / np.log2(ranks + 1.0), 0.0).sum(axis=-1)
    n_ideal = np.minimum(positives.sum(axis=-1), k)
    ideal_discounts = np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))
    idcg = np.where(n_ideal > 0, ideal_discounts[np.maximum(n_ideal, 1) - 1], 1.0)
    return gains / idcg


def margin(scores, positives, positive: MarginPositive = "best", without_negatives: float = 0.0) -> np.ndarray:
    """Positive similarity minus the best negative similarity.

    The positive term is the best positive's similarity (``positive="best"``) or the
    mean over the positives (``"mean"``). 0 without a positive; ``without_negatives``
    when the pool has positives but no negative.
    """
    scores, positives = _as_arrays(scores, positives)
    if positive not in MARGIN_POSITIVES:
        raise ValueError(f"unknown margin positive term {positive!r}; choose from {MARGIN_POSITIVES}")
    n_pos = positives.sum(axis=-1)
    if positive == "best":
        pos = np.where(positives, scores, -np.inf).max(axis=-1)
    else:
        pos = np.where(positives, scores, 0.0).sum(axis=-1) / np.maximum(n_pos, 1)
    best_neg = np.where(positives, -np.inf, scores).max(axis=-1)
    has_neg = n_pos < scores.shape[-1]
    with np.errstate(invalid="ignore"):  # inf - inf where a side is empty; masked below
        value = np.where(has_neg, pos - best_neg, without_negatives)
    return np.where(n_pos > 0, value, 0.0)
