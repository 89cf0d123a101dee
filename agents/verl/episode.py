"""What one RegionRerank episode reports to verl, in one place.

The agent loop (:mod:`agents.verl.agent_loop`) returns each episode's outcome as
``AgentLoopOutput.extra_fields``; verl hands them to the trainer (the ``decision`` reaches
the ``rgrpo`` estimator, see :mod:`agents.verl.plugin`) and averages the numeric
``reward_extra_info`` over every validation pass (``val-aux/<source>/<key>/mean@1``).
:func:`episode_fields` writes that record for a played and for a failed episode alike;
its ``reward_extra_info`` carries :func:`curve_fields`, whose validation means are the
learning curves of a run (MRR and the crop rate by the FULL rank of the positive, read
back by :func:`agents.verl.launch.validation_point`).

:func:`request_seed` gives each generation request of an episode its sampling seed.
"""

from __future__ import annotations

import hashlib
from typing import Any, Mapping, Sequence

from envs.actions import MALFORMED, REGION
from rewards.evaluation import RANK_BUCKETS, rank_bucket
from rewards.metrics import reciprocal_of_rank

BUCKET_FIELDS: tuple[str, ...] = tuple(name.replace("-", "_").lower() for name, _, _ in RANK_BUCKETS)
"""Suffixes of the per-bucket fields of :func:`curve_fields`, one per :data:`RANK_BUCKETS`
entry (``1``, ``2_5``, ``6_10``, ``11_k``)."""


def request_seed(seed: int, *keys: Any) -> int:
    """The sampling seed of one generation request (vLLM's per-request ``seed``): a hash of
    the run's ``seed`` and ``keys`` (step, query, group member, draw), so a request samples
    the same tokens whichever requests share its batch."""
    digest = hashlib.blake2b(repr((seed, *keys)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def curve_fields(baseline_rank: int, final_rank: int, pool_size: int, cropped: bool) -> dict[str, float]:
    """Per-episode values whose means over a validation pass are the learning curves: the
    MRR (``reciprocal_rank``) and, for each FULL-rank bucket B, the share of queries in it
    (``in_rc_B``) and the share cropped in it (``cropped_rc_B``), so the bucket's crop rate
    is ``mean(cropped_rc_B) / mean(in_rc_B)``. A rank below 1 (a failed episode) is in no
    bucket and ranks nothing."""
    bucket = rank_bucket(baseline_rank, pool_size) if baseline_rank >= 1 else None
    fields = {"reciprocal_rank": float(reciprocal_of_rank(final_rank, pool_size)) if final_rank >= 1 else 0.0}
    for (name, _, _), key in zip(RANK_BUCKETS, BUCKET_FIELDS):
        fields[f"in_rc_{key}"] = float(bucket == name)
        fields[f"cropped_rc_{key}"] = float(bucket == name and cropped)
    return fields


def episode_fields(
    *,
    query_id: str,
    decisions: Sequence[int],
    baseline_rank: int,
    final_rank: int,
    pool_size: int,
    outcome: str,
    reward_terms: Mapping[str, float],
    steps: int,
    truncated: bool,
    balance_path: str,
    env_seconds: float,
    scoring_requests: int = 0,
    extra_draws: int = 0,
    scoring_error: str | None = None,
) -> dict[str, Any]:
    """The ``extra_fields`` of one episode. ``decision`` is the first decision (0 FULL, 1
    REGION, -1 malformed: :data:`agents.verl.plugin.DECISION_KEY`); an episode that failed
    scoring passes ``scoring_error`` (its ranks are -1 and it decided nothing)."""
    first = decisions[0] if decisions else MALFORMED
    failed = scoring_error is not None
    fields: dict[str, Any] = {
        "decision": first,
        "decisions": list(decisions),
        "baseline_rank": baseline_rank,
        "final_rank": final_rank,
        "rank_bucket": rank_bucket(baseline_rank, pool_size) if baseline_rank >= 1 else None,
        "outcome": outcome,
        "reward_terms": {k: float(v) for k, v in reward_terms.items()},
        "steps": steps,
        "truncated": truncated,
        "balance_path": balance_path,
        "query_id": query_id,
        "env_seconds": env_seconds,
        "scoring_failed": int(failed),
        "scoring_requests": scoring_requests,
        # Names differ from the keys above: verl flattens both into one namespace.
        "reward_extra_info": {
            "cropped": float(first == REGION),
            "malformed": float(first == MALFORMED and not failed),
            "rank_before": float(max(baseline_rank, 0)),
            "rank_after": float(max(final_rank, 0)),
            "rank_gain": float(baseline_rank - final_rank) if not failed else 0.0,
            "zoom_steps": float(steps),
            "balance_resampled": float(balance_path == "resampled"),
            "balance_forced": float(balance_path == "forced"),
            "balance_extra_draws": float(extra_draws),
            **curve_fields(baseline_rank, final_rank, pool_size, first == REGION),
        },
    }
    if failed:
        fields["scoring_error"] = scoring_error
    return fields
