"""Ranking metrics against hand-computed values, including the documented edge cases."""

import math

import numpy as np
import pytest

from rewards import best_positive_rank, margin, ndcg_at_k, positive_ranks, recall_at_k, reciprocal_rank


def test_single_positive_hand_computed():
    scores = [0.9, 0.5, 0.7, 0.1]
    positives = [False, True, False, False]
    assert best_positive_rank(scores, positives) == 3
    assert reciprocal_rank(scores, positives) == pytest.approx(1 / 3)
    assert ndcg_at_k(scores, positives) == pytest.approx(1 / math.log2(4))
    assert margin(scores, positives) == pytest.approx(0.5 - 0.9)
    assert recall_at_k(scores, positives, 1) == 0.0
    assert recall_at_k(scores, positives, 3) == 1.0


def test_multiple_positives_use_best_for_rank_and_all_for_ndcg():
    scores = [0.2, 0.9, 0.5, 0.8]  # order: 1, 3, 2, 0
    positives = [True, False, True, False]  # positives at ranks 4 and 3
    assert best_positive_rank(scores, positives) == 3
    ideal = 1 + 1 / math.log2(3)
    assert ndcg_at_k(scores, positives) == pytest.approx((1 / math.log2(4) + 1 / math.log2(5)) / ideal)
    assert margin(scores, positives) == pytest.approx(0.5 - 0.9)


def test_ndcg_cutoff_ignores_positives_below_k():
    scores = [0.9, 0.8, 0.7, 0.6]
    positives = [False, False, False, True]
    assert ndcg_at_k(scores, positives, k=3) == 0.0
    assert ndcg_at_k(scores, positives, k=4) == pytest.approx(1 / math.log2(5))


def test_ties_are_broken_against_positives():
    # A positive tying with a negative is ranked after it: a constant scorer earns nothing.
    scores = [0.5, 0.5, 0.5]
    positives = [True, False, False]
    assert best_positive_rank(scores, positives) == 3
    # Positives tying each other keep pool order.
    assert positive_ranks([0.5, 0.5], [True, True]).tolist() == [1, 2]


def test_pool_without_positive():
    scores = [0.3, 0.2]
    positives = [False, False]
    assert best_positive_rank(scores, positives) == 3  # K + 1
    assert reciprocal_rank(scores, positives) == 0.0
    assert ndcg_at_k(scores, positives) == 0.0
    assert margin(scores, positives) == 0.0


def test_single_candidate_pool():
    assert best_positive_rank([0.1], [True]) == 1
    assert reciprocal_rank([0.1], [True]) == 1.0
    assert ndcg_at_k([0.1], [True]) == 1.0
    assert margin([0.1], [True]) == 0.0  # no negative to separate from


def test_batched_equals_per_pool():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(5, 7, 20))
    positives = rng.random((5, 7, 20)) < 0.1
    for fn in (best_positive_rank, reciprocal_rank, ndcg_at_k, margin):
        batched = fn(scores, positives)
        assert batched.shape == (5, 7)
        looped = np.array([[fn(s, p) for s, p in zip(rs, rp)] for rs, rp in zip(scores, positives)])
        np.testing.assert_allclose(batched, looped)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="shape"):
        best_positive_rank([0.1, 0.2], [True])
    with pytest.raises(ValueError, match="at least one candidate"):
        best_positive_rank([], [])
    with pytest.raises(ValueError, match="cutoff"):
        ndcg_at_k([0.1], [True], k=0)
