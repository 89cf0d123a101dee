"""The prompts for query-side region cropping (the one place they are written), per model family.

The zero-shot baseline, the verl agent loop and the data export all build their
messages here, so the policy is trained and evaluated on the same words. The prompt
offers exactly the answers :func:`envs.text_actions.parse_action_text` reads: a call of
the ``image_zoom_in_tool`` tool (Qwen function-calling style) or ``NO_CROP_NEEDED``.
What the box numbers mean depends on the model family (:mod:`agents.qwen.family`):
absolute pixels of the image the model was shown for Qwen2.5-VL (the ``"resized"``
frame), 0-1000 relative coordinates of it for Qwen3-VL (``"norm1000"``). Every builder
takes ``family`` (a name or :class:`agents.qwen.family.ModelFamily`; ``None``: Qwen2.5-VL,
the project's default policies' family); :func:`prompt_texts` gives a family's texts.
The module constants (:data:`TOOL_SCHEMA`, :data:`CROP_EXAMPLE`, :data:`SYSTEM_PROMPT`)
are Qwen2.5-VL's.

Messages follow the transformers / qwen-vl-utils chat format (content lists with
``{"type": "image", "image": ...}`` and ``{"type": "text", "text": ...}`` items);
:func:`to_verl_prompt` gives the same messages as verl's ``RLHFDataset`` rows expect
(string content with an ``<image>`` placeholder, the image in the row's ``images``).
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from typing import Any

from agents.qwen.family import ModelFamily, get_family
from envs.text_actions import FULL_MARKER, SEARCH_TOOL_NAME, TOOL_NAME

IMAGE_PLACEHOLDER = "<image>"
"""verl's RLHFDataset swaps this placeholder for the row's image."""


def _tool_schema(family: ModelFamily) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": TOOL_NAME,
            "description": "Crop the query image to one region; the re-ranker then compares only that region "
            "with the knowledge-base entries.",
            "parameters": {
                "type": "object",
                "properties": {
                    "bbox_2d": {
                        "type": "array",
                        "items": {"type": "number"},
                        "minItems": 4,
                        "maxItems": 4,
                        "description": family.bbox_description,
                    },
                    "label": {"type": "string", "description": "What the region shows (optional)."},
                },
                "required": ["bbox_2d"],
            },
        },
    }


def _search_tool_schema(family: ModelFamily, max_regions: int) -> dict[str, Any]:
    box = _tool_schema(family)["function"]["parameters"]["properties"]["bbox_2d"]
    return {
        "type": "function",
        "function": {
            "name": SEARCH_TOOL_NAME,
            "description": "Search the knowledge base again with the image, or with a region of it (bbox_2d), "
            "and an optional short text query; the re-ranker then ranks the entries found instead of the current ones.",
            "parameters": {
                "type": "object",
                "properties": {
                    "bbox_2d": _boxes_schema(box, max_regions),
                    "query": {"type": "string", "description": "A short description of what to search for (optional)."},
                },
                "required": [],
            },
        },
    }


def _boxes_schema(box: dict[str, Any], max_regions: int) -> dict[str, Any]:
    """One box, or (several regions) one box or a list of up to ``max_regions`` boxes."""
    if max_regions == 1:
        return box
    return {"oneOf": [box, {"type": "array", "items": box, "minItems": 1, "maxItems": max_regions}],
            "description": f"{box['description']} Up to {max_regions} regions: a list of such boxes."}


def _crop_example(family: ModelFamily) -> str:
    call = {"name": TOOL_NAME, "arguments": {"bbox_2d": list(family.example_box), "label": "the bird"}}
    return "<tool_call>\n" + json.dumps(call) + "\n</tool_call>"


FULL_EXAMPLE = FULL_MARKER
"""The keep-the-image answer shown in the system prompt (a FULL action)."""


def _system_prompt(family: ModelFamily) -> str:
    return f"""You help a re-ranker that compares a query image with knowledge-base entries to find the entry that answers a question about the image. Decide whether the re-ranker should see the whole image or only one region of it: crop to the subject the question is about when background, clutter or other objects would distract from it; keep the full image when the subject already fills it or the question needs the whole scene.

# Tools

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{json.dumps(_tool_schema(family))}
</tools>

To crop, call the tool with a json object within <tool_call></tool_call> XML tags, for example:
{_crop_example(family)}
To keep the full image, answer exactly:
{FULL_EXAMPLE}

You may think briefly inside <think></think> first, then give exactly one of these two answers."""


def _extended_system_prompt(family: ModelFamily, search: bool, max_regions: int) -> str:
    """The system prompt with the SEARCH tool and/or several regions (the env's options)."""
    crop_tool = _tool_schema(family)
    crop_tool["function"]["parameters"]["properties"]["bbox_2d"] = _boxes_schema(
        crop_tool["function"]["parameters"]["properties"]["bbox_2d"], max_regions)
    tools = [json.dumps(crop_tool)] + ([json.dumps(_search_tool_schema(family, max_regions))] if search else [])
    x1, y1, x2, y2 = family.example_box
    extra = []
    if max_regions > 1:
        beside = [x2, y1, x2 + (x2 - x1), y2]  # a second region of the same size, to its right
        two = {"name": TOOL_NAME, "arguments": {"bbox_2d": [list(family.example_box), beside]}}
        extra.append(f"To crop up to {max_regions} regions at once (the re-ranker compares them together), give "
                     f"bbox_2d as a list of boxes, for example:\n<tool_call>\n{json.dumps(two)}\n</tool_call>")
    if search:
        call = {"name": SEARCH_TOOL_NAME, "arguments": {"bbox_2d": list(family.example_box), "query": "a small bird"}}
        extra.append("When the right entry may be missing from the candidates, search the knowledge base again: call "
                     f"{SEARCH_TOOL_NAME} with a region (bbox_2d, optional: without it the whole image is used) and an "
                     "optional short text query; the re-ranker then ranks the entries found. A search costs a little, "
                     f"so search only when it helps. For example:\n<tool_call>\n{json.dumps(call)}\n</tool_call>")
    return f"""You help a re-ranker that compares a query image with knowledge-base entries to find the entry that answers a question about the image. Decide whether the re-ranker should see the whole image or only one region of it: crop to the subject the question is about when background, clutter or other objects would distract from it; keep the full image when the subject already fills it or the question needs the whole scene.

# Tools

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{chr(10).join(tools)}
</tools>

To crop, call the tool with a json object within <tool_call></tool_call> XML tags, for example:
{_crop_example(family)}
{chr(10).join(extra)}
To keep the full image, answer exactly:
{FULL_EXAMPLE}

You may think briefly inside <think></think> first, then give exactly one of these answers."""


@dataclass(frozen=True)
class PromptTexts:
    """The family-dependent texts of the prompt."""

    family: ModelFamily
    tool_schema: dict[str, Any]
    """the crop tool in the OpenAI / Qwen function schema (also usable as a verl tool schema)"""
    crop_example: str
    """the crop answer shown in the system prompt (a REGION action in the family's frame)"""
    system_prompt: str
    """system message: the task, the crop tool and the FULL answer"""


@functools.lru_cache(maxsize=None)
def _texts(family: ModelFamily, search: bool = False, max_regions: int = 1) -> PromptTexts:
    if not search and max_regions == 1:
        return PromptTexts(family, _tool_schema(family), _crop_example(family), _system_prompt(family))
    return PromptTexts(family, _tool_schema(family), _crop_example(family),
                       _extended_system_prompt(family, search, max_regions))


def prompt_texts(family: str | ModelFamily | None = None, *, search: bool = False, max_regions: int = 1) -> PromptTexts:
    """The prompt texts of ``family`` (a name or record; ``None``: Qwen2.5-VL). Raises
    ``ValueError`` listing the supported families for an unknown name. ``search`` and
    ``max_regions > 1`` (the env's options) add the ``kb_search_tool`` and the list-of-boxes
    form to the system prompt; off, the texts are the paper's."""
    if max_regions < 1:
        raise ValueError(f"max_regions must be >= 1, got {max_regions}")
    return _texts(get_family(family), bool(search), int(max_regions))


TOOL_SCHEMA: dict[str, Any] = prompt_texts().tool_schema
"""Qwen2.5-VL's crop tool schema (box in absolute pixels of the image shown)."""
CROP_EXAMPLE = prompt_texts().crop_example
"""Qwen2.5-VL's crop example (a REGION action in the resized frame)."""
SYSTEM_PROMPT = prompt_texts().system_prompt
"""Qwen2.5-VL's system message: the task, the crop tool and the FULL answer."""

QUESTION_PREFIX = "Question: "
DECISION_REQUEST = (
    f"\nShould the re-ranker see a cropped region of this image? Call {TOOL_NAME} to crop, or answer {FULL_MARKER}."
)
"""The user turn after the question: what the policy must decide."""
REGION_ANSWER_PREFIX = '<tool_call>\n{"name": "' + TOOL_NAME + '", "arguments": {"bbox_2d": ['
"""How every crop answer starts (as :func:`envs.text_actions.format_action_text` writes it);
the agent loop forces it when a group needs a REGION decision, and the policy completes the box."""
REGION_ANSWER_SUFFIX = "]}}\n</tool_call>"
"""How every crop answer ends, after the four numbers of the box."""


def fixed_prompt_texts(family: str | ModelFamily | None = None) -> tuple[str, ...]:
    """The texts every prompt and answer of ``family`` repeats verbatim. A tokenizer built
    for a tiny model (:mod:`agents.qwen.tiny`) makes each one token, so a CPU-sized policy
    reads a ~100-token prompt and writes a crop in ~15 tokens with the same words a real
    Qwen reads."""
    system = prompt_texts(family).system_prompt
    return (system, QUESTION_PREFIX, DECISION_REQUEST, REGION_ANSWER_PREFIX, REGION_ANSWER_SUFFIX, FULL_MARKER)


_PLACEHOLDERS = re.compile(r"<image>|<video>|<audio>")


def _crop_budget_text(step: int, max_steps: int) -> str:
    if max_steps == 1:
        return ""
    left = max_steps - step
    return f" You can crop {left} more time{'s' if left > 1 else ''}; each crop becomes the new image."


def _check_steps(step: int, max_steps: int, first: int) -> None:
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    if not first <= step < max_steps:
        raise ValueError(f"step must be in [{first}, {max_steps - 1}] for max_steps={max_steps}, got {step}")


def _question_text(question: str, step: int, max_steps: int) -> str:
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"question must be a non-empty string, got {question!r}")
    if _PLACEHOLDERS.search(question):
        # verl would read it as a second image slot and misalign the row's images
        raise ValueError(f"question must not contain a media placeholder such as <image>: {question!r}")
    _check_steps(step, max_steps, first=0)
    return f"{QUESTION_PREFIX}{question.strip()}{DECISION_REQUEST}{_crop_budget_text(step, max_steps)}"


def _image_item(image: Any, min_pixels: int | None, max_pixels: int | None) -> dict:
    item = {"type": "image", "image": image}
    # Per-image limits reach qwen-vl-utils' resize; the parser's "resized" frame must use the same.
    if min_pixels is not None:
        item["min_pixels"] = min_pixels
    if max_pixels is not None:
        item["max_pixels"] = max_pixels
    return item


def build_messages(
    question: str,
    image: Any,
    step: int = 0,
    max_steps: int = 1,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    family: str | ModelFamily | None = None,
    search: bool = False,
    max_regions: int = 1,
) -> list[dict]:
    """Chat messages for the first turn: system prompt, then the query image and question.

    ``image`` is anything qwen-vl-utils accepts (a PIL image, a path or URL). With
    ``max_steps > 1`` the user turn says how many crops are left from ``step`` on.
    ``min_pixels`` / ``max_pixels``, when given, go into the image item so
    ``qwen_vl_utils.process_vision_info`` resizes with them; pass the same values to
    :func:`envs.boxes.qwen_resized_size` when parsing the reply. ``family`` words the
    system prompt for the model family's box frame (``None``: Qwen2.5-VL); ``search`` and
    ``max_regions`` document the env's SEARCH tool and several regions (:func:`prompt_texts`).
    """
    return [
        {"role": "system", "content": prompt_texts(family, search=search, max_regions=max_regions).system_prompt},
        {
            "role": "user",
            "content": [
                _image_item(image, min_pixels, max_pixels),
                {"type": "text", "text": _question_text(question, step, max_steps)},
            ],
        },
    ]


def followup_message(
    image: Any,
    step: int,
    max_steps: int,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    family: str | ModelFamily | None = None,
) -> dict:
    """The user turn after a crop in multi-step zoom: the cropped view as the next image.

    ``step`` is the 0-based index of the step the model is about to take (so 1 after the
    first crop) and must be below ``max_steps``: a crop at the last step ends the episode.
    ``min_pixels`` / ``max_pixels`` and ``family`` as in :func:`build_messages`.
    """
    _check_steps(step, max_steps, first=1)
    coordinates = get_family(family).coordinates
    text = (
        f"This is the cropped region (crop {step} of at most {max_steps}). "
        f"Crop it further with {TOOL_NAME}, in {coordinates} of this new image, "
        f"or answer {FULL_MARKER} to keep it.{_crop_budget_text(step, max_steps)}"
    )
    return {"role": "user", "content": [_image_item(image, min_pixels, max_pixels), {"type": "text", "text": text}]}


def to_verl_prompt(question: str, max_steps: int = 1, family: str | ModelFamily | None = None, *,
                   search: bool = False, max_regions: int = 1) -> list[dict]:
    """The messages of :func:`build_messages` as a verl ``RLHFDataset`` ``prompt`` column:
    string contents, the image replaced by the ``<image>`` placeholder (the row's
    ``images`` column holds the image itself)."""
    return [
        {"role": "system", "content": prompt_texts(family, search=search, max_regions=max_regions).system_prompt},
        {"role": "user", "content": IMAGE_PLACEHOLDER + _question_text(question, 0, max_steps)},
    ]
