"""A procedurally generated re-ranking benchmark: cluttered scenes, a knowledge base, pools.

The embedded default of the project (no model hub or dataset host is needed). It has
the structure that makes Region-R1 matter on real data:

- a **knowledge base** of :data:`ENTITIES` (every combination of a shape, a colour and
  a pattern, 400 in all), each with a short text ("a red striped hexagon") and a
  reference image;
- **query scenes** in which the target entity sits at a random place and scale among
  larger distractor entities and background clutter (blobs, lines, fragments);
- a **question** that names the target by something visible that no distractor shares
  (an attribute, its position, or both: "What is the striped object in the lower
  left?"), so knowing where to crop needs the question; the target box is annotated;
- **candidate pools** of K: the positive plus the hard negatives a retriever would
  return (highest FULL-image similarity), so the FULL-image baseline is imperfect; in a
  set fraction of pools the positive is missing (for CondR@1).

Everything is a pure function of a seed: each scene draws from its own
``numpy.random.Generator`` keyed by ``(seed, split, index)``, so a scene does not
depend on how many others were generated, and rendering is a pure function of a
:class:`SceneSpec`. Splits draw from different streams and share no scenes; the
knowledge base is shared, as a real one is.

This module only generates (PIL and numpy). Mining hard negatives with a scorer and
writing the files is :mod:`envs.default`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "triangle", "square", "diamond", "hexagon", "star", "cross", "heart")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (240, 215, 35),
    "green": (40, 150, 55),
    "cyan": (40, 195, 205),
    "blue": (35, 65, 200),
    "purple": (125, 45, 165),
    "pink": (240, 130, 185),
    "brown": (125, 75, 35),
    "gray": (125, 125, 125),
}
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "ringed")
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
_STREAM = {"train": 0, "val": 1, "test": 2, "kb": 3, "pools": 4}
_LIGHT = {"yellow", "cyan", "pink", "orange"}
_QUESTION_TEMPLATES = (
    "What is the {what}{where}?",
    "Which entry of the knowledge base describes the {what}{where}?",
    "Tell me about the {what}{where}.",
    "What do we know about the {what}{where}?",
)


@dataclass(frozen=True)
class Entity:
    """One knowledge-base entry: a shape of one colour with one pattern."""

    index: int
    shape: str
    colour: str
    pattern: str

    @property
    def id(self) -> str:
        return f"{self.colour}-{self.pattern}-{self.shape}"

    @property
    def text(self) -> str:
        """The candidate text, e.g. ``"a red striped hexagon"``."""
        return f"a {self.colour} {self.pattern} {self.shape}"

    @property
    def ink(self) -> tuple[int, int, int]:
        """Colour of the pattern: dark on light bodies, light on dark ones."""
        return (25, 25, 25) if self.colour in _LIGHT else (245, 245, 245)


ENTITIES: tuple[Entity, ...] = tuple(
    Entity(i, shape, colour, pattern) for i, (shape, colour, pattern) in enumerate(itertools.product(SHAPES, COLOURS, PATTERNS))
)
"""The knowledge base, in a fixed order (``ENTITIES[i].index == i``)."""


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


@dataclass(frozen=True)
class RenderedScene:
    """A rendered scene: the RGB image and each object's tight box in pixels."""

    image: Image.Image
    boxes: tuple[tuple[int, int, int, int], ...]
    """``[x1, y1, x2, y2]`` per object (same order as ``SceneSpec.objects``), the exact
    extent of its drawn pixels (x2, y2 exclusive)."""

    @property
    def target_box(self) -> tuple[int, int, int, int]:
        return self.boxes[0]


def check_split(split: str) -> str:
    """Return ``split`` if it names a split, else raise naming the choices."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    return split


def cell_of(point: tuple[float, float], image_size: int) -> tuple[int, int]:
    """The 3x3 grid cell ``(column, row)`` that holds ``point``."""
    col = min(int(3 * point[0] / image_size), 2)
    row = min(int(3 * point[1] / image_size), 2)
    return col, row


# --- drawing -------------------------------------------------------------------------


def _rotate(points: np.ndarray, degrees: float) -> np.ndarray:
    a = math.radians(degrees)
    rot = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])  # y points down
    return points @ rot.T


def _outline(shape: str) -> np.ndarray | None:
    """Unit outline of a shape (radius about 1, centred on 0); ``None`` for a circle."""
    if shape == "circle":
        return None
    if shape in ("triangle", "square", "hexagon"):
        n, start = {"triangle": (3, -90.0), "square": (4, -45.0), "hexagon": (6, 0.0)}[shape]
        t = np.radians(start + 360.0 * np.arange(n) / n)
        pts = np.stack([np.cos(t), np.sin(t)], axis=1)
        return pts + (0.0, 0.2) if shape == "triangle" else pts  # centre the triangle's mass
    if shape == "diamond":
        return np.array([[0.0, -1.0], [0.62, 0.0], [0.0, 1.0], [-0.62, 0.0]])
    if shape == "star":
        t = np.radians(-90.0 + 36.0 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], axis=1)
    if shape == "cross":
        a = 0.36
        return np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]],
            dtype=np.float64,
        )
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        return np.stack([x, y + 2.5], axis=1) / 16.5
    raise ValueError(f"unknown shape {shape!r}; choose from {SHAPES}")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, center: float, radius: float, rotation: float, fill, outline=None, width: int = 0) -> None:
    pts = _outline(shape)
    if pts is None:
        c, r = center, radius
        draw.ellipse((c - r, c - r, c + r, c + r), fill=fill, outline=outline, width=width)
        return
    pts = _rotate(pts, rotation) * radius + center
    draw.polygon([tuple(p) for p in pts], fill=fill, outline=outline, width=width)


def _pattern_mask(pattern: str, shape: str, size: int, rotation: float, angle: float) -> Image.Image:
    """Where the pattern ink goes, in tile coordinates (the body mask clips it later)."""
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    c = size / 2
    if pattern == "plain":
        return mask
    if pattern == "ringed":
        for scale, value in ((0.72, 255), (0.48, 0), (0.24, 255)):
            _draw_shape(draw, shape, c, 0.46 * size * scale, rotation, fill=value)
        return mask
    span = size  # half-extent that covers the rotated tile
    if pattern == "striped":
        period = size / 5.5
        for k in range(-6, 7):
            u0, u1 = k * period, k * period + period / 2
            band = np.array([[u0, -span], [u1, -span], [u1, span], [u0, span]])
            draw.polygon([tuple(p) for p in _rotate(band, angle) + c], fill=255)
    elif pattern == "dotted":
        period, r = size / 4.6, size / 15
        for i in range(-4, 5):
            for j in range(-4, 5):
                x, y = _rotate(np.array([[i * period, j * period]]), angle)[0] + c
                draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    elif pattern == "checkered":
        q = size / 4.2
        for i in range(-5, 5):
            for j in range(-5, 5):
                if (i + j) % 2 == 0:
                    sq = np.array([[i * q, j * q], [(i + 1) * q, j * q], [(i + 1) * q, (j + 1) * q], [i * q, (j + 1) * q]])
                    draw.polygon([tuple(p) for p in _rotate(sq, angle) + c], fill=255)
    else:
        raise ValueError(f"unknown pattern {pattern!r}; choose from {PATTERNS}")
    return mask


def render_entity(entity: Entity, size: int, rotation: float = 0.0, pattern_angle: float = 0.0, colour_shift=(0, 0, 0)) -> Image.Image:
    """The entity drawn on a transparent ``size x size`` RGBA tile."""
    body_rgb = tuple(int(np.clip(v + d, 0, 255)) for v, d in zip(COLOURS[entity.colour], colour_shift))
    edge_rgb = tuple(int(v * 0.5) for v in body_rgb)
    radius = 0.46 * size
    shape_mask = Image.new("L", (size, size), 0)
    _draw_shape(ImageDraw.Draw(shape_mask), entity.shape, size / 2, radius, rotation, fill=255)
    tile = Image.new("RGB", (size, size), body_rgb)
    tile.paste(entity.ink, mask=_pattern_mask(entity.pattern, entity.shape, size, rotation, pattern_angle))
    _draw_shape(ImageDraw.Draw(tile), entity.shape, size / 2, radius, rotation, fill=None, outline=edge_rgb, width=max(1, size // 32))
    tile.putalpha(shape_mask)
    return tile


def _random_colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, size=3))


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    """A smooth, uneven backdrop: a coarse random colour field upsampled."""
    base = rng.integers(60, 200, size=3)
    field_ = np.clip(base + rng.normal(0, 35, size=(4, 4, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(field_, "RGB").resize((size, size), Image.Resampling.BICUBIC)


def _draw_clutter(image: Image.Image, level: float, rng: np.random.Generator, *, over: bool) -> None:
    """Blobs, fragments and lines behind the objects, or a few thin lines over them."""
    size = image.width
    draw = ImageDraw.Draw(image)
    if over:
        for _ in range(int(round(3 * level))):
            xy = rng.uniform(0, size, size=4)
            draw.line(tuple(xy), fill=_random_colour(rng), width=int(rng.integers(1, 3)))
        return
    for _ in range(int(round(14 * level))):
        cx, cy = rng.uniform(0, size, size=2)
        rx, ry = rng.uniform(0.03, 0.16, size=2) * size
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=_random_colour(rng, 30, 230))
    for _ in range(int(round(8 * level))):
        n = int(rng.integers(3, 7))
        cx, cy = rng.uniform(0, size, size=2)
        pts = rng.normal(0, 0.06 * size, size=(n, 2)) + (cx, cy)
        draw.polygon([tuple(p) for p in pts], fill=_random_colour(rng))
    for _ in range(int(round(18 * level))):
        xy = rng.uniform(0, size, size=4)
        draw.line(tuple(xy), fill=_random_colour(rng), width=int(rng.integers(1, 6)))


def render_scene(spec: SceneSpec) -> RenderedScene:
    """Draw a scene (pure function of ``spec``): backdrop and clutter, the objects, then
    a few lines over them."""
    rng = np.random.default_rng(spec.clutter_seed)
    image = _background(spec.image_size, rng)
    _draw_clutter(image, spec.clutter, rng, over=False)
    boxes = []
    for obj in spec.objects:
        tile = render_entity(obj.entity, obj.size, obj.rotation, obj.pattern_angle, obj.colour_shift)
        image.paste(tile, (obj.left, obj.top), tile)
        x1, y1, x2, y2 = tile.getchannel("A").getbbox()
        boxes.append((obj.left + x1, obj.top + y1, obj.left + x2, obj.top + y2))
    _draw_clutter(image, spec.clutter, rng, over=True)
    return RenderedScene(image, tuple(boxes))


def render_reference(entity: Entity, size: int, rng: np.random.Generator) -> Image.Image:
    """A knowledge-base style picture of ``entity``: centred on a plain light backdrop,
    with a random pose and scale (so it never equals the entity's look in a scene)."""
    backdrop = _random_colour(rng, 185, 250)
    image = Image.new("RGB", (size, size), backdrop)
    side = int(size * rng.uniform(0.6, 0.85))
    tile = render_entity(entity, side, float(rng.uniform(-15, 15)), float(rng.uniform(0, 180)), tuple(int(v) for v in rng.integers(-12, 13, size=3)))
    left, top = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    image.paste(tile, (left, top), tile)
    return image


def reference_image(entity: Entity, seed: int, size: int) -> Image.Image:
    """The canonical knowledge-base image of ``entity`` (the candidate's image)."""
    return render_reference(entity, size, np.random.default_rng([seed, _STREAM["kb"], entity.index]))


# --- sampling scenes ------------------------------------------------------------------


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
    template = _QUESTION_TEMPLATES[int(rng.integers(len(_QUESTION_TEMPLATES)))]
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
    rng = np.random.default_rng([config.seed, _STREAM[check_split(split)], index])
    return sample_scene(config.scene, rng, query_id=f"{split}-{index:05d}")


def split_specs(config: BenchmarkConfig, split: str, count: int | None = None) -> list[SceneSpec]:
    """The first ``count`` scenes of ``split`` (default: the split's size)."""
    n = config.queries(split) if count is None else count
    return [scene_spec(config, split, i) for i in range(n)]


# --- pools ----------------------------------------------------------------------------


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


def build_pools(specs: Sequence[SceneSpec], similarity: np.ndarray, config: BenchmarkConfig, split: str) -> list[PoolSpec]:
    """Pools for the scenes of ``split`` given ``similarity[i, e]`` between the FULL image
    of scene ``i`` and entity ``e`` (the retriever's scores)."""
    similarity = np.asarray(similarity)
    if similarity.shape != (len(specs), len(ENTITIES)):
        raise ValueError(f"similarity must have shape {(len(specs), len(ENTITIES))} (scenes x entities), got {similarity.shape}")
    rng = np.random.default_rng([config.seed, _STREAM["pools"], _STREAM[check_split(split)]])
    missing = missing_positive_mask(len(specs), config.missing_positive_fraction, rng)
    return [mine_pool(similarity[i], spec.target.entity.index, config.pool_size, bool(missing[i]), rng) for i, spec in enumerate(specs)]
