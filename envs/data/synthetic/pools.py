"""Candidate pools: the positive plus the hard negatives a retriever would return.

Mining needs a scorer's FULL-image similarities, which :mod:`envs.data.default` computes;
this module only chooses, from those, which entities each pool holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from envs.data.synthetic.config import STREAMS, BenchmarkConfig, check_split
from envs.data.synthetic.entities import ENTITIES
from envs.data.synthetic.scenes import SceneSpec


@dataclass(frozen=True)
class PoolSpec:
    """A candidate pool as entity indices in presentation order, with relevance."""

    entities: tuple[int, ...]
    positive: tuple[bool, ...]


def missing_positive_mask(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask with exactly ``round(fraction * n)`` pools marked as missing."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: int(round(fraction * n))]] = True
    return mask


def mine_pool(similarity: np.ndarray, target: int, pool_size: int, missing: bool, rng: np.random.Generator) -> PoolSpec:
    """The pool a retriever returns: the top hard negatives by ``similarity`` (one score
    per knowledge-base entity) plus the positive, or only negatives when ``missing``.
    Shuffled, so the pool order carries no hint."""
    order = np.argsort(-np.asarray(similarity, np.float64), kind="stable")
    negatives = [int(e) for e in order if e != target]
    members = negatives[:pool_size] if missing else [target] + negatives[: pool_size - 1]
    members = [members[i] for i in rng.permutation(len(members))]
    return PoolSpec(tuple(members), tuple(m == target for m in members))


def mine_pools(specs: Sequence[SceneSpec], similarity: np.ndarray, config: BenchmarkConfig, split: str) -> list[PoolSpec]:
    """Pools for the scenes of ``split`` given ``similarity[i, e]`` between the FULL image
    of scene ``i`` and entity ``e`` (the retriever's scores)."""
    similarity = np.asarray(similarity)
    if similarity.shape != (len(specs), len(ENTITIES)):
        raise ValueError(f"similarity must have shape {(len(specs), len(ENTITIES))} (scenes x entities), got {similarity.shape}")
    rng = np.random.default_rng([config.seed, STREAMS["pools"], STREAMS[check_split(split)]])
    missing = missing_positive_mask(len(specs), config.missing_positive_fraction, rng)
    return [mine_pool(similarity[i], spec.target.entity.index, config.pool_size, bool(missing[i]), rng) for i, spec in enumerate(specs)]
