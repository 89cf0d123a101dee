"""The rank-improvement reward of Region-R1: the one implementation of the formula.

The environment (which the verl agent loop steps), the local trainer and the evaluator all call
:func:`region_reward` / :func:`full_reward` with a :class:`RewardConfig`, so a reward
ablation is a config, never a code change.

For a REGION step, against the ranking it replaces (``old``), with r the 1-based rank of
the best positive::

    dMRR    = RR_new - RR_old                dNDCG   = NDCG_new - NDCG_old
    dRank   = log(r_old + 1) - log(r_new + 1)
    dMargin = margin_new - margin_old
    reward  = scale * max(w_mrr*dMRR + w_ndcg*dNDCG + w_rank*dRank + w_margin*dMargin
                          + w_iou*IoU(box, annotated box), floor)

FULL: ``full_reward`` if the baseline already ranks a positive first, else 0.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, NamedTuple

import numpy as np

from rewards.metrics import (
    MARGIN_POSITIVES,
    TIE_BREAKS,
    MarginPositive,
    TieBreak,
    best_positive_rank,
    margin,
    ndcg_at_k,
    reciprocal_rank,
)

TextRules = Literal["project", "region_r1_public"]
TEXT_RULES: tuple[str, ...] = ("project", "region_r1_public")
TEXT_FRAMES: tuple[str, ...] = ("norm", "norm1000", "pixel", "resized")  # envs.boxes.FRAMES; rewards imports no env


@dataclass(frozen=True)
class RewardConfig:
    """Every knob of the reward, and of the rules that decide which reward an action gets.

    The weights, ``scale``, ``floor``, ``full_reward`` and ``invalid_box_penalty``
    defaults are those the public Region-R1 code trains with (the command-line defaults
    of its ``main.py``; its ``clip_mixture_reward`` function has other fallbacks, 0.5 /
    0.5 / 0 / 0.1, that ``main.py`` always overrides). The other defaults are this
    project's own choices and differ from the public code: ties against positives,
    margin from the best positive, margin 0 without negatives, crops of at least
    ``min_box_side`` pixels, malformed text paid with ``malformed_penalty``, the text
    rules of :mod:`envs.text_actions` in Qwen2.5-VL's resized frame, and crops scored
    as cut. :meth:`region_r1_public` selects the public behaviour for each of them
    (the README's "Reward semantics vs the public Region-R1 code" lists them).

    The last five fields are read by the environment and :class:`envs.wrappers.TextAction`,
    not by the reward formula; they live here so one config (and one preset) fixes
    everything that decides a reward.
    """

    scale: float = 5.0
    """Multiplies the clipped weighted sum."""
    w_mrr: float = 0.2
    """Weight of the reciprocal-rank improvement."""
    w_ndcg: float = 0.2
    """Weight of the NDCG@K improvement."""
    w_rank: float = 0.2
    """Weight of the log-rank improvement ``log(r_old+1) - log(r_new+1)``."""
    w_margin: float = 0.4
    """Weight of the positive-vs-hardest-negative margin improvement."""
    w_iou: float = 0.0
    """Weight of IoU with the annotated box (LFPC's grounding signal); 0 disables it."""
    floor: float = -0.05
    """Lower clip of the weighted sum, so one bad crop costs little."""
    full_reward: float = 1.0
    """Reward for FULL when the baseline already ranks a positive first (else 0)."""
    invalid_box_penalty: float = -1.0
    """Reward for a box that is inverted or has zero area after clamping to the view."""
    malformed_penalty: float = -1.0
    """Reward for an action that cannot be parsed (text) or is not in the action space."""
    malformed_as_full: bool = False
    """Treat a malformed action as FULL instead (what the public Region-R1 code does: a
    completion without a parsable box is scored as "no crop")."""
    ndcg_k: int | None = None
    """NDCG cutoff; ``None`` means the pool size K."""
    tie_break: TieBreak = "against_positives"
    """How score ties rank: ``"against_positives"`` (a positive tied with a negative
    ranks after it) or ``"pool_order"`` (ties keep pool order: the public code)."""
    margin_positive: MarginPositive = "best"
    """Positive term of the margin: the ``"best"`` positive's similarity or the ``"mean"``
    over all positives (the public code)."""
    margin_without_negatives: float = 0.0
    """Margin of a pool with positives but no negative (the public code: 1.0)."""
    min_box_side: float = 4.0
    """Smallest valid crop side in original pixels after clamping (the env's
    ``min_box_side`` argument overrides it). A box must also have positive area; 0
    accepts any such box, as the public code does."""
    resize_crop: bool = False
    """Score a REGION crop after resizing it with Qwen2.5-VL's ``smart_resize`` rule
    (bicubic), as the public code does before its CLIP forward. The FULL baseline and the
    view shown to the policy are never resized."""
    text_rules: TextRules = "project"
    """How :class:`envs.wrappers.TextAction` reads text: ``"project"`` (every syntax of
    :mod:`envs.text_actions`, last action wins, reasoning ignored) or
    ``"region_r1_public"`` (the public ``parse_bbox_from_completion``)."""
    text_frame: str = "resized"
    """Frame :class:`envs.wrappers.TextAction` reads box numbers in unless given one:
    ``"resized"`` (what Qwen2.5-VL emits) or, as the public code crops them, ``"pixel"``
    (see :mod:`envs.boxes`)."""

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, float) and not np.isfinite(value):
                raise ValueError(f"RewardConfig.{name} must be finite, got {value}")
        if self.ndcg_k is not None and self.ndcg_k < 1:
            raise ValueError(f"RewardConfig.ndcg_k must be >= 1 or None, got {self.ndcg_k}")
        choices = {
            "tie_break": TIE_BREAKS,
            "margin_positive": MARGIN_POSITIVES,
            "text_rules": TEXT_RULES,
            "text_frame": TEXT_FRAMES,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"RewardConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.min_box_side < 0:
            raise ValueError(f"RewardConfig.min_box_side must be >= 0, got {self.min_box_side}")

    @classmethod
    def region_r1_public(cls, **overrides) -> "RewardConfig":
        """The public Region-R1 code's behaviour wherever this project chose differently.

        Pool-order ties, mean-positive margin, margin 1.0 without negatives, any crop of
        positive area, malformed text scored as FULL, the public text parser with boxes
        in original pixels, and crops resized with ``smart_resize`` before scoring. The
        weights and penalties are already the public ones.
        """
        public = dict(
            tie_break="pool_order",
            margin_positive="mean",
            margin_without_negatives=1.0,
            min_box_side=0.0,
            malformed_as_full=True,
            resize_crop=True,
            text_rules="region_r1_public",
            text_frame="pixel",
        )
        return cls(**{**public, **overrides})

    def stats(self, scores, positives) -> "RankingStats":
        """:func:`ranking_stats` of ``scores`` under this config's ranking conventions."""
        return ranking_stats(
            scores,
            positives,
            self.ndcg_k,
            tie_break=self.tie_break,
            margin_positive=self.margin_positive,
            margin_without_negatives=self.margin_without_negatives,
        )

    @classmethod
    def ablation(cls, name: str, **overrides) -> "RewardConfig":
        """The paper's reward ablation: ``mrr``, ``mrr+ndcg``, ``mrr+ndcg+rank``, ``full``.

        Each step switches one more term on at its default weight (the others are 0).
        """
        terms = {"mrr": 1, "mrr+ndcg": 2, "mrr+ndcg+rank": 3, "full": 4}
        if name not in terms:
            raise ValueError(f"unknown reward ablation {name!r}; choose from {sorted(terms)}")
        default = cls()
        weights = {w: getattr(default, w) for w in ("w_mrr", "w_ndcg", "w_rank", "w_margin")}
        switched_off = {w: 0.0 for w in list(weights)[terms[name] :]}
        return cls(**{**weights, **switched_off, **overrides})


class RankingStats(NamedTuple):
    """What the reward needs to know about one ranking (arrays with the batch shape)."""

    rank: np.ndarray
    rr: np.ndarray
    ndcg: np.ndarray
    margin: np.ndarray


def ranking_stats(
    scores,
    positives,
    ndcg_k: int | None = None,
    *,
    tie_break: TieBreak = "against_positives",
    margin_positive: MarginPositive = "best",
    margin_without_negatives: float = 0.0,
) -> RankingStats:
    """Rank of the best positive, its reciprocal, NDCG@k and margin of a pool's scores
    (conventions in :mod:`rewards.metrics`; :meth:`RewardConfig.stats` passes a config's)."""
    return RankingStats(
        rank=best_positive_rank(scores, positives, tie_break),
        rr=reciprocal_rank(scores, positives, tie_break),
        ndcg=ndcg_at_k(scores, positives, ndcg_k, tie_break),
        margin=margin(scores, positives, margin_positive, margin_without_negatives),
    )


class RewardTerms(NamedTuple):
    """The deltas of a REGION step and the reward they give (arrays with the batch shape)."""

    d_mrr: np.ndarray
    d_ndcg: np.ndarray
    d_rank: np.ndarray
    d_margin: np.ndarray
    iou: np.ndarray
    reward: np.ndarray


def log_rank_gain(rank_old, rank_new) -> np.ndarray:
    """``log(r_old + 1) - log(r_new + 1)``: positive when the positive moved up."""
    return np.log(np.asarray(rank_old, np.float64) + 1.0) - np.log(np.asarray(rank_new, np.float64) + 1.0)


def region_reward(old: RankingStats, new: RankingStats, config: RewardConfig = RewardConfig(), iou=0.0) -> RewardTerms:
    """Reward of replacing ranking ``old`` by ranking ``new`` (a REGION step)."""
    d_mrr = np.asarray(new.rr - old.rr, np.float64)
    d_ndcg = np.asarray(new.ndcg - old.ndcg, np.float64)
    d_rank = log_rank_gain(old.rank, new.rank)
    d_margin = np.asarray(new.margin - old.margin, np.float64)
    iou = np.broadcast_to(np.asarray(iou, np.float64), d_mrr.shape)
    weighted = (
        config.w_mrr * d_mrr
        + config.w_ndcg * d_ndcg
        + config.w_rank * d_rank
        + config.w_margin * d_margin
        + config.w_iou * iou
    )
    reward = config.scale * np.maximum(weighted, config.floor)
    return RewardTerms(d_mrr, d_ndcg, d_rank, d_margin, iou, reward)


def full_reward(baseline: RankingStats, config: RewardConfig = RewardConfig()) -> np.ndarray:
    """Reward of keeping the FULL image: ``full_reward`` if a positive is already first."""
    return np.where(np.asarray(baseline.rank) == 1, config.full_reward, 0.0)


def box_iou(box_a, box_b) -> np.ndarray:
    """IoU of ``[x1, y1, x2, y2]`` boxes (same frame; broadcasts over leading axes)."""
    a = np.asarray(box_a, np.float64)
    b = np.asarray(box_b, np.float64)
    ix = np.clip(np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]), 0, None)
    iy = np.clip(np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]), 0, None)
    inter = ix * iy
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
