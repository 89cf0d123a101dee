"""Text actions: every syntax, the last-action rule, frames, round trips and robustness."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from envs.boxes import FRAMES, qwen_resized_size, view_box_to_image
from envs.text_actions import (
    FULL_MARKER,
    STYLES,
    TOOL_NAME,
    MalformedAction,
    ParsedAction,
    format_action_text,
    parse_action_text,
)

RESIZED = (1008, 504)  # Qwen2.5-VL's view of a 1000 x 500 image (see the hand-computed test)


def tool_call(bbox, name=TOOL_NAME, **extra) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": {"bbox_2d": bbox, **extra}}) + "\n</tool_call>"


def parse_norm(text: str):
    return parse_action_text(text, frame="norm")


def assert_region(result, box, source):
    assert isinstance(result, ParsedAction), result
    assert result.decision == 1
    assert result.source == source
    np.testing.assert_allclose(result.box, box, atol=1e-12)


def assert_full(result, source):
    assert isinstance(result, ParsedAction), result
    assert (result.decision, result.box, result.source) == (0, None, source)


# --- the "resized" frame, computed by hand ------------------------------------------------


def test_resized_frame_hand_computed_1000x500():
    # smart_resize with factor 28: width 1000/28 = 35.71 -> 36 * 28 = 1008,
    # height 500/28 = 17.86 -> 18 * 28 = 504; 1008 * 504 = 508,032 px lies within
    # [4*28*28, 16384*28*28], so no further scaling.
    assert qwen_resized_size(1000, 500) == (1008, 504)
    # The VLM points at the middle half of what it saw: [252, 126, 756, 378] of 1008 x 504
    # is [0.25, 0.25, 0.75, 0.75] of the view, i.e. [250, 125, 750, 375] original pixels.
    result = parse_action_text(tool_call([252, 126, 756, 378]), frame="resized", resized_size=(1008, 504))
    assert_region(result, [0.25, 0.25, 0.75, 0.75], "tool_call")
    np.testing.assert_allclose(view_box_to_image(result.box, (0, 0, 1000, 500)), [250, 125, 750, 375])
    # The same numbers read as original pixels would be off by 0.8% (the bug this frame avoids).
    as_pixels = parse_action_text(tool_call([252, 126, 756, 378]), frame="pixel", view_size=(1000, 500))
    np.testing.assert_allclose(as_pixels.box, [0.252, 0.252, 0.756, 0.756])


def test_other_frames_hand_computed():
    text = "<box>100, 50, 300, 150</box>"
    np.testing.assert_allclose(parse_action_text(text, frame="pixel", view_size=(400, 200)).box, [0.25, 0.25, 0.75, 0.75])
    np.testing.assert_allclose(parse_action_text(text, frame="norm1000").box, [0.1, 0.05, 0.3, 0.15])
    np.testing.assert_allclose(parse_norm("<box>0.1, 0.2, 0.3, 0.4</box>").box, [0.1, 0.2, 0.3, 0.4])


# --- round trips per frame ----------------------------------------------------------------


@pytest.mark.parametrize("frame", FRAMES)
@pytest.mark.parametrize("style", STYLES)
def test_format_then_parse_round_trip(frame, style):
    """format -> parse returns the box to within half a unit of the frame: 0.5 px for
    "pixel" / "resized", 0.5 for "norm1000", 0.00005 for "norm" (4 decimals)."""
    rng = np.random.default_rng(1234)
    for _ in range(200):
        view = (int(rng.integers(28, 4000)), int(rng.integers(28, 4000)))
        resized = qwen_resized_size(*view)
        corners = np.sort(rng.uniform(-0.1, 1.1, size=(2, 2)), axis=0)  # out-of-view boxes too
        box = np.array([corners[0, 0], corners[0, 1], corners[1, 0], corners[1, 1]])
        text = format_action_text(1, box, frame, view_size=view, resized_size=resized, style=style)
        result = parse_action_text(text, frame, view_size=view, resized_size=resized)
        extent = {"norm": (1e4, 1e4), "norm1000": (1000, 1000), "pixel": view, "resized": resized}[frame]
        tolerance = 0.5 / np.array([extent[0], extent[1], extent[0], extent[1]]) + 1e-12
        assert isinstance(result, ParsedAction) and result.decision == 1, (text, result)
        assert np.all(np.abs(result.box - box) <= tolerance), (frame, view, box, text, result.box)


@pytest.fixture(scope="module")
def family_factors(tmp_path_factory) -> dict:
    """Each supported family's resize factor, read from its tiny checkpoint's processor."""
    from transformers import AutoImageProcessor

    from agents.qwen.family import FAMILIES, resize_factor
    from agents.qwen.tiny import cached_tiny_qwen

    root = tmp_path_factory.getbasetemp()
    return {
        name: resize_factor(AutoImageProcessor.from_pretrained(cached_tiny_qwen(root, family=name))) for name in FAMILIES
    }


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize("style", STYLES)
def test_round_trip_in_each_familys_frame(family, style, family_factors):
    """What a family writes (its frame, over the image its processor's factor makes) parses
    back to the box, within half a unit: 0.5 px of the resized image for Qwen2.5-VL, 0.5 of
    1000 for Qwen3-VL."""
    from agents.qwen.family import get_family

    frame, factor = get_family(family).frame, family_factors[family]
    assert factor == {"qwen2_5_vl": 28, "qwen3_vl": 32}[family]
    rng = np.random.default_rng(99)
    for _ in range(100):
        view = (int(rng.integers(32, 3000)), int(rng.integers(32, 3000)))
        resized = qwen_resized_size(*view, factor=factor)
        assert resized[0] % factor == 0 and resized[1] % factor == 0
        corners = np.sort(rng.uniform(0.0, 1.0, size=(2, 2)), axis=0)
        box = np.array([corners[0, 0], corners[0, 1], corners[1, 0], corners[1, 1]])
        text = format_action_text(1, box, frame, view_size=view, resized_size=resized, style=style)
        result = parse_action_text(text, frame, view_size=view, resized_size=resized)
        extent = resized if frame == "resized" else (1000, 1000)
        tolerance = 0.5 / np.array([extent[0], extent[1], extent[0], extent[1]]) + 1e-12
        assert isinstance(result, ParsedAction) and result.decision == 1, (text, result)
        assert np.all(np.abs(result.box - box) <= tolerance), (family, view, box, text, result.box)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_text_action_round_trip_per_family(family, family_factors, scene_pools, tiny_scorer):
    """The TextAction wrapper in a family's frame and factor reads back what that family writes
    for the env's current view (the frame the agent loop and the zero-shot policy parse in)."""
    from agents.qwen.family import get_family
    from envs.region_rerank import RegionRerankEnv
    from envs.wrappers import TextAction

    frame, factor = get_family(family).frame, family_factors[family]
    env = TextAction(RegionRerankEnv(scene_pools, tiny_scorer), frame=frame, max_pixels=64 * 28 * 28, factor=factor)
    env.reset(options={"query_index": 2})
    view = env.unwrapped.policy_image
    resized = qwen_resized_size(view.width, view.height, max_pixels=64 * 28 * 28, factor=factor)
    assert env.resized_size() == resized
    extent = resized if frame == "resized" else (1000, 1000)
    rng = np.random.default_rng(5)
    for _ in range(20):
        corners = np.sort(rng.uniform(0.0, 1.0, size=(2, 2)), axis=0)
        box = np.array([corners[0, 0], corners[0, 1], corners[1, 0], corners[1, 1]])
        action = env.action(format_action_text(1, box, frame, view_size=env.unwrapped.view_size, resized_size=resized))
        np.testing.assert_allclose(action["box"], box, atol=0.5 / min(extent) + 1e-12)


@pytest.mark.parametrize("style", STYLES)
def test_full_round_trip(style):
    text = format_action_text(0, None, "resized", resized_size=RESIZED, style=style)
    assert text == FULL_MARKER
    assert_full(parse_action_text(text, "resized", resized_size=RESIZED), "full_marker")


def test_format_canonical_texts():
    box = [0.25, 0.25, 0.75, 0.75]
    assert format_action_text(1, box, "resized", resized_size=RESIZED) == (
        '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [252, 126, 756, 378]}}\n</tool_call>'
    )
    assert format_action_text(1, box, "norm1000", style="box_tag") == "<box>250, 250, 750, 750</box>"
    assert format_action_text(1, box, "pixel", view_size=(10, 10), style="box_special") == (
        "<|box_start|>(3,3),(8,8)<|box_end|>"  # 2.5 and 7.5 round half up
    )
    assert format_action_text(1, [0.123456, 0, 1, 0.5], "norm", style="bbox_tag") == "<bbox>0.1235, 0.0, 1.0, 0.5</bbox>"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(decision=2, norm_box=[0, 0, 1, 1]), "decision"),
        (dict(decision=1, norm_box=None), "norm_box"),
        (dict(decision=1, norm_box=[0, 0, 1]), "norm_box"),
        (dict(decision=1, norm_box=[0, 0, np.nan, 1]), "norm_box"),
        (dict(decision=1, norm_box=[0, 0, 1, 1], style="json"), "style"),
        (dict(decision=1, norm_box=[0, 0, 1, 1], frame="resized"), "resized_size"),
        (dict(decision=1, norm_box=[0, 0, 1, 1], frame="pixel"), "view_size"),
    ],
)
def test_format_rejects_bad_arguments(kwargs, message):
    kwargs.setdefault("frame", "norm")
    with pytest.raises(ValueError, match=message):
        format_action_text(**kwargs)


# --- frame arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(frame="resized"), "resized_size"),
        (dict(frame="pixel"), "view_size"),
        (dict(frame="pixels", view_size=(10, 10)), "unknown frame"),
        (dict(frame="resized", resized_size=(0, 28)), "resized_size"),
        (dict(frame="pixel", view_size=(10,)), "view_size"),
        (dict(frame="norm", view_size=(10, float("nan"))), "view_size"),
    ],
)
def test_missing_or_bad_frame_arguments_raise_before_parsing(kwargs, message):
    for text in ("", "garbage", FULL_MARKER, tool_call([1, 2, 3, 4])):
        with pytest.raises(ValueError, match=message):
            parse_action_text(text, **kwargs)


def test_non_string_text_is_a_type_error():
    with pytest.raises(TypeError, match="text"):
        parse_action_text(None, frame="norm")


# --- syntaxes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, box",
    [
        (tool_call([1, 2, 3, 4]), [1, 2, 3, 4]),
        (tool_call([1.5, 2.25, 3, 4e1]), [1.5, 2.25, 3, 40]),
        (tool_call([1, 2, 3, 4], label="the red car"), [1, 2, 3, 4]),
        ('<tool_call>{ "name" : "image_zoom_in_tool",\n\n "arguments" :{"bbox_2d":[ 1 ,\n2,3 , 4 ]}}</tool_call>', [1, 2, 3, 4]),
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}}}</tool_call>', [1, 2, 3, 4]),
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}} ok', [1, 2, 3, 4]),
        ('<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}}', [1, 2, 3, 4]),
        ('<tool_call>```json\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}}\n```</tool_call>', [1, 2, 3, 4]),
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": "{\\"bbox_2d\\": [1, 2, 3, 4]}"}</tool_call>', [1, 2, 3, 4]),
        ('<TOOL_CALL>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [-1, 2, 3, 4]}}</TOOL_CALL>', [-1, 2, 3, 4]),
    ],
)
def test_tool_call_variants(text, box):
    assert_region(parse_norm(text), box, "tool_call")


@pytest.mark.parametrize(
    "text, reason",
    [
        (tool_call([1, 2, 3, 4], name="image_crop_tool"), "unknown tool 'image_crop_tool'"),
        ('<tool_call>{"arguments": {"bbox_2d": [1, 2, 3, 4]}}</tool_call>', "unknown tool"),
        (tool_call([1, 2, 3]), "4 numbers, got '[1, 2, 3]'"),
        (tool_call([1, 2, 3, 4, 5]), "4 numbers"),
        (tool_call([[1, 2, 3, 4]]), "4 numbers"),
        (tool_call(["1", 2, 3, 4]), "must hold numbers"),
        (tool_call([True, 2, 3, 4]), "must hold numbers"),
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [NaN, 2, 3, 4]}}</tool_call>', "non-finite"),
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1e999, 2, 3, 4]}}</tool_call>', "non-finite"),
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1' + "0" * 400 + ', 2, 3, 4]}}</tool_call>', "too large"),
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox": [1, 2, 3, 4]}}</tool_call>', "no bbox_2d"),
        ('<tool_call>{"name": "image_zoom_in_tool"}</tool_call>', "no bbox_2d"),
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": "{bad"}</tool_call>', "arguments are not valid JSON"),
        ("<tool_call>image_zoom_in_tool(1, 2, 3, 4)</tool_call>", "no JSON object"),
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2</tool_call>', "not valid JSON"),
        ("<tool_call>" + "{" * 100000 + "</tool_call>", "not valid JSON"),
    ],
)
def test_broken_tool_calls_are_malformed_with_a_reason(text, reason):
    result = parse_norm(text)
    assert isinstance(result, MalformedAction), result
    assert result.text == text
    assert reason in result.reason
    assert len(result.reason) < 300


@pytest.mark.parametrize(
    "text, box, source",
    [
        ("<box>1, 2, 3, 4</box>", [1, 2, 3, 4], "box_tag"),
        ("<box>[1,2,3,4]</box>", [1, 2, 3, 4], "box_tag"),
        ("<box>(1,2),(3,4)</box>", [1, 2, 3, 4], "box_tag"),
        ("<BOX> 1.5 2 3 4.25 </BOX>", [1.5, 2, 3, 4.25], "box_tag"),
        ("<bbox>[0.1, 0.2, 0.3, 0.4]</bbox>", [0.1, 0.2, 0.3, 0.4], "bbox_tag"),
        ("<|box_start|>(10,20),(30,40)<|box_end|>", [10, 20, 30, 40], "box_special"),
        ("the dog <|box_start|>(10, 20), (30, 40)<|box_end|>.", [10, 20, 30, 40], "box_special"),
        ('```json\n[{"bbox_2d": [5, 6, 7, 8], "label": "dog"}]\n```', [5, 6, 7, 8], "bbox_json"),
    ],
)
def test_box_syntaxes(text, box, source):
    assert_region(parse_norm(text), box, source)


@pytest.mark.parametrize(
    "text, reason",
    [
        ("<box>1, 2, 3</box>", "4 numbers, got 3"),
        ("<bbox>1, 2, 3, 4, 5</bbox>", "4 numbers, got 5"),
        ("<box>the dog</box>", "non-number 'the'"),
        ("<box>1, 2, 3, 1e999</box>", "non-finite"),
        ('"bbox_2d": [1, 2, "3", 4]', "non-number"),
    ],
)
def test_broken_boxes_are_malformed(text, reason):
    result = parse_norm(text)
    assert isinstance(result, MalformedAction) and reason in result.reason, result


@pytest.mark.parametrize(
    "text, source",
    [
        (FULL_MARKER, "full_marker"),
        ("The bird fills the frame. no_crop_needed.", "full_marker"),
        ("<answer>FULL</answer>", "full_answer"),
        ("<Answer> full \n</Answer>", "full_answer"),
        ("<answer>NO_CROP_NEEDED</answer>", "full_marker"),
    ],
)
def test_full_answers(text, source):
    assert_full(parse_norm(text), source)


@pytest.mark.parametrize(
    "text",
    ["", "   ", "I am not sure.", "NO_CROP_NEEDEDS", "XNO_CROP_NEEDED", "<answer>REGION</answer>", "<answer>FULL image</answer>"],
)
def test_no_action_is_malformed(text):
    result = parse_norm(text)
    assert isinstance(result, MalformedAction) and "no action found" in result.reason, result


# --- which action counts ------------------------------------------------------------------


def test_last_action_wins():
    box_then_full = "<box>1, 2, 3, 4</box> on second thought: NO_CROP_NEEDED"
    assert_full(parse_norm(box_then_full), "full_marker")
    full_then_call = "Not NO_CROP_NEEDED, the sign matters.\n" + tool_call([1, 2, 3, 4])
    assert_region(parse_norm(full_then_call), [1, 2, 3, 4], "tool_call")
    two_calls = tool_call([1, 2, 3, 4]) + "\n" + tool_call([5, 6, 7, 8])
    assert_region(parse_norm(two_calls), [5, 6, 7, 8], "tool_call")
    mixed = "<bbox>1 2 3 4</bbox> " + tool_call([5, 6, 7, 8]) + " <box>9, 10, 11, 12</box>"
    assert_region(parse_norm(mixed), [9, 10, 11, 12], "box_tag")


def test_a_broken_last_action_is_malformed_even_after_a_good_one():
    result = parse_norm(tool_call([1, 2, 3, 4]) + tool_call([1, 2, 3]))
    assert isinstance(result, MalformedAction) and "4 numbers" in result.reason


def test_unclosed_tool_call_ends_at_the_next_one():
    text = '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}}\n' + tool_call([5, 6, 7, 8])
    assert_region(parse_norm(text), [5, 6, 7, 8], "tool_call")


def test_bbox_inside_a_tool_call_belongs_to_the_call():
    # The wrong tool name decides; the nested "bbox_2d" is not read as a separate action.
    result = parse_norm(tool_call([1, 2, 3, 4], name="other_tool"))
    assert isinstance(result, MalformedAction) and "unknown tool" in result.reason
    # Same for a marker inside a label.
    assert_region(parse_norm(tool_call([1, 2, 3, 4], label=FULL_MARKER)), [1, 2, 3, 4], "tool_call")


# --- reasoning ----------------------------------------------------------------------------


def test_think_content_is_ignored():
    text = "<think>Maybe " + tool_call([9, 9, 9, 9]) + " or NO_CROP_NEEDED? The bird is small.</think>\n" + tool_call([1, 2, 3, 4])
    assert_region(parse_norm(text), [1, 2, 3, 4], "tool_call")
    text = f"<think>I could crop <box>1,2,3,4</box> but the scene matters.</think> {FULL_MARKER}"
    assert_full(parse_norm(text), "full_marker")


def test_action_only_inside_think_is_malformed():
    result = parse_norm(f"<think>{FULL_MARKER}</think>")
    assert isinstance(result, MalformedAction) and "no action found" in result.reason


def test_prompt_opened_think_and_cut_off_think():
    # The chat template opened <think>, so the reply holds only the closing tag.
    assert_full(parse_norm(f"<box>1,2,3,4</box> is tempting</think>{FULL_MARKER}"), "full_marker")
    # Generation stopped inside reasoning: nothing after <think> counts.
    result = parse_norm(f"<think>first {FULL_MARKER} hmm, maybe " + tool_call([1, 2, 3, 4]))
    assert isinstance(result, MalformedAction)
    assert_region(parse_norm("<box>1,2,3,4</box>\n<think>more"), [1, 2, 3, 4], "box_tag")
    # Nested or repeated tags: the first close ends a block, a later stray close drops all before it.
    assert_full(parse_norm(f"<think><think><box>1,2,3,4</box></think> 5,6,7,8</think>{FULL_MARKER}"), "full_marker")
    assert isinstance(parse_norm(f"{FULL_MARKER}<think>a</think>b</think>c"), MalformedAction)
    # Removing a block never glues the text around it into a marker.
    assert isinstance(parse_norm("NO_CROP<think>x</think>_NEEDED"), MalformedAction)


def test_boxes_are_not_clamped():
    result = parse_action_text(tool_call([-50, 10, 2000, 600]), frame="resized", resized_size=RESIZED)
    np.testing.assert_allclose(result.box, [-50 / 1008, 10 / 504, 2000 / 1008, 600 / 504])
    inverted = parse_norm("<box>0.8, 0.8, 0.2, 0.2</box>")
    np.testing.assert_allclose(inverted.box, [0.8, 0.8, 0.2, 0.2])


# --- robustness ---------------------------------------------------------------------------

_PIECES = [
    "<tool_call>", "</tool_call>", "<box>", "</box>", "<bbox>", "</bbox>", "<|box_start|>", "<|box_end|>",
    "<think>", "</think>", "<answer>", "</answer>", "FULL", FULL_MARKER, TOOL_NAME, '"name"', '"arguments"',
    '"bbox_2d"', '"label"', "{", "}", "[", "]", "(", ")", ":", ",", '"', "\\", " ", "\n", "-", ".", "e",
    "1e999", "NaN", "Infinity", "true", "null", "0", "7", "42", "3.5", "-0", "é", "İ", "\x00", "\u2028", "🙂",
]  # fmt: skip


def _check_result(result, text):
    if isinstance(result, MalformedAction):
        assert result.text == text and isinstance(result.reason, str) and result.reason
        return
    assert isinstance(result, ParsedAction)
    assert result.decision in (0, 1)
    if result.decision == 0:
        assert result.box is None
    else:
        assert result.box.shape == (4,) and np.all(np.isfinite(result.box))


def _mutate(text: str, rng: random.Random) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(chars) + 1)
        op = rng.random()
        if op < 0.4 and i < len(chars):
            del chars[i]
        elif op < 0.7:
            chars.insert(i, rng.choice(_PIECES))
        elif i < len(chars):
            chars[i] = rng.choice(_PIECES)
    return "".join(chars)


@pytest.mark.parametrize("frame", FRAMES)
def test_never_raises_on_random_text(frame):
    # hypothesis is not a project dependency, so a seeded generator plays its part.
    rng = random.Random(frame)
    valid = [
        tool_call([1, 2, 3, 4], label="x"),
        "<think>hm</think><box>[1, 2, 3, 4]</box>",
        "<|box_start|>(1,2),(3,4)<|box_end|>",
        f"<answer>FULL</answer> {FULL_MARKER}",
    ]
    kwargs = dict(view_size=(640, 480), resized_size=(644, 476))
    for _ in range(1500):
        if rng.random() < 0.5:
            text = "".join(rng.choice(_PIECES) for _ in range(rng.randint(0, 40)))
        else:
            text = _mutate(rng.choice(valid), rng)
        _check_result(parse_action_text(text, frame, **kwargs), text)
    for _ in range(300):
        text = "".join(chr(rng.randint(0, 0x10FFFF)) if rng.random() < 0.3 else rng.choice(_PIECES) for _ in range(60))
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
        _check_result(parse_action_text(text, frame, **kwargs), text)


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>" * 20000,
        "<box>" * 20000 + "1,2,3,4",
        "<box>" + "1," * 50000 + "</box>",
        FULL_MARKER + " " * 200000 + "<box>1,2,3,4",
        '"bbox_2d": [' * 20000,
        "<think>" * 10000 + "</think>" * 10000,
        "<think>" * 20000 + FULL_MARKER,
        "<tool_call>" + "[" * 50000 + "</tool_call>",
        "NO_CROP_NEEDED " * 20000,
    ],
)
@pytest.mark.timeout(60)  # a hang guard against catastrophic backtracking, not a speed check
def test_long_pathological_text_parses(text):
    _check_result(parse_norm(text), text)


# --- the parse cost is bounded --------------------------------------------------------------
# Speed itself is measured side by side by recipes/bench_text_actions.py (linear in the
# text's length, the cap rejected unread); these tests assert what is parsed, and the
# timeouts only guard against a match that would never finish.


def test_text_over_the_cap_is_malformed_unread():
    from envs.text_actions import MAX_TEXT_CHARS

    text = FULL_MARKER + " " * MAX_TEXT_CHARS
    result = parse_norm(text)
    assert isinstance(result, MalformedAction) and f"more than the {MAX_TEXT_CHARS}" in result.reason
    assert_full(parse_action_text(text, "norm", max_chars=len(text)), "full_marker")
    huge = "<tool_call>" * 200_000  # 2.2 MB
    assert isinstance(parse_norm(huge), MalformedAction) and "more than the" in parse_norm(huge).reason


@pytest.mark.parametrize(
    "piece",
    ["<tool_call>", "<box>", "1,", '"bbox_2d": [', "<think>", "</think>", "NO_CROP_NEEDED ", "{", "[", "x"],
)
@pytest.mark.parametrize("rules", ["project", "region_r1_public"])
@pytest.mark.timeout(60)  # a hang guard, not a speed check (see above)
def test_worst_case_under_the_cap_parses(piece, rules):
    from envs.text_actions import MAX_TEXT_CHARS

    text = (piece * (MAX_TEXT_CHARS // len(piece) + 1))[:MAX_TEXT_CHARS]
    _check_result(parse_action_text(text, "norm", rules=rules), text)


# --- the public code's rules ----------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (tool_call([1, 2, 3, 4]), [1, 2, 3, 4]),
        (tool_call(["1", " 2", "3e0", "4"]), [1, 2, 3, 4]),  # float() of strings, as in public
        (tool_call([1, 2, 3, 4], name="any_tool"), [1, 2, 3, 4]),  # the name is not checked
        (tool_call([1, 2, 3, 4]) + tool_call([5, 6, 7, 8]), [1, 2, 3, 4]),  # the first call counts
        ("<think>" + tool_call([1, 2, 3, 4]) + "</think>" + FULL_MARKER, [1, 2, 3, 4]),  # reasoning is not removed
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [1, 2, 3, 4]}} ok</tool_call>', [1, 2, 3, 4]),  # regex fallback
        (tool_call(["a", 2, 3, 4]) + ' "bbox_2d": [5, 6, 7, 8]', "malformed"),  # float("a") fails, so does the regex on the same first bbox_2d
        ('"bbox_2d": [9, 9, 9, 9] <tool_call>{"bbox_2d": broken</tool_call>', [9, 9, 9, 9]),
        (tool_call([1, 2, 3, 4]).replace("</tool_call>", ""), "malformed"),  # missing </tool_call>
        (tool_call([1, 2, 3, 4]).upper(), "malformed"),  # tags are case-sensitive
        (tool_call([1, 2, 3]), "malformed"),
        (tool_call(["nan", 2, 3, 4]), "malformed"),  # the public code would crop with NaN
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"box": [1, 2, 3, 4]}}</tool_call>', "malformed"),
        (FULL_MARKER, "full"),
        ("<tool_call>" + "[" * 100_000 + "</tool_call>", "malformed"),
    ],
)
def test_region_r1_public_rules(text, expected):
    result = parse_action_text(text, "norm", rules="region_r1_public")
    if expected == "malformed":
        assert isinstance(result, MalformedAction) and result.reason.startswith("region_r1_public: "), result
    elif expected == "full":
        assert_full(result, "full_marker")
    else:
        assert_region(result, expected, "tool_call")


def test_text_to_action_reads_the_box_in_the_frame_of_the_image_actually_shown():
    from envs.actions import InvalidBoxAction, MalformedAction
    from envs.text_actions import text_to_action

    text = format_action_text(1, [0.25, 0.5, 0.75, 1.0], frame="resized", resized_size=(112, 56))
    action = text_to_action(text, frame="resized", view_size=(400.0, 200.0), shown_size=(112, 56))
    np.testing.assert_allclose(action["box"], [0.25, 0.5, 0.75, 1.0])
    # the same pixels on a larger shown image are a smaller box of the view
    smaller = text_to_action(text, frame="resized", view_size=(400.0, 200.0), shown_size=(224, 112))
    np.testing.assert_allclose(smaller["box"], [0.125, 0.25, 0.375, 0.5])
    # a view without a resized frame: FULL still counts, a crop is an invalid box naming why
    assert text_to_action("NO_CROP_NEEDED", frame="resized", view_size=(1920.0, 5.0))["decision"] == 0
    refused = text_to_action(text, frame="resized", view_size=(1920.0, 5.0), no_frame_reason="aspect ratio 384")
    assert isinstance(refused, InvalidBoxAction) and "aspect ratio 384" in refused.reason
    assert isinstance(text_to_action(b"bytes", frame="norm", view_size=(1.0, 1.0)), MalformedAction)


def test_kb_search_tool_is_read_only_when_search_is_on():
    from envs.text_actions import SEARCH_TOOL_NAME, text_to_action

    with_box = '<tool_call>{"name": "kb_search_tool", "arguments": {"bbox_2d": [0.1, 0.2, 0.5, 0.6], "query": " a tram "}}</tool_call>'
    bare = '<tool_call>{"name": "kb_search_tool", "arguments": {}}</tool_call>'
    parsed = parse_action_text(with_box, frame="norm", search=True)
    assert parsed.decision == 1 and parsed.search and parsed.query == "a tram"
    np.testing.assert_allclose(parsed.box, [0.1, 0.2, 0.5, 0.6])
    parsed = parse_action_text(bare, frame="norm", search=True)
    assert parsed.decision == 0 and parsed.search and parsed.query is None
    off = parse_action_text(bare, frame="norm")
    assert isinstance(off, MalformedAction) and f"unknown tool '{SEARCH_TOOL_NAME}'" in off.reason
    bad = parse_action_text('<tool_call>{"name": "kb_search_tool", "arguments": {"query": 5}}</tool_call>', frame="norm", search=True)
    assert isinstance(bad, MalformedAction) and "query must be a string" in bad.reason
    action = text_to_action(bare, frame="norm", view_size=(100, 80), search=True)
    assert action["decision"] == 0 and action["search"] == 1 and action["query"] is None


@pytest.mark.parametrize("frame", ["norm", "norm1000", "pixel", "resized"])
def test_a_list_of_boxes_is_read_in_every_frame_when_several_regions_are_allowed(frame):
    view, shown = (200.0, 100.0), (224, 112)
    boxes = np.array([[0.1, 0.2, 0.4, 0.6], [0.5, 0.5, 1.0, 1.0]])
    from envs.boxes import from_norm
    from envs.text_actions import text_to_action

    framed = [from_norm(b, frame, view, shown).tolist() for b in boxes]
    text = '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": %s}}</tool_call>' % json.dumps(framed)
    action = text_to_action(text, frame=frame, view_size=view, shown_size=shown, max_regions=2)
    assert action["box"].shape == (2, 4)
    np.testing.assert_allclose(action["box"], boxes, atol=1e-9)
    too_many = text_to_action(text, frame=frame, view_size=view, shown_size=shown, max_regions=1)
    assert isinstance(too_many, MalformedAction) and "4 numbers" in too_many.reason
    three = '<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": %s}}</tool_call>' % json.dumps(framed * 2)
    refused = text_to_action(three, frame=frame, view_size=view, shown_size=shown, max_regions=3)
    assert isinstance(refused, MalformedAction) and "4 boxes, more than the 3 allowed" in refused.reason
