"""Drawing entities, scenes and reference images (PIL), each a pure function of its spec or seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from envs.data.synthetic.config import STREAMS
from envs.data.synthetic.entities import COLOURS, PATTERNS, SHAPES, Entity
from envs.data.synthetic.scenes import SceneSpec


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
    return render_reference(entity, size, np.random.default_rng([seed, STREAMS["kb"], entity.index]))


# --- sampling scenes ------------------------------------------------------------------
