"""The Qwen2.5-VL prompt: consistent with the parser, in the formats its consumers read."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from agents.qwen.prompts import (
    CROP_EXAMPLE,
    FULL_EXAMPLE,
    IMAGE_PLACEHOLDER,
    SYSTEM_PROMPT,
    TOOL_SCHEMA,
    build_messages,
    followup_message,
    to_verl_prompt,
)
from envs.boxes import qwen_resized_size
from envs.text_actions import FULL_MARKER, TOOL_NAME, ParsedAction, format_action_text, parse_action_text

QUESTION = "What species is the bird on the left?"


def test_system_prompt_names_what_the_parser_accepts():
    assert TOOL_NAME in SYSTEM_PROMPT and FULL_MARKER in SYSTEM_PROMPT
    assert CROP_EXAMPLE in SYSTEM_PROMPT and FULL_EXAMPLE in SYSTEM_PROMPT
    tools = re.search(r"<tools>\n(.*)\n</tools>", SYSTEM_PROMPT, re.S)
    assert json.loads(tools.group(1)) == TOOL_SCHEMA
    assert TOOL_SCHEMA["function"]["name"] == TOOL_NAME
    assert TOOL_SCHEMA["function"]["parameters"]["required"] == ["bbox_2d"]


def test_prompt_examples_parse_to_the_actions_they_show():
    resized = (448, 448)
    crop = parse_action_text(CROP_EXAMPLE, frame="resized", resized_size=resized)
    assert isinstance(crop, ParsedAction) and (crop.decision, crop.source) == (1, "tool_call")
    np.testing.assert_allclose(crop.box, np.array([84, 56, 420, 392]) / 448)
    full = parse_action_text(FULL_EXAMPLE, frame="resized", resized_size=resized)
    assert isinstance(full, ParsedAction) and (full.decision, full.box) == (0, None)


def test_canonical_crop_text_has_the_prompt_examples_shape():
    # Scripted baselines write format_action_text; it must be the call the prompt teaches.
    text = format_action_text(1, [0.25, 0.125, 0.75, 0.875], "resized", resized_size=(448, 448))
    call = json.loads(text.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    example = json.loads(CROP_EXAMPLE.removeprefix("<tool_call>\n").removesuffix("\n</tool_call>"))
    assert call["name"] == example["name"] == TOOL_NAME
    assert call["arguments"]["bbox_2d"] == [112, 56, 336, 392]
    assert set(call["arguments"]) <= set(example["arguments"])


def test_build_messages_layout():
    image = Image.new("RGB", (100, 50))
    messages = build_messages(QUESTION, image)
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT
    image_item, text_item = messages[1]["content"]
    assert image_item == {"type": "image", "image": image}
    assert text_item["type"] == "text"
    assert QUESTION in text_item["text"] and TOOL_NAME in text_item["text"] and FULL_MARKER in text_item["text"]
    assert "more time" not in text_item["text"]  # single step: no zoom budget to mention


def test_multi_step_messages_state_the_crop_budget():
    text = build_messages(QUESTION, "q.jpg", step=0, max_steps=3)[1]["content"][1]["text"]
    assert "3 more times" in text
    follow = followup_message("crop.jpg", step=1, max_steps=3)
    assert follow["role"] == "user"
    image_item, text_item = follow["content"]
    assert image_item == {"type": "image", "image": "crop.jpg"}
    assert "2 more times" in text_item["text"]
    assert TOOL_NAME in text_item["text"] and FULL_MARKER in text_item["text"]
    assert "this new image" in text_item["text"]  # boxes now refer to the crop
    assert "1 more time;" in followup_message("crop.jpg", step=2, max_steps=3)["content"][1]["text"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: build_messages("", "q.jpg"), "question"),
        (lambda: build_messages("   ", "q.jpg"), "question"),
        (lambda: build_messages("What is <image>?", "q.jpg"), "placeholder"),
        (lambda: to_verl_prompt("compare <video>"), "placeholder"),
        (lambda: build_messages(QUESTION, "q.jpg", step=1, max_steps=1), "step"),
        (lambda: build_messages(QUESTION, "q.jpg", max_steps=0), "max_steps"),
        (lambda: followup_message("c.jpg", step=0, max_steps=3), "step"),
        (lambda: followup_message("c.jpg", step=3, max_steps=3), "step"),
    ],
)
def test_bad_arguments_raise(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_qwen_vl_utils_sees_the_resized_frame():
    """process_vision_info reads our messages and resizes the image to exactly the size the
    parser's "resized" frame assumes, for the first turn and a follow-up crop."""
    from qwen_vl_utils import process_vision_info

    image, crop = Image.new("RGB", (1000, 500)), Image.new("RGB", (300, 123))
    messages = build_messages(QUESTION, image, max_steps=2)
    messages += [{"role": "assistant", "content": CROP_EXAMPLE}, followup_message(crop, step=1, max_steps=2)]
    images, videos = process_vision_info(messages)
    assert videos is None
    assert [im.size for im in images] == [qwen_resized_size(1000, 500), qwen_resized_size(300, 123)]


def test_pixel_limits_reach_qwen_vl_utils():
    from qwen_vl_utils import process_vision_info

    limits = dict(min_pixels=64 * 28 * 28, max_pixels=256 * 28 * 28)
    image, crop = Image.new("RGB", (1000, 500)), Image.new("RGB", (40, 30))
    messages = build_messages(QUESTION, image, max_steps=2, **limits)
    messages.append(followup_message(crop, step=1, max_steps=2, **limits))
    images, _ = process_vision_info(messages)
    assert [im.size for im in images] == [qwen_resized_size(1000, 500, **limits), qwen_resized_size(40, 30, **limits)]
    # 1000 x 500 shrinks by beta = sqrt(500000 / 200704) = 1.578 and floors to multiples of 28:
    # 633.6 -> 616, 316.8 -> 308. 40 x 30 grows by sqrt(50176 / 1200) = 6.466 and ceils:
    # 258.7 -> 280, 194.0 -> 196.
    assert images[0].size == (616, 308) and images[1].size == (280, 196)


def test_verl_prompt_is_build_messages_with_a_placeholder():
    verl_messages = to_verl_prompt(QUESTION, max_steps=2)
    messages = build_messages(QUESTION, "q.jpg", max_steps=2)
    assert all(isinstance(m["content"], str) for m in verl_messages)
    assert verl_messages[0] == messages[0]
    assert verl_messages[1] == {"role": "user", "content": IMAGE_PLACEHOLDER + messages[1]["content"][1]["text"]}
    assert "".join(m["content"] for m in verl_messages).count(IMAGE_PLACEHOLDER) == 1


@pytest.mark.slow
def test_verl_dataset_expands_the_verl_prompt_into_build_messages():
    # Importing verl takes ~10 s, hence slow. _build_messages is the step RLHFDataset
    # runs on each row; calling it on a bare instance avoids building a whole dataset.
    from verl.utils.dataset.rl_dataset import RLHFDataset

    image = Image.new("RGB", (64, 32))
    dataset = SimpleNamespace(image_key="images", video_key="videos", audio_key="audios", processor=object())
    row = {"prompt": to_verl_prompt(QUESTION), "images": [image]}
    expanded = RLHFDataset._build_messages(dataset, row, "prompt")
    expected = build_messages(QUESTION, image)
    # verl turns every string content into a text item; the chat template renders both alike.
    assert expanded[0] == {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]}
    assert expanded[1]["content"][1] == expected[1]["content"][1]
    assert expanded[1]["content"][0]["type"] == "image"
    assert expanded[1]["content"][0]["image"].size == image.size


def test_the_search_and_multi_box_forms_are_documented_only_when_on():
    from agents.qwen.prompts import SYSTEM_PROMPT, prompt_texts
    from envs.text_actions import SEARCH_TOOL_NAME, parse_action_text

    assert prompt_texts(search=False, max_regions=1).system_prompt == SYSTEM_PROMPT
    assert SEARCH_TOOL_NAME not in SYSTEM_PROMPT
    extended = prompt_texts(search=True, max_regions=2).system_prompt
    assert SEARCH_TOOL_NAME in extended and "list of boxes" in extended
    # every example the prompt shows is an answer the parser reads with the same options
    examples = extended.split("<tool_call>\n")[1:]
    parsed = [parse_action_text("<tool_call>" + block.split("</tool_call>")[0] + "</tool_call>", frame="pixel",
                                view_size=(1000, 1000), search=True, max_regions=2) for block in examples]
    assert [(p.decision, p.search, None if p.boxes is None else len(p.boxes)) for p in parsed] == [
        (1, False, 1), (1, False, 2), (1, True, 1)]
    only_search = prompt_texts(search=True).system_prompt
    assert SEARCH_TOOL_NAME in only_search and "list of boxes" not in only_search
