"""agents/qwen/family.py: the family of a checkpoint fixes its box frame, prompt and resize rule.

Both tiny models (agents/qwen/tiny.py) are real checkpoints of their family; the frames are
checked end to end: a box drawn on the image the model was shown, written in the family's
frame, must crop exactly the original pixels under it.
"""

from __future__ import annotations

import json
import os
from fractions import Fraction
from types import SimpleNamespace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import math

import numpy as np
import pytest
import torch
from PIL import Image
from qwen_vl_utils import fetch_image, process_vision_info

from agents.qwen.family import (
    FAMILIES,
    QWEN2_5_VL,
    QWEN3_VL,
    family_of,
    get_family,
    patch_size,
    resize_factor,
    resolve_family,
)
from agents.qwen.prompts import build_messages, followup_message, prompt_texts, to_verl_prompt
from agents.qwen.policy import QwenVLPolicy
from agents.qwen.tiny import cached_tiny_qwen
from envs.boxes import QWEN_MIN_PIXELS, qwen_resized_size
from envs.region_rerank import RegionRerankEnv
from envs.settings import ImageSettings
from envs.text_actions import ParsedAction, format_action_text, parse_action_text

MAX_PIXELS = 64 * 28 * 28
FAMILY_NAMES = ["qwen2_5_vl", "qwen3_vl"]


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory) -> dict:
    root = tmp_path_factory.getbasetemp()
    return {name: cached_tiny_qwen(root, family=name) for name in FAMILY_NAMES}


@pytest.fixture(scope="module")
def processors(tiny_dirs) -> dict:
    from transformers import AutoProcessor

    return {name: AutoProcessor.from_pretrained(path) for name, path in tiny_dirs.items()}


# --------------------------------------------------------------------------- detection
def test_family_is_read_from_the_checkpoint_config(tiny_dirs):
    assert family_of(tiny_dirs["qwen2_5_vl"]) is QWEN2_5_VL
    assert family_of(tiny_dirs["qwen3_vl"]) is QWEN3_VL
    assert json.loads((tiny_dirs["qwen3_vl"] / "config.json").read_text())["model_type"] == "qwen3_vl"
    assert family_of({"model_type": "qwen3_vl"}) is QWEN3_VL
    assert family_of(SimpleNamespace(model_type="qwen2_5_vl")) is QWEN2_5_VL


def test_frames_per_family():
    assert (QWEN2_5_VL.frame, QWEN3_VL.frame) == ("resized", "norm1000")
    assert set(FAMILIES) == set(FAMILY_NAMES)


def test_unknown_model_type_is_refused_with_the_supported_families(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava"}))
    with pytest.raises(ValueError, match=r"model_type 'llava'.*supported: qwen2_5_vl .*qwen3_vl") as err:
        family_of(tmp_path)
    assert "--images.family" in str(err.value)
    with pytest.raises(ValueError, match=r"unknown model family 'qwen4_vl'; supported: qwen2_5_vl .*qwen3_vl"):
        get_family("qwen4_vl")
    with pytest.raises(ValueError, match="supported: qwen2_5_vl"):
        prompt_texts("qwen4_vl")


def test_an_explicit_family_overrides_the_checkpoint(tiny_dirs, tmp_path):
    assert resolve_family("qwen3_vl", tiny_dirs["qwen2_5_vl"]) is QWEN3_VL
    assert resolve_family(None, tiny_dirs["qwen3_vl"]) is QWEN3_VL
    # the override also admits a checkpoint of an unsupported model_type, as the named family
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    assert resolve_family("qwen3_vl", tmp_path) is QWEN3_VL
    assert resolve_family(None, None) is QWEN2_5_VL  # no model named: the default policies' family


# --------------------------------------------------------------------------- resize rule
def test_resize_factor_is_the_processors_own(processors):
    assert resize_factor(processors["qwen2_5_vl"]) == 28 and patch_size(processors["qwen2_5_vl"]) == 14
    assert resize_factor(processors["qwen3_vl"]) == 32 and patch_size(processors["qwen3_vl"]) == 16
    # read from the processor, not a table: another patch size gives another factor
    assert resize_factor(SimpleNamespace(image_processor=SimpleNamespace(patch_size=8, merge_size=3))) == 24
    with pytest.raises(ValueError, match="patch_size and merge_size"):
        resize_factor(SimpleNamespace(image_processor=SimpleNamespace()))


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("size", [(1000, 500), (123, 77), (640, 641), (37, 300)])
def test_resized_size_is_what_the_processor_feeds_the_model(processors, family, size):
    processor = processors[family]
    factor = resize_factor(processor)
    image = Image.new("RGB", size, (90, 30, 200))
    shown = fetch_image({"image": image, "min_pixels": QWEN_MIN_PIXELS, "max_pixels": MAX_PIXELS}, image_patch_size=patch_size(processor))
    assert shown.size == qwen_resized_size(*size, QWEN_MIN_PIXELS, MAX_PIXELS, factor)
    # the processor does not resize again: its patch grid covers exactly the shown image
    t, h, w = processor.image_processor(images=[shown], return_tensors="pt")["image_grid_thw"][0].tolist()
    assert (w * patch_size(processor), h * patch_size(processor)) == shown.size


def test_the_two_factors_give_different_frames():
    assert qwen_resized_size(1000, 500) == (1008, 504)
    assert qwen_resized_size(1000, 500, factor=32) == (992, 512)
    with pytest.raises(ValueError, match="factor"):
        qwen_resized_size(100, 100, factor=0)


# --------------------------------------------------------------------------- prompts
def test_prompt_wording_per_family():
    qwen25, qwen3 = prompt_texts("qwen2_5_vl"), prompt_texts("qwen3_vl")
    assert "absolute pixel coordinates" in qwen25.system_prompt and "0 to 1000" not in qwen25.system_prompt
    assert "relative coordinates from 0 to 1000" in qwen3.system_prompt and "absolute pixel" not in qwen3.system_prompt
    assert qwen3.tool_schema["function"]["parameters"]["properties"]["bbox_2d"]["description"] == QWEN3_VL.bbox_description
    follow = followup_message("crop.png", 1, 3, family="qwen3_vl")["content"][1]["text"]
    assert "relative coordinates from 0 to 1000 of this new image" in follow
    assert "pixel coordinates of this new image" in followup_message("crop.png", 1, 3)["content"][1]["text"]
    assert build_messages("Q?", "q.png", family="qwen3_vl")[0]["content"] == qwen3.system_prompt
    assert to_verl_prompt("Q?", family=QWEN3_VL)[0]["content"] == qwen3.system_prompt


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_each_prompts_example_parses_in_its_own_frame(family):
    """The crop example of a family's prompt, read in that family's frame, is the box the
    example means; for Qwen3-VL it is 0-1000 of whatever size the image was resized to."""
    texts = prompt_texts(family)
    f = get_family(family)
    for resized in [(448, 448), (992, 512)]:
        crop = parse_action_text(texts.crop_example, frame=f.frame, resized_size=resized)
        assert isinstance(crop, ParsedAction) and crop.decision == 1
        extent = np.array(resized * 2) if f.frame == "resized" else np.full(4, 1000.0)
        np.testing.assert_allclose(crop.box, np.array(f.example_box) / extent)


# --------------------------------------------------------------------------- exact crop frames
@pytest.fixture(scope="module")
def policies(tiny_dirs) -> dict:
    torch.set_num_threads(1)
    return {name: QwenVLPolicy(path, max_new_tokens=4, images=ImageSettings(max_pixels=MAX_PIXELS)) for name, path in tiny_dirs.items()}


def _expected_rect(box, extent, view_box) -> list[int]:
    """The whole-pixel rectangle of the original image under ``box`` (numbers in a frame of
    ``extent`` over the view ``view_box``), computed exactly with fractions: edges outwards."""
    x0, y0, x1, y1 = (Fraction(int(v)) for v in view_box)
    sx, sy = (x1 - x0) / Fraction(extent[0]), (y1 - y0) / Fraction(extent[1])
    left, top = x0 + Fraction(box[0]) * sx, y0 + Fraction(box[1]) * sy
    right, bottom = x0 + Fraction(box[2]) * sx, y0 + Fraction(box[3]) * sy
    return [math.floor(left), math.floor(top), math.ceil(right), math.ceil(bottom)]


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("policy_max_side", [None, 40])
def test_boxes_drawn_on_the_shown_image_crop_exactly_those_original_pixels(
    policies, family, policy_max_side, scene_pools, tiny_scorer
):
    """Two zoom steps: each box is drawn on the image the model is shown (as the policy's
    processor resizes it), written in the family's frame; the env must crop the original
    pixels under it, computed here with exact fractions."""
    policy = policies[family]
    frame = get_family(family).frame
    env = RegionRerankEnv(scene_pools, tiny_scorer, max_steps=3, policy_max_side=policy_max_side)
    obs, info = env.reset(options={"query_index": 1})
    view_box = [0, 0, env.image.width, env.image.height]
    drawn = [(0.13, 0.21, 0.77, 0.64), (0.3, 0.05, 0.95, 0.9)]
    for fractions in drawn:
        messages = policy.messages(obs, info, env)
        shown, _ = process_vision_info(messages, image_patch_size=patch_size(policy.processor))
        width, height = shown[0].size
        extent = (width, height) if frame == "resized" else (1000, 1000)
        box = [round(fractions[0] * extent[0]), round(fractions[1] * extent[1]), round(fractions[2] * extent[0]), round(fractions[3] * extent[1])]
        text = '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": %s}}\n</tool_call>' % json.dumps(box)
        obs, _, terminated, _, info = env.step(policy.action_from_text(text, env))
        assert not terminated and info["decision"] == 1
        expected = _expected_rect(box, extent, view_box)
        assert info["box"].tolist() == expected, (family, box, extent, view_box)
        # the next view is exactly that crop of the original image
        np.testing.assert_array_equal(np.asarray(env.view), np.asarray(env.image.crop(tuple(expected))))
        view_box = expected


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_reading_a_box_in_the_other_familys_frame_crops_elsewhere(policies, family, scene_pools, tiny_scorer):
    """The silent bug the family prevents: the same numbers read in the other frame are another box."""
    env = RegionRerankEnv(scene_pools, tiny_scorer)
    _, info = env.reset(options={"query_index": 0})
    view = info["policy_image"]
    own, other = policies[family], policies["qwen3_vl" if family == "qwen2_5_vl" else "qwen2_5_vl"]
    seen = qwen_resized_size(view.width, view.height, QWEN_MIN_PIXELS, MAX_PIXELS, own.factor)
    box = np.array([0.1, 0.2, 0.6, 0.9])
    frame = get_family(family).frame
    text = format_action_text(1, box, frame=frame, resized_size=seen)
    np.testing.assert_allclose(own.action_from_text(text, env)["box"], box, atol=0.5 / min(seen))
    misread = other.action_from_text(text, env)
    assert not np.allclose(np.clip(misread["box"], 0, 1), box, atol=0.02)


def test_policy_names_its_family_and_loads_its_model_class(policies):
    assert type(policies["qwen3_vl"].model).__name__ == "Qwen3VLForConditionalGeneration"
    assert type(policies["qwen2_5_vl"].model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert policies["qwen3_vl"].name.startswith("qwen3-vl:") and policies["qwen2_5_vl"].name.startswith("qwen2.5-vl:")
    assert policies["qwen3_vl"].family is QWEN3_VL and policies["qwen3_vl"].factor == 32


def test_policy_family_override_and_refusal(tiny_dirs):
    forced = QwenVLPolicy(tiny_dirs["qwen2_5_vl"], max_new_tokens=2, images=ImageSettings(max_pixels=MAX_PIXELS, family="qwen3_vl"))
    assert forced.family is QWEN3_VL and forced.factor == 28  # the frame follows the override; the resize, the processor
    with pytest.raises(ValueError, match="unknown model family 'nope'; supported"):
        QwenVLPolicy(tiny_dirs["qwen2_5_vl"], images=ImageSettings(max_pixels=MAX_PIXELS, family="nope"))


# --------------------------------------------------------------------------- the verl run configuration
def test_verl_run_pins_the_checkpoints_family_and_token_size(tiny_dirs, tmp_path):
    from agents.verl.config import VerlArgs, compose_verl_config, image_token_pixels, loop_settings, sequence_lengths

    for name, token_pixels in [("qwen2_5_vl", 28 * 28), ("qwen3_vl", 32 * 32)]:
        args = VerlArgs.for_cpu()
        args.model_path, args.out = str(tiny_dirs[name]), tmp_path / name
        config = compose_verl_config(args, cpu=True)
        # the family reaches the data export and the agent-loop file; the prompt budget counts its tokens
        assert args.images.family == name and loop_settings(args).images.family == name
        assert image_token_pixels(args, cpu=True) == token_pixels
        assert config.data.max_prompt_length == sequence_lengths(args, token_pixels)[0]
        assert config.data.max_prompt_length == args.prompt_text_tokens + args.images.max_pixels // token_pixels


def test_verl_run_keeps_an_explicit_family_and_refuses_an_unknown_one(tiny_dirs, tmp_path):
    from agents.verl.config import VerlArgs, pin_family

    args = VerlArgs(model_path=str(tiny_dirs["qwen2_5_vl"]), out=tmp_path, images=ImageSettings(family="qwen3_vl"))
    pin_family(args, cpu=True)
    assert args.images.family == "qwen3_vl"
    args = VerlArgs(model_path=str(tiny_dirs["qwen2_5_vl"]), out=tmp_path, images=ImageSettings(family="qwen9"))
    with pytest.raises(ValueError, match="unknown model family 'qwen9'; supported"):
        pin_family(args, cpu=True)
    hub = VerlArgs(model_path="Qwen/Qwen3-VL-4B-Instruct", out=tmp_path)
    pin_family(hub)  # a hub id is not read before launch: the agent loop reads the model verl loads
    assert hub.images.family is None


def test_prompt_fit_check_counts_the_familys_prompt(tiny_dirs):
    from transformers import AutoTokenizer

    from agents.verl.config import VerlArgs, check_prompt_fits, longest_prompt_tokens

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["qwen3_vl"])
    # the tiny Qwen3-VL tokenizer holds its own system prompt as one token, not Qwen2.5-VL's
    own = longest_prompt_tokens(tokenizer, ["What is it?"], family="qwen3_vl")
    other = longest_prompt_tokens(tokenizer, ["What is it?"], family="qwen2_5_vl")
    assert own < other
    args = VerlArgs(model_path=str(tiny_dirs["qwen3_vl"]), prompt_text_tokens=own)
    check_prompt_fits(args, tokenizer, ["What is it?"])  # family read from the tokenizer's checkpoint
