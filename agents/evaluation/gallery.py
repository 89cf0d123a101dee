"""A picture of single queries: which to show, how to draw them, and how to replay one.

Aggregate metrics say *how often* a cropping policy helps; the gallery shows *where* it
cropped and why a crop helped or hurt. Three independent parts:

- :func:`select_panels` (pure): which episodes to show, deterministically: the largest
  gains, the largest losses (by reciprocal rank of the positive), some episodes where
  the policy kept FULL, and a few at random (seeded). Counts are in :class:`GalleryConfig`.
- :func:`draw_gallery`: a grid of those query images with the policy's chain of views,
  the annotated box and the oracle's box in legend-labelled colours, the question and
  the positive's rank FULL -> policy.
- :func:`per_query_row` / :func:`read_per_query` / :func:`replay`: ``per_query.jsonl``, one
  row per (policy, query), and replaying a row in an env so ``env.render()`` shows it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image

from envs.boxes import image_box_to_view
from envs.data.pools import load_image
from envs.actions import REGION
from envs.region_rerank import RegionRerankEnv
from rewards.evaluation import EpisodeRecord
from rewards.metrics import reciprocal_of_rank
from envs.atomic import atomic_open

GAIN, LOSS, KEPT_FULL, RANDOM = "gain", "loss", "kept FULL", "random"
CATEGORIES = (GAIN, LOSS, KEPT_FULL, RANDOM)
"""Panel categories, in the order the gallery shows them."""

DECISION_NAMES = {0: "FULL", 1: "REGION", -1: "malformed"}
"""``info["decision"]`` as written in traces and ``per_query.jsonl``."""


@dataclass
class GalleryConfig:
    """Which episodes the gallery shows and for which policies."""

    gains: int = 4
    """episodes with the largest rank gains (reciprocal rank of the positive)"""
    losses: int = 4
    """episodes with the largest rank losses"""
    kept_full: int = 2
    """episodes where the policy kept the FULL image (seeded sample)"""
    random: int = 2
    """further episodes at random (seeded); slots a category cannot fill go here too"""
    seed: int = 0
    """seed of the kept-FULL and random samples"""
    columns: int = 4
    """panels per row"""
    policies: tuple[str, ...] | None = None
    """policies to draw (the first is gallery.png, the others gallery_<name>.png);
    default: every non-baseline policy, else the first cropping baseline"""
    draw: bool = True
    """draw galleries at all (per_query.jsonl is written regardless)"""

    def __post_init__(self) -> None:
        counts = {"gains": self.gains, "losses": self.losses, "kept_full": self.kept_full, "random": self.random}
        negative = {k: v for k, v in counts.items() if v < 0}
        if negative or self.columns < 1:
            raise ValueError(f"gallery counts must be >= 0 and columns >= 1, got {negative or {'columns': self.columns}}")

    @property
    def size(self) -> int:
        return self.gains + self.losses + self.kept_full + self.random


@dataclass(frozen=True)
class EpisodeTrace:
    """What a gallery panel or a ``per_query.jsonl`` row needs beyond an :class:`EpisodeRecord`."""

    query_index: int
    question: str
    image: str
    image_size: tuple[int, int]
    annotated_box: tuple[float, float, float, float] | None
    decisions: tuple[str, ...]
    """Each step's decision: ``"FULL"``, ``"REGION"`` or ``"malformed"``."""
    views: tuple[tuple[float, float, float, float], ...]
    """The chain of views after each valid REGION step, original pixels (empty: kept FULL)."""
    reward_terms: dict | None
    """The reward terms of the last step that had them (``None`` for FULL at the first step)."""


@dataclass(frozen=True)
class Panel:
    """One query of a gallery: why it is shown, the policy's episode and the oracle's."""

    category: str
    record: EpisodeRecord
    trace: EpisodeTrace
    oracle: tuple[EpisodeRecord, EpisodeTrace] | None = None


# --------------------------------------------------------------------------- selection
def rank_gain(record: EpisodeRecord) -> float:
    """Change in reciprocal rank FULL -> policy: what the episode adds to MRR, so a 2 -> 1
    gain outweighs 40 -> 10, as it does for the metric."""
    return float(reciprocal_of_rank(record.final_rank, record.pool_size) - reciprocal_of_rank(record.baseline_rank, record.pool_size))


def kept_full(record: EpisodeRecord) -> bool:
    """The policy stopped at the first step with the FULL image."""
    return not record.cropped and record.outcome == "full"


def select_panels(records: Sequence[EpisodeRecord], config: GalleryConfig) -> list[tuple[str, int]]:
    """``(category, position in records)`` of the episodes to show, in gallery order.

    Gains and losses are ranked by :func:`rank_gain` (ties: the larger rank change,
    then the earlier query), so the choice depends only on the records. Kept-FULL and
    random episodes are seeded samples. An episode is shown at most once; slots a
    category cannot fill (a policy that never keeps FULL) go to the random sample, so
    the gallery has ``min(config.size, len(records))`` panels.
    """
    gains = [rank_gain(r) for r in records]
    steps = [r.baseline_rank - r.final_rank for r in records]
    improved = sorted((i for i, g in enumerate(gains) if g > 0), key=lambda i: (-gains[i], -steps[i], i))
    worsened = sorted((i for i, g in enumerate(gains) if g < 0), key=lambda i: (gains[i], steps[i], i))
    rng = np.random.default_rng(config.seed)
    chosen: list[tuple[str, int]] = [(GAIN, i) for i in improved[: config.gains]]
    chosen += [(LOSS, i) for i in worsened[: config.losses]]
    kept = [i for i, r in enumerate(records) if kept_full(r)]
    chosen += [(KEPT_FULL, i) for i in _sample(rng, kept, config.kept_full)]
    taken = {i for _, i in chosen}
    rest = [i for i in range(len(records)) if i not in taken]
    chosen += [(RANDOM, i) for i in _sample(rng, rest, config.size - len(chosen))]
    return chosen


def _sample(rng: np.random.Generator, items: list[int], k: int) -> list[int]:
    """Up to ``k`` of ``items`` without replacement, in their original order."""
    if k <= 0 or not items:
        return []
    return sorted(rng.choice(items, size=min(k, len(items)), replace=False).tolist())


def gallery_policies(
    names: Sequence[str], baselines: Iterable[str], fallbacks: Sequence[str], config: GalleryConfig
) -> list[str]:
    """The policies to draw, main first: ``config.policies`` if set; else every
    non-baseline policy (a trained one, a VLM); else the first of ``fallbacks`` (the
    baselines worth looking at, best first), else the first policy."""
    if config.policies is not None:
        unknown = [p for p in config.policies if p not in names]
        if unknown:
            raise ValueError(f"gallery policies {unknown} were not evaluated; choose from {list(names)}")
        return list(config.policies)
    baselines = set(baselines)
    learned = [n for n in names if n not in baselines]
    if learned:
        return learned
    return ([n for n in fallbacks if n in names] or list(names))[:1]


def gallery_filename(policy: str, main: bool) -> str:
    """``gallery.png`` for the main policy, ``gallery_<policy>.png`` (a safe file name) otherwise."""
    return "gallery.png" if main else f"gallery_{re.sub(r'[^A-Za-z0-9.+-]+', '_', policy)}.png"


# --------------------------------------------------------------------------- drawing
@dataclass(frozen=True)
class BoxStyle:
    """How one kind of box is drawn: colour, line width and dash pattern (``dash=0``: solid)."""

    color: tuple[int, int, int]
    width: int
    dash: int = 0
    gap: int = 0


# Colour and dash pattern both differ, so the boxes stay distinguishable in grey scale
# and for colour-blind readers (Okabe-Ito palette).
POLICY_STYLE = BoxStyle((213, 94, 0), 3)
ANNOTATED_STYLE = BoxStyle((0, 158, 115), 2, dash=7, gap=5)
ORACLE_STYLE = BoxStyle((0, 114, 178), 3, dash=2, gap=4)

PANEL_WIDTH = 250
"""Pixel width of one panel; the image area is square (the embedded scenes' shape),
other shapes are letterboxed."""
TEXT_LINES = 4
"""Lines of text above each image: category and id, ranks, two of the question."""
FONT_SIZE = 12
GAP = 8
"""Pixels between panels."""


def panel_lines(panel: Panel) -> tuple[str, str]:
    """The title and ranks lines above a panel: category and query id; the positive's
    rank FULL -> policy, and the oracle's."""
    r = panel.record
    if not r.has_positive:
        ranks = "no positive in the pool"
    else:
        ranks = f"rank FULL {r.baseline_rank} \u2192 {r.final_rank}"
        if panel.oracle is not None:
            ranks += f"  (oracle {panel.oracle[0].final_rank})"
    return f"{panel.category}: {r.query_id}", ranks


def wrap_to_width(text: str, width: float, measure, max_lines: int) -> list[str]:
    """Greedy word wrap by rendered width (``measure(str) -> pixels``); the last line
    ends in "..." when the text does not fit."""
    lines: list[str] = []
    words = text.split()
    while words and len(lines) < max_lines:
        line = words.pop(0)
        while words and measure(f"{line} {words[0]}") <= width:
            line = f"{line} {words.pop(0)}"
        lines.append(line)
    if words and lines:
        last = lines[-1]
        while last and measure(last + " ...") > width:
            last = last[:-1]
        lines[-1] = last.rstrip() + " ..."
    return lines


def fit_scale(image_size: tuple[int, int], area: tuple[int, int]) -> float:
    """The factor that fits an image into ``area`` keeping its aspect ratio."""
    return min(area[0] / image_size[0], area[1] / image_size[1])


def scale_box(box: Sequence[float], scale: float, offset: tuple[int, int]) -> tuple[float, float, float, float]:
    """An original-pixel box in panel pixels."""
    x1, y1, x2, y2 = (float(v) * scale for v in box)
    return x1 + offset[0], y1 + offset[1], x2 + offset[0], y2 + offset[1]


def dashed_segments(p0: tuple[float, float], p1: tuple[float, float], dash: int, gap: int) -> list[tuple[float, ...]]:
    """The ``(x0, y0, x1, y1)`` pieces of a dashed line from ``p0`` to ``p1`` (one piece when solid)."""
    length = float(np.hypot(p1[0] - p0[0], p1[1] - p0[1]))
    if dash <= 0 or length == 0:
        return [(*p0, *p1)]
    direction = ((p1[0] - p0[0]) / length, (p1[1] - p0[1]) / length)
    pieces = []
    for start in np.arange(0.0, length, dash + gap):
        stop = min(start + dash, length)
        pieces.append((p0[0] + direction[0] * start, p0[1] + direction[1] * start,
                       p0[0] + direction[0] * stop, p0[1] + direction[1] * stop))
    return pieces


def draw_box(draw, box: Sequence[float], style: BoxStyle, tag: str = "", font=None) -> None:
    """A rectangle in ``style`` with an optional tag (the zoom step) at its top-left corner."""
    x1, y1, x2, y2 = box
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)]
    # a solid white halo under the (dashed) line keeps it visible on busy scenes
    draw.line(corners, fill=(255, 255, 255), width=style.width + 2, joint="curve")
    for p0, p1 in zip(corners, corners[1:]):
        for piece in dashed_segments(p0, p1, style.dash, style.gap):
            draw.line(piece, fill=style.color, width=style.width)
    if tag:
        left, top, right, bottom = draw.textbbox((x1 + 2, y1 + 1), tag, font=font)
        draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), fill=style.color)
        draw.text((x1 + 2, y1 + 1), tag, fill=(255, 255, 255), font=font)


def gallery_fonts() -> tuple:
    """``(regular, bold)``: matplotlib's DejaVu Sans (it covers non-ASCII questions),
    else Pillow's built-in font."""
    from PIL import ImageFont

    try:
        import matplotlib

        fonts = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
        return (ImageFont.truetype(str(fonts / "DejaVuSans.ttf"), FONT_SIZE),
                ImageFont.truetype(str(fonts / "DejaVuSans-Bold.ttf"), FONT_SIZE))
    except (ImportError, OSError):
        font = ImageFont.load_default(FONT_SIZE)
        return font, font


def render_panel(panel: Panel, fonts: tuple) -> Image.Image:
    """One panel: the text lines over the query image with its boxes (the annotation,
    then the oracle's final view, then the policy's chain of views on top)."""
    from PIL import ImageDraw

    regular, bold = fonts
    line_height = FONT_SIZE + 3
    text_height = TEXT_LINES * line_height + 4
    area = (PANEL_WIDTH - 8, PANEL_WIDTH - 8)
    canvas = Image.new("RGB", (PANEL_WIDTH, text_height + area[1] + 8), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    title, ranks = panel_lines(panel)
    question = wrap_to_width(panel.trace.question, PANEL_WIDTH - 8, regular.getlength, TEXT_LINES - 2)
    for k, line in enumerate([title, ranks, *question]):
        draw.text((4, 2 + k * line_height), line, fill=(0, 0, 0) if k < 2 else (60, 60, 60), font=bold if k == 0 else regular)

    image = load_image(panel.trace.image)
    scale = fit_scale(image.size, area)
    shown = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BILINEAR, reducing_gap=2.0)
    offset = (4 + (area[0] - shown.width) // 2, text_height + (area[1] - shown.height) // 2)
    canvas.paste(shown, offset)
    if panel.trace.annotated_box is not None:
        draw_box(draw, scale_box(panel.trace.annotated_box, scale, offset), ANNOTATED_STYLE)
    if panel.oracle is not None and panel.oracle[1].views:
        draw_box(draw, scale_box(panel.oracle[1].views[-1], scale, offset), ORACLE_STYLE)
    views = panel.trace.views
    for step, view in enumerate(views, 1):  # numbered only when the policy zoomed more than once
        draw_box(draw, scale_box(view, scale, offset), POLICY_STYLE, str(step) if len(views) > 1 else "", regular)
    return canvas


def legend_image(policy: str, width: int, fonts: tuple) -> Image.Image:
    """The legend strip: a sample of each box style and what it means."""
    from PIL import ImageDraw

    regular, _ = fonts
    strip = Image.new("RGB", (width, FONT_SIZE + 14), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    entries = [
        (POLICY_STYLE, f"policy: {policy} (no box: kept FULL)"),
        (ANNOTATED_STYLE, "annotated box"),
        (ORACLE_STYLE, "oracle (no box: FULL)"),
    ]
    x, y = 6, strip.height // 2
    for style, text in entries:
        for piece in dashed_segments((x, y), (x + 30, y), style.dash, style.gap):
            draw.line(piece, fill=style.color, width=style.width)
        draw.text((x + 36, y), text, fill=(0, 0, 0), font=regular, anchor="lm")
        x += 36 + int(draw.textlength(text, font=regular)) + 24
    return strip


def compose_gallery(tiles: Sequence[Image.Image], columns: int, header: Image.Image, footer: str, fonts) -> Image.Image:
    """Tiles in a grid under ``header``, with a ``footer`` line (where the numbers come from)."""
    from PIL import ImageDraw

    columns = max(1, min(columns, len(tiles)))
    rows = -(-len(tiles) // columns)
    tile_w, tile_h = tiles[0].size[0] + GAP, tiles[0].size[1] + GAP
    width = max(columns * tile_w, header.width)
    sheet = Image.new("RGB", (width, header.height + rows * tile_h + FONT_SIZE + 8), (255, 255, 255))
    sheet.paste(header, (0, 0))
    for k, tile in enumerate(tiles):
        sheet.paste(tile, ((k % columns) * tile_w + GAP // 2, header.height + (k // columns) * tile_h))
    ImageDraw.Draw(sheet).text((6, sheet.height - FONT_SIZE - 5), footer, fill=(90, 90, 90), font=fonts[0])
    return sheet


def draw_gallery(panels: Sequence[Panel], path: Path, policy: str, columns: int = 4, title: str = "") -> Path:
    """Draw ``panels`` as a grid into ``path`` (PNG) and return it.

    Drawn with Pillow, not matplotlib: a dozen panels take tens of milliseconds, which
    keeps the gallery a small fraction of an evaluation. The sheet is quantized to 256
    colours, which keeps a photo-like gallery to a few hundred KB.
    """
    if not panels:
        raise ValueError("no panels to draw")
    fonts = gallery_fonts()
    tiles = [render_panel(panel, fonts) for panel in panels]
    columns = max(1, min(columns, len(tiles)))
    header = legend_image(policy, columns * (tiles[0].width + GAP), fonts)
    sheet = compose_gallery(tiles, columns, header, title, fonts)
    sheet.quantize(256, method=Image.Quantize.FASTOCTREE).save(path, optimize=True)
    return path


# --------------------------------------------------------------------------- per-query rows
def per_query_row(policy: str, record: EpisodeRecord, trace: EpisodeTrace) -> dict:
    """One ``per_query.jsonl`` line: the record, the trace and the first decision; boxes
    are ``[x1, y1, x2, y2]`` in original-image pixels (``box``: the final view, or null
    when the policy kept FULL)."""
    row = {"policy": policy, **asdict(record), **asdict(trace)}
    row["decision"] = trace.decisions[0] if trace.decisions else "none"
    row["box"] = list(trace.views[-1]) if trace.views else None
    return row


def write_per_query(rows: Iterable[dict], path: Path) -> Path:
    with atomic_open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def read_per_query(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def episode_from_row(row: dict) -> tuple[str, EpisodeRecord, EpisodeTrace]:
    """Inverse of :func:`per_query_row`: ``(policy, record, trace)``, e.g. to redraw a
    gallery from a ``per_query.jsonl`` without evaluating again."""
    record = EpisodeRecord(**{f.name: row[f.name] for f in fields(EpisodeRecord)})
    values = {f.name: row[f.name] for f in fields(EpisodeTrace)}
    values["image_size"] = tuple(values["image_size"])
    values["annotated_box"] = None if values["annotated_box"] is None else tuple(values["annotated_box"])
    values["decisions"] = tuple(values["decisions"])
    values["views"] = tuple(tuple(v) for v in values["views"])
    return row["policy"], record, EpisodeTrace(**values)


def replay(env: RegionRerankEnv, row: dict) -> dict:
    """Replay a ``per_query.jsonl`` row: reset to its query (by id) and crop its chain of
    views; returns the last ``info``. With ``render_mode="rgb_array"``, ``env.render()``
    then draws the episode. A malformed or invalid final action is not replayed (the view
    it left is the same)."""
    _, info = env.reset(options={"query_id": row["query_id"]})
    for view in row["views"]:
        # float64 pixels -> view-normalized: no float32 rounding on the way back
        action = {"decision": REGION, "box": image_box_to_view(np.asarray(view, np.float64), env.view_box)}
        _, _, terminated, _, info = env.step(action)
        if terminated:
            break
    return info
