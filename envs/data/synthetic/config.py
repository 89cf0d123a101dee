"""How the synthetic benchmark looks and how big it is; its splits and random streams."""

from __future__ import annotations

from dataclasses import dataclass, field

from envs.data.synthetic.entities import ENTITIES


CELLS: dict[tuple[int, int], str] = {
    (0, 0): "in the upper left",
    (1, 0): "at the top",
    (2, 0): "in the upper right",
    (0, 1): "on the left",
    (1, 1): "in the center",
    (2, 1): "on the right",
    (0, 2): "in the lower left",
    (1, 2): "at the bottom",
    (2, 2): "in the lower right",
}
"""Position phrases of the 3x3 grid cells ``(column, row)`` of a scene."""
SPLITS: tuple[str, ...] = ("train", "val", "test")

# Random streams: every draw is keyed by (seed, stream, ...), so no two uses share one.
STREAMS = {"train": 0, "val": 1, "test": 2, "kb": 3, "pools": 4, "fresh": 5}
"""``fresh``: scenes drawn outside the splits, as many as a supervised warm start asks for (:func:`~envs.data.synthetic.scenes.fresh_scene`)."""
@dataclass(frozen=True)
class SceneConfig:
    """How query scenes look. Sizes are fractions of the image side."""

    image_size: int = 320
    """Side of the square query image in pixels."""
    target_scale: tuple[float, float] = (0.12, 0.30)
    """Range of the target's side (its drawing tile) as a fraction of the image side, in
    the usual scene where it is one object among others of similar or larger size."""
    prominent_fraction: float = 0.3
    """Fraction of scenes (drawn per scene) in which the target is the main subject of the
    picture, with a side in ``prominent_scale``: there the FULL image already works, so
    a policy must learn when cropping is unnecessary."""
    prominent_scale: tuple[float, float] = (0.42, 0.6)
    """Range of the target's side in a scene where it is the main subject."""
    distractor_scale: tuple[float, float] = (0.15, 0.30)
    """Range of each distractor's side; mostly larger than small targets, so they
    dominate the FULL-image embedding as background objects do in real photos."""
    distractors: tuple[int, int] = (3, 6)
    """Inclusive range of the number of distractor entities (fewer if they do not fit)."""
    similar_distractor_prob: float = 0.5
    """Probability that a distractor shares the target's shape or colour (a hard case)."""
    clutter: float = 0.6
    """Background clutter level in [0, 1]: scales the number of blobs, lines and
    fragments behind the objects and of the thin lines drawn over them."""

    def __post_init__(self) -> None:
        if self.image_size < 64:
            raise ValueError(f"SceneConfig.image_size must be >= 64, got {self.image_size}")
        for name in ("target_scale", "prominent_scale", "distractor_scale"):
            low, high = getattr(self, name)
            if not 0.05 <= low <= high <= 0.7:
                raise ValueError(f"SceneConfig.{name} must satisfy 0.05 <= low <= high <= 0.7, got {(low, high)}")
        low, high = self.distractors
        if not 0 <= low <= high <= 8:
            raise ValueError(f"SceneConfig.distractors must satisfy 0 <= low <= high <= 8, got {(low, high)}")
        if not 0.0 <= self.clutter <= 1.0:
            raise ValueError(f"SceneConfig.clutter must be in [0, 1], got {self.clutter}")
        if not 0.0 <= self.prominent_fraction <= 1.0:
            raise ValueError(f"SceneConfig.prominent_fraction must be in [0, 1], got {self.prominent_fraction}")
        if not 0.0 <= self.similar_distractor_prob <= 1.0:
            raise ValueError(f"SceneConfig.similar_distractor_prob must be in [0, 1], got {self.similar_distractor_prob}")


@dataclass(frozen=True)
class BenchmarkConfig:
    """The whole benchmark: scenes, pools and split sizes. Frozen and hashable, so a
    cache can be keyed by it."""

    seed: int = 0
    """Root seed of every random draw."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    """How query scenes look."""
    pool_size: int = 20
    """K, the number of candidates per pool."""
    missing_positive_fraction: float = 0.1
    """Fraction of pools (rounded to a count per split) whose positive is replaced by the
    next hard negative, as when a retriever misses; CondR@1 skips them."""
    reference_size: int = 128
    """Side of the knowledge-base reference images in pixels."""
    train_queries: int = 2000
    """Number of queries in the train split."""
    val_queries: int = 200
    """Number of queries in the val split."""
    test_queries: int = 250
    """Number of queries in the test split (kept small so a full evaluation with an
    oracle grid search runs in minutes on CPU)."""

    def __post_init__(self) -> None:
        if not 2 <= self.pool_size <= len(ENTITIES):
            raise ValueError(f"BenchmarkConfig.pool_size must be in [2, {len(ENTITIES)}], got {self.pool_size}")
        if not 0.0 <= self.missing_positive_fraction <= 1.0:
            raise ValueError(f"BenchmarkConfig.missing_positive_fraction must be in [0, 1], got {self.missing_positive_fraction}")
        for split in SPLITS:
            if self.queries(split) < 0:
                raise ValueError(f"BenchmarkConfig.{split}_queries must be >= 0, got {self.queries(split)}")

    def queries(self, split: str) -> int:
        """Number of queries in ``split``."""
        return getattr(self, f"{check_split(split)}_queries")


def check_split(split: str) -> str:
    """Return ``split`` if it names a split, else raise naming the choices."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    return split
