"""Which Qwen-VL family a policy checkpoint belongs to, and what that fixes.

The families write boxes differently: Qwen2.5-VL in absolute pixels of the resized image
it was shown (the ``"resized"`` frame of :mod:`envs.boxes`), Qwen3-VL in 0-1000
coordinates relative to that image (``"norm1000"``). Parsing one family's boxes in the
other's frame silently crops the wrong region, so the family decides, in one place:

- the box frame the answer is parsed in (:attr:`ModelFamily.frame`);
- the wording of the crop tool's schema and of the prompts (:attr:`ModelFamily.bbox_description`,
  :attr:`ModelFamily.coordinates`, :attr:`ModelFamily.example_box`; :mod:`agents.qwen.prompts`
  builds the texts from them);
- the image resize rule: qwen-vl-utils resizes to multiples of the image processor's
  ``patch_size * merge_size`` (:func:`resize_factor`: 28 for Qwen2.5-VL, 32 for Qwen3-VL),
  read from the processor itself, never copied.

:func:`family_of` reads the family from a checkpoint's ``config.json`` ``model_type``
(or a config object, or a hub id through ``AutoConfig``); ``ImageSettings.family``
(``--images.family``) overrides it (:func:`resolve_family`). An unknown family or model
type is refused with the list of supported ones.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from envs.boxes import Frame


@dataclass(frozen=True)
class ModelFamily:
    """One supported policy family: what its checkpoints look like and how they write boxes."""

    name: str
    """the family's name (``ImageSettings.family``)"""
    model_types: tuple[str, ...]
    """``model_type`` values of checkpoint configs that belong to the family"""
    label: str
    """human-readable name (``Qwen2.5-VL``)"""
    frame: Frame
    """the :mod:`envs.boxes` frame the family writes its boxes in"""
    bbox_description: str
    """the crop tool's ``bbox_2d`` description: what the four numbers mean"""
    coordinates: str
    """how the follow-up turn of multi-step zoom names the coordinates (``pixel coordinates``)"""
    example_box: tuple[int, int, int, int]
    """the box of the crop example in the system prompt, in :attr:`frame`"""


QWEN2_5_VL = ModelFamily(
    name="qwen2_5_vl",
    model_types=("qwen2_5_vl",),
    label="Qwen2.5-VL",
    frame="resized",
    bbox_description="The region as [x1, y1, x2, y2] in absolute pixel coordinates of the image "
    "you were shown: (x1, y1) is the top-left corner, (x2, y2) the bottom-right corner.",
    coordinates="pixel coordinates",
    example_box=(84, 56, 420, 392),
)
QWEN3_VL = ModelFamily(
    name="qwen3_vl",
    model_types=("qwen3_vl",),
    label="Qwen3-VL",
    frame="norm1000",
    bbox_description="The region as [x1, y1, x2, y2] in relative coordinates from 0 to 1000 of the image "
    "you were shown: (0, 0) is its top-left corner and (1000, 1000) its bottom-right corner; "
    "(x1, y1) is the region's top-left corner, (x2, y2) its bottom-right corner.",
    coordinates="relative coordinates from 0 to 1000",
    example_box=(150, 100, 750, 700),
)

FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (QWEN2_5_VL, QWEN3_VL)}
"""The supported families by name."""
DEFAULT_FAMILY = QWEN2_5_VL
"""The family of the project's default policies (Qwen2.5-VL-3B-Instruct on GPUs, the shipped
warm-started tiny Qwen2.5-VL on CPU): what a prompt is worded for when no model is named."""


def _supported() -> str:
    return ", ".join(f"{f.name} (model_type {'/'.join(f.model_types)}, {f.label}, boxes in {f.frame!r})" for f in FAMILIES.values())


def get_family(family: str | ModelFamily | None) -> ModelFamily:
    """The family named ``family`` (a :class:`ModelFamily` is returned as is; ``None``: the
    default family). Raises ``ValueError`` listing the supported families."""
    if family is None:
        return DEFAULT_FAMILY
    if isinstance(family, ModelFamily):
        return family
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; supported: {_supported()}")
    return FAMILIES[family]


def family_of_model_type(model_type: str, source: Any = None) -> ModelFamily:
    """The family a config's ``model_type`` belongs to; ``ValueError`` listing the supported ones."""
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    where = f" (from {source})" if source is not None else ""
    raise ValueError(
        f"model_type {model_type!r}{where} is not a supported policy family; supported: {_supported()}. "
        "Set ImageSettings.family (--images.family) to treat the checkpoint as one of them."
    )


def model_type_of(source: str | os.PathLike | Mapping | Any) -> str:
    """The ``model_type`` of a checkpoint folder (its ``config.json``), a config object or
    mapping, or a hub id (through ``transformers.AutoConfig``)."""
    if isinstance(source, Mapping):
        model_type = source.get("model_type")
    elif hasattr(source, "model_type") and not isinstance(source, (str, os.PathLike)):
        model_type = source.model_type
    else:
        config_file = Path(source) / "config.json"
        if config_file.is_file():
            model_type = json.loads(config_file.read_text()).get("model_type")
        else:
            from transformers import AutoConfig

            model_type = AutoConfig.from_pretrained(str(source)).model_type
    if not isinstance(model_type, str) or not model_type:
        raise ValueError(f"{source}: the config has no model_type; supported families: {_supported()}")
    return model_type


def family_of(source: str | os.PathLike | Mapping | Any) -> ModelFamily:
    """The family of a checkpoint (folder, hub id, config object or mapping), by its ``model_type``."""
    return family_of_model_type(model_type_of(source), source)


def resolve_family(override: str | ModelFamily | None, source: Any = None) -> ModelFamily:
    """``override`` when given (the explicit family, e.g. ``ImageSettings.family``), else the
    family of ``source`` (a checkpoint, see :func:`family_of`), else :data:`DEFAULT_FAMILY`."""
    if override is not None:
        return get_family(override)
    if source is not None:
        return family_of(source)
    return DEFAULT_FAMILY


def resize_factor(processor: Any) -> int:
    """Side in pixels of one image token: the image processor's ``patch_size * merge_size``
    (28 for Qwen2.5-VL, 32 for Qwen3-VL). qwen-vl-utils resizes to multiples of it, so it is
    the ``factor`` of :func:`envs.boxes.qwen_resized_size`. ``processor`` is a processor
    or an image processor."""
    image_processor = getattr(processor, "image_processor", processor)
    patch, merge = getattr(image_processor, "patch_size", None), getattr(image_processor, "merge_size", None)
    if not isinstance(patch, int) or not isinstance(merge, int):
        raise ValueError(
            f"{type(image_processor).__name__} has no integer patch_size and merge_size "
            f"(got {patch!r}, {merge!r}); not a Qwen-VL image processor"
        )
    return patch * merge


def patch_size(processor: Any) -> int:
    """The image processor's ``patch_size`` (qwen-vl-utils' ``image_patch_size``)."""
    return resize_factor(processor) // getattr(processor, "image_processor", processor).merge_size


def checkpoint_resize_factor(model_path: str | os.PathLike) -> int:
    """:func:`resize_factor` of the image processor a checkpoint ships."""
    from transformers import AutoImageProcessor

    return resize_factor(AutoImageProcessor.from_pretrained(str(model_path)))
