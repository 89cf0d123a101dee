"""How a Qwen-VL processor sees an image: the pixel limits the project resizes with must be its own.

The prompt builder, the box parser and the data export resize every image with
:class:`envs.settings.ImageSettings`; :func:`check_pixel_limits` refuses limits the
processor would override.
"""

from __future__ import annotations

from typing import Any

from envs.settings import ImageSettings


def _size_entry(size: Any, key: str) -> int | None:
    """An entry of an image processor's ``size`` (a dict or transformers' ``SizeDict``)."""
    try:
        return size[key]
    except (KeyError, TypeError):
        return getattr(size, key, None)


def check_pixel_limits(processor: Any, images: ImageSettings) -> None:
    """Raise unless ``images``' ``[min_pixels, max_pixels]`` lies within the processor's own limits.

    qwen-vl-utils resizes each image to multiples of the processor's resize factor
    (:func:`agents.qwen.family.resize_factor`: 28 px for Qwen2.5-VL, 32 px for Qwen3-VL)
    within ``[min_pixels, max_pixels]``; if that range left the processor's, the processor would resize again
    and the model's box coordinates would refer to an image the parser does not know.
    """
    min_pixels, max_pixels = images.min_pixels, images.max_pixels
    size = getattr(getattr(processor, "image_processor", None), "size", None)
    low, high = _size_entry(size, "shortest_edge"), _size_entry(size, "longest_edge")
    if (low is not None and min_pixels < low) or (high is not None and max_pixels > high):
        raise ValueError(
            f"min_pixels={min_pixels}, max_pixels={max_pixels} must lie within the processor's pixel limits "
            f"[{low}, {high}], or the processor resizes the image again and the model's box coordinates no "
            "longer match the image the parser assumes"
        )
