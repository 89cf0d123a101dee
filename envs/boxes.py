"""Box coordinates: the one module that converts between frames, clamps and crops.

A box is ``[x1, y1, x2, y2]`` (left, top, right, bottom). Four frames occur:

``"norm"``      0-1, relative to the current view (the env's native action frame).
``"norm1000"``  0-1000, relative to the current view (Qwen2-VL / many grounding models).
``"pixel"``     absolute pixels of the current view at its original resolution.
``"resized"``   absolute pixels of the image the VLM was shown, i.e. the view after
                the Qwen-VL resize rule (:func:`qwen_resized_size`, with the family's
                resize factor). Qwen2.5-VL emits boxes in this frame; Qwen3-VL emits
                ``"norm1000"`` (see :mod:`agents.qwen.family`).

A *view* is a rectangle of the original query image in whole original-image pixels;
the first view is the whole image and each REGION step zooms into the
:func:`pixel_rect` of its box, the crop the policy is then shown, so a box in the
next step's frames maps onto exactly the pixels the policy saw.
Converting through ``"norm"`` and :func:`view_box_to_image` gives the crop in original
pixels; crops are cut at full resolution from the original image, never from a resized
copy.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from PIL import Image

Frame = Literal["norm", "norm1000", "pixel", "resized"]
FRAMES: tuple[str, ...] = ("norm", "norm1000", "pixel", "resized")

QWEN_PATCH_FACTOR = 28
"""Qwen2.5-VL resizes so both sides are multiples of patch size (14) x merge size (2): the
default factor of :func:`qwen_resized_size`. Other families read theirs from their
processor (:func:`agents.qwen.family.resize_factor`; Qwen3-VL: 16 x 2 = 32)."""
QWEN_MIN_PIXELS = 4 * 28 * 28
QWEN_MAX_PIXELS = 16384 * 28 * 28


def qwen_resized_size(
    width: int,
    height: int,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int = QWEN_MAX_PIXELS,
    factor: int = QWEN_PATCH_FACTOR,
) -> tuple[int, int]:
    """``(width, height)`` of the image a Qwen-VL model sees for a ``width x height`` input.

    Delegates to ``qwen_vl_utils.smart_resize`` with ``factor`` (patch size x merge size
    of the model's image processor: 28 for Qwen2.5-VL, the default; 32 for Qwen3-VL), so
    the frame matches what the processor really feeds the model.
    """
    from qwen_vl_utils.vision_process import smart_resize

    if int(factor) != factor or factor < 1:
        raise ValueError(f"factor must be a positive integer, got {factor!r}")
    new_h, new_w = smart_resize(height, width, factor=int(factor), min_pixels=min_pixels, max_pixels=max_pixels)
    return int(new_w), int(new_h)


def _frame_extent(frame: str, view_size: tuple[float, float], resized_size: tuple[int, int] | None) -> tuple[float, float]:
    if frame == "norm":
        return 1.0, 1.0
    if frame == "norm1000":
        return 1000.0, 1000.0
    if frame == "pixel":
        return float(view_size[0]), float(view_size[1])
    if frame == "resized":
        if resized_size is None:
            raise ValueError("frame 'resized' needs resized_size (the size of the image the VLM saw)")
        return float(resized_size[0]), float(resized_size[1])
    raise ValueError(f"unknown box frame {frame!r}; choose from {FRAMES}")


def to_norm(box, frame: Frame, view_size: tuple[float, float], resized_size: tuple[int, int] | None = None) -> np.ndarray:
    """Convert a box in ``frame`` to 0-1 coordinates of the view (no clamping)."""
    w, h = _frame_extent(frame, view_size, resized_size)
    return np.asarray(box, np.float64) / np.array([w, h, w, h])


def from_norm(box, frame: Frame, view_size: tuple[float, float], resized_size: tuple[int, int] | None = None) -> np.ndarray:
    """Convert a 0-1 box of the view to ``frame`` (inverse of :func:`to_norm`)."""
    w, h = _frame_extent(frame, view_size, resized_size)
    return np.asarray(box, np.float64) * np.array([w, h, w, h])


def clamp_norm_box(box) -> np.ndarray:
    """Clamp a 0-1 box to the view. Inverted boxes stay inverted (and so invalid)."""
    return np.clip(np.asarray(box, np.float64), 0.0, 1.0)


def region_r1_resized_size(width: int, height: int, min_pixels: int = QWEN_MIN_PIXELS, max_pixels: int = QWEN_MAX_PIXELS) -> tuple[int, int]:
    """``(width, height)`` the public Region-R1 code resizes a crop to before scoring it.

    Its own copy of ``smart_resize`` (factor 28): the same rounding as
    :func:`qwen_resized_size` but without qwen_vl_utils' aspect-ratio limit, so it
    never raises on a thin crop.
    """
    factor = QWEN_PATCH_FACTOR
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return int(w_bar), int(h_bar)


def is_valid_box(norm_box, view_size: tuple[float, float], min_side_px: float = 1.0) -> bool:
    """A clamped 0-1 box is valid when finite, of positive area and at least
    ``min_side_px`` wide and high in the view's original pixels (so it crops to a real
    image); ``min_side_px=0`` accepts any box of positive area."""
    b = np.asarray(norm_box, np.float64)
    if b.shape != (4,) or not np.all(np.isfinite(b)):
        return False
    width_px = (b[2] - b[0]) * view_size[0]
    height_px = (b[3] - b[1]) * view_size[1]
    return bool(width_px > 0 and height_px > 0 and width_px >= min_side_px and height_px >= min_side_px)


def expand_box(box, margin: float, width: float, height: float) -> np.ndarray:
    """A pixel box grown by ``margin`` times its longer side on every side, clamped to a
    ``width x height`` image: a crop with some context around an object."""
    x1, y1, x2, y2 = np.asarray(box, np.float64)
    pad = margin * max(x2 - x1, y2 - y1)
    return np.array([max(0.0, x1 - pad), max(0.0, y1 - pad), min(float(width), x2 + pad), min(float(height), y2 + pad)])


def view_box_to_image(norm_box, view: tuple[float, float, float, float]) -> np.ndarray:
    """Map a 0-1 box of ``view`` (original-image pixels) to original-image pixels."""
    x1, y1, x2, y2 = view
    b = np.asarray(norm_box, np.float64)
    return np.array([x1 + b[0] * (x2 - x1), y1 + b[1] * (y2 - y1), x1 + b[2] * (x2 - x1), y1 + b[3] * (y2 - y1)])


def image_box_to_view(image_box, view: tuple[float, float, float, float]) -> np.ndarray:
    """Inverse of :func:`view_box_to_image`: original-image pixels to 0-1 of ``view``."""
    x1, y1, x2, y2 = view
    b = np.asarray(image_box, np.float64)
    w, h = x2 - x1, y2 - y1
    return np.array([(b[0] - x1) / w, (b[1] - y1) / h, (b[2] - x1) / w, (b[3] - y1) / h])


def mirror_norm_box(norm_box, horizontal: bool, vertical: bool) -> np.ndarray:
    """A 0-1 box of a view, in the same view mirrored left-right and/or top-bottom."""
    x1, y1, x2, y2 = np.asarray(norm_box, np.float64)
    if horizontal:
        x1, x2 = 1.0 - x2, 1.0 - x1
    if vertical:
        y1, y2 = 1.0 - y2, 1.0 - y1
    return np.array([x1, y1, x2, y2])


PIXEL_TOLERANCE = 1e-3
"""Box edges this close to a pixel boundary snap to it: float32 actions carry ~1e-5 px of
noise that must not grow a crop by a whole pixel."""


def pixel_rect(image_box, width: int, height: int) -> np.ndarray:
    """The whole-pixel rectangle :func:`crop` cuts for ``image_box`` (original pixels,
    floats) from a ``width x height`` image: edges rounded outwards (so the crop never
    loses a partially covered pixel), at least 1 px, inside the image. Integer-valued
    float64 ``[left, top, right, bottom]``; a rectangle maps to itself."""
    x1, y1, x2, y2 = np.asarray(image_box, np.float64)
    left = min(max(int(np.floor(x1 + PIXEL_TOLERANCE)), 0), width - 1)
    top = min(max(int(np.floor(y1 + PIXEL_TOLERANCE)), 0), height - 1)
    right = min(max(int(np.ceil(x2 - PIXEL_TOLERANCE)), left + 1), width)
    bottom = min(max(int(np.ceil(y2 - PIXEL_TOLERANCE)), top + 1), height)
    return np.array([left, top, right, bottom], dtype=np.float64)


def crop(image: Image.Image, image_box) -> Image.Image:
    """Cut ``image_box`` (original pixels, floats) from ``image``: the :func:`pixel_rect`
    of the box, so the crop's size is exactly that rectangle's."""
    left, top, right, bottom = (int(v) for v in pixel_rect(image_box, image.width, image.height))
    return image.crop((left, top, right, bottom))
