"""Sampling query scenes: the target among distractors, and a question only the target answers.

A :class:`SceneSpec` is a pure function of ``(seed, split, index)``; drawing it is
:mod:`envs.data.synthetic.drawing`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from envs.data.synthetic.config import CELLS, STREAMS, BenchmarkConfig, SceneConfig, check_split
from envs.data.synthetic.entities import ENTITIES, Entity


QUESTION_TEMPLATES = (
    "What is the {what}{where}?",
    "Which entry of the knowledge base describes the {what}{where}?",
    "Tell me about the {what}{where}.",
    "What do we know about the {what}{where}?",
)


@dataclass(frozen=True)
class SceneObject:
    """An entity drawn in a scene: its square drawing tile and its pose."""

    entity: Entity
    left: int
    top: int
    size: int
    rotation: float
    """Degrees, counter-clockwise."""
    pattern_angle: float
    """Degrees; orientation of stripes and checks."""
    colour_shift: tuple[int, int, int]
    """Per-channel offset of the body colour (lighting varies between photos)."""

    @property
    def center(self) -> tuple[float, float]:
        return self.left + self.size / 2, self.top + self.size / 2


@dataclass(frozen=True)
class Clue:
    """What the question says about the target; at least one field is set and together
    they match no other object of the scene."""

    colour: str | None = None
    pattern: str | None = None
    shape: str | None = None
    cell: tuple[int, int] | None = None

    def matches(self, obj: SceneObject, image_size: int) -> bool:
        """Whether ``obj`` fits every stated part of the clue."""
        e = obj.entity
        return (
            (self.colour is None or e.colour == self.colour)
            and (self.pattern is None or e.pattern == self.pattern)
            and (self.shape is None or e.shape == self.shape)
            and (self.cell is None or cell_of(obj.center, image_size) == self.cell)
        )


@dataclass(frozen=True)
class SceneSpec:
    """Everything needed to render one query scene; ``objects[0]`` is the target."""

    query_id: str
    image_size: int
    objects: tuple[SceneObject, ...]
    clue: Clue
    question: str
    clutter: float
    clutter_seed: int
    """Seed of the clutter drawn by :func:`render_scene` (independent of the objects, so
    removing an object changes nothing else)."""

    @property
    def target(self) -> SceneObject:
        return self.objects[0]


def cell_of(point: tuple[float, float], image_size: int) -> tuple[int, int]:
    """The 3x3 grid cell ``(column, row)`` that holds ``point``."""
    col = min(int(3 * point[0] / image_size), 2)
    row = min(int(3 * point[1] / image_size), 2)
    return col, row


# --- drawing -------------------------------------------------------------------------


def _sample_distractor(target: Entity, taken: set[int], similar_prob: float, rng: np.random.Generator) -> Entity:
    if rng.random() < similar_prob:
        key = "shape" if rng.random() < 0.5 else "colour"
        pool = [e for e in ENTITIES if getattr(e, key) == getattr(target, key) and e.index not in taken]
    else:
        pool = [e for e in ENTITIES if e.index not in taken]
    return pool[int(rng.integers(len(pool)))]


def _place(size_px: int, image_size: int, placed: list[SceneObject], rng: np.random.Generator, tries: int = 60) -> tuple[int, int] | None:
    """A top-left corner where a tile of ``size_px`` overlaps no placed tile, or None."""
    gap = max(2, image_size // 80)
    for _ in range(tries):
        left, top = (int(v) for v in rng.integers(0, image_size - size_px + 1, size=2))
        if all(
            left + size_px + gap <= o.left or o.left + o.size + gap <= left or top + size_px + gap <= o.top or o.top + o.size + gap <= top
            for o in placed
        ):
            return left, top
    return None


def _make_object(entity: Entity, left: int, top: int, size_px: int, rng: np.random.Generator) -> SceneObject:
    return SceneObject(
        entity=entity,
        left=left,
        top=top,
        size=size_px,
        rotation=float(rng.uniform(-15, 15)),
        pattern_angle=float(rng.uniform(0, 180)),
        colour_shift=tuple(int(v) for v in rng.integers(-15, 16, size=3)),
    )


def _clear_of_cell_edges(point: tuple[float, float], image_size: int) -> bool:
    """True when ``point`` is not near a grid line, so its cell is unambiguous to a reader."""
    margin = 0.04 * image_size
    for v in point:
        for line in (image_size / 3, 2 * image_size / 3):
            if abs(v - line) < margin:
                return False
    return True


def unique_clues(objects: Sequence[SceneObject], image_size: int) -> list[Clue]:
    """Every clue (one attribute, the position, or an attribute plus the position) that
    matches ``objects[0]`` and no other object."""
    target = objects[0]
    attributes = [Clue(colour=target.entity.colour), Clue(pattern=target.entity.pattern), Clue(shape=target.entity.shape)]
    cell = cell_of(target.center, image_size)
    candidates = list(attributes)
    if _clear_of_cell_edges(target.center, image_size):
        candidates.append(Clue(cell=cell))
        candidates += [Clue(a.colour, a.pattern, a.shape, cell) for a in attributes]
    unique = [c for c in candidates if not any(c.matches(o, image_size) for o in objects[1:])]
    # An attribute plus the position only when the attribute alone is ambiguous.
    return [c for c in unique if c.cell is None or Clue(c.colour, c.pattern, c.shape) not in unique]


def question_for(clue: Clue, rng: np.random.Generator) -> str:
    """A natural question that refers to the target only through ``clue``."""
    if clue.shape is not None:
        what = clue.shape
    elif clue.colour is not None:
        what = f"{clue.colour} object"
    elif clue.pattern is not None:
        what = f"{clue.pattern} object"
    else:
        what = "object"
    where = "" if clue.cell is None else " " + CELLS[clue.cell]
    template = QUESTION_TEMPLATES[int(rng.integers(len(QUESTION_TEMPLATES)))]
    return template.format(what=what, where=where)


def sample_scene(config: SceneConfig, rng: np.random.Generator, query_id: str) -> SceneSpec:
    """Draw one scene: a target, distractors, their placement, the clue and question."""
    size = config.image_size
    while True:  # redraw the rare scene in which no clue singles out the target
        target = ENTITIES[int(rng.integers(len(ENTITIES)))]
        scale = config.prominent_scale if rng.random() < config.prominent_fraction else config.target_scale
        side = int(round(rng.uniform(*scale) * size))
        left, top = (int(v) for v in rng.integers(0, size - side + 1, size=2))
        objects = [_make_object(target, left, top, side, rng)]
        taken = {target.index}
        for _ in range(int(rng.integers(config.distractors[0], config.distractors[1] + 1))):
            entity = _sample_distractor(target, taken, config.similar_distractor_prob, rng)
            side = int(round(rng.uniform(*config.distractor_scale) * size))
            corner = _place(side, size, objects, rng)
            if corner is None:
                continue
            objects.append(_make_object(entity, corner[0], corner[1], side, rng))
            taken.add(entity.index)
        clues = unique_clues(objects, size)
        if clues:
            break
    clue = clues[int(rng.integers(len(clues)))]
    return SceneSpec(
        query_id=query_id,
        image_size=size,
        objects=tuple(objects),
        clue=clue,
        question=question_for(clue, rng),
        clutter=config.clutter,
        clutter_seed=int(rng.integers(2**63)),
    )


def scene_spec(config: BenchmarkConfig, split: str, index: int) -> SceneSpec:
    """Scene ``index`` of ``split``; depends only on ``(config.seed, split, index)``."""
    rng = np.random.default_rng([config.seed, STREAMS[check_split(split)], index])
    return sample_scene(config.scene, rng, query_id=f"{split}-{index:05d}")


def fresh_scene(config: BenchmarkConfig, seed: int, index: int) -> SceneSpec:
    """Scene ``index`` of the ``fresh`` stream of ``seed``: drawn like the splits' scenes but
    from a stream of its own, so no split holds it and a training set can grow without end."""
    rng = np.random.default_rng([config.seed, STREAMS["fresh"], seed, index])
    return sample_scene(config.scene, rng, query_id=f"fresh-{seed}-{index:07d}")


MIRRORED_WORDS: dict[str, dict[str, str]] = {
    "horizontal": {"left": "right", "right": "left"},
    "vertical": {"upper": "lower", "lower": "upper", "top": "bottom", "bottom": "top"},
}
"""Position words a mirror image swaps in a question (every position phrase of :data:`CELLS` is made of them)."""


def mirror_question(question: str, horizontal: bool, vertical: bool) -> str:
    """``question`` about the image mirrored left-right and/or top-bottom: its position words
    swapped (case kept)."""
    swaps = {**(MIRRORED_WORDS["horizontal"] if horizontal else {}), **(MIRRORED_WORDS["vertical"] if vertical else {})}
    if not swaps:
        return question

    def swap(match: re.Match) -> str:
        found = match.group(0)
        word = swaps[found.lower()]
        return word.upper() if found.isupper() else word.capitalize() if found[0].isupper() else word

    return re.sub(r"\b(" + "|".join(swaps) + r")\b", swap, question, flags=re.IGNORECASE)


def split_specs(config: BenchmarkConfig, split: str, count: int | None = None) -> list[SceneSpec]:
    """The first ``count`` scenes of ``split`` (default: the split's size)."""
    n = config.queries(split) if count is None else count
    return [scene_spec(config, split, i) for i in range(n)]


# --- pools ----------------------------------------------------------------------------
