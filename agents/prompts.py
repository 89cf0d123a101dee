"""The Qwen2.5-VL prompt for query-side region cropping (the one place it is written).

The zero-shot baseline, the verl agent loop and the data export all build their
messages here, so the policy is trained and evaluated on the same words. The prompt
offers exactly the answers :func:`envs.text_actions.parse_action_text` reads: a call of
the ``image_zoom_in_tool`` tool (Qwen2.5 function-calling style, box in absolute pixels
of the image the model was shown, i.e. the ``"resized"`` frame) or ``NO_CROP_NEEDED``.

Messages follow the transformers / qwen-vl-utils chat format (content lists with
``{"type": "image", "image": ...}`` and ``{"type": "text", "text": ...}`` items);
:func:`to_verl_prompt` gives the same messages as verl's ``RLHFDataset`` rows expect
(string content with an ``<image>`` placeholder, the image in the row's ``images``).
"""

from __future__ import annotations

import json
import re
from typing import Any

from envs.text_actions import FULL_MARKER, TOOL_NAME

IMAGE_PLACEHOLDER = "<image>"
"""verl's RLHFDataset swaps this placeholder for the row's image."""

TOOL_SCHEMA: dict[str, Any] = {
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
                    "description": "The region as [x1, y1, x2, y2] in absolute pixel coordinates of the image "
                    "you were shown: (x1, y1) is the top-left corner, (x2, y2) the bottom-right corner.",
                },
                "label": {"type": "string", "description": "What the region shows (optional)."},
            },
            "required": ["bbox_2d"],
        },
    },
}
"""The crop tool in the OpenAI / Qwen2.5 function schema (also usable as a verl tool schema)."""

CROP_EXAMPLE = (
    "<tool_call>\n"
    + json.dumps({"name": TOOL_NAME, "arguments": {"bbox_2d": [84, 56, 420, 392], "label": "the bird"}})
    + "\n</tool_call>"
)
"""The crop answer shown in :data:`SYSTEM_PROMPT` (a REGION action in the resized frame)."""
FULL_EXAMPLE = FULL_MARKER
"""The keep-the-image answer shown in :data:`SYSTEM_PROMPT` (a FULL action)."""

SYSTEM_PROMPT = f"""You help a re-ranker that compares a query image with knowledge-base entries to find the entry that answers a question about the image. Decide whether the re-ranker should see the whole image or only one region of it: crop to the subject the question is about when background, clutter or other objects would distract from it; keep the full image when the subject already fills it or the question needs the whole scene.

# Tools

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{json.dumps(TOOL_SCHEMA)}
</tools>

To crop, call the tool with a json object within <tool_call></tool_call> XML tags, for example:
{CROP_EXAMPLE}
To keep the full image, answer exactly:
{FULL_EXAMPLE}

You may think briefly inside <think></think> first, then give exactly one of these two answers."""
"""System message: the task, the crop tool and the FULL answer."""

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


def fixed_prompt_texts() -> tuple[str, ...]:
    """The texts every prompt and answer repeats verbatim. A tokenizer built for a tiny
    model (:mod:`agents.tiny_qwen`) makes each one token, so a CPU-sized policy reads a
    ~100-token prompt and writes a crop in ~15 tokens with the same words a real Qwen
    reads."""
    return (SYSTEM_PROMPT, QUESTION_PREFIX, DECISION_REQUEST, REGION_ANSWER_PREFIX, REGION_ANSWER_SUFFIX, FULL_MARKER)


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
) -> list[dict]:
    """Chat messages for the first turn: system prompt, then the query image and question.

    ``image`` is anything qwen-vl-utils accepts (a PIL image, a path or URL). With
    ``max_steps > 1`` the user turn says how many crops are left from ``step`` on.
    ``min_pixels`` / ``max_pixels``, when given, go into the image item so
    ``qwen_vl_utils.process_vision_info`` resizes with them; pass the same values to
    :func:`envs.boxes.qwen_resized_size` when parsing the reply.
    """
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {
            "role": "user",
            "content": [
                _image_item(image, min_pixels, max_pixels),
                {"type": "text", "text": _question_text(question, step, max_steps)},
            ],
        },
    ]


def followup_message(
    image: Any, step: int, max_steps: int, *, min_pixels: int | None = None, max_pixels: int | None = None
) -> dict:
    """The user turn after a crop in multi-step zoom: the cropped view as the next image.

    ``step`` is the 0-based index of the step the model is about to take (so 1 after the
    first crop) and must be below ``max_steps``: a crop at the last step ends the episode.
    ``min_pixels`` / ``max_pixels`` as in :func:`build_messages`.
    """
    _check_steps(step, max_steps, first=1)
    text = (
        f"This is the cropped region (crop {step} of at most {max_steps}). "
        f"Crop it further with {TOOL_NAME}, in pixel coordinates of this new image, "
        f"or answer {FULL_MARKER} to keep it.{_crop_budget_text(step, max_steps)}"
    )
    return {"role": "user", "content": [_image_item(image, min_pixels, max_pixels), {"type": "text", "text": text}]}


def to_verl_prompt(question: str, max_steps: int = 1) -> list[dict]:
    """The messages of :func:`build_messages` as a verl ``RLHFDataset`` ``prompt`` column:
    string contents, the image replaced by the ``<image>`` placeholder (the row's
    ``images`` column holds the image itself)."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": IMAGE_PLACEHOLDER + _question_text(question, 0, max_steps)},
    ]
