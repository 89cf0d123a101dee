"""RewardConfig.region_r1_public(): the public Region-R1 code's behaviour, on hand-computed cases.

Each case is computed by hand from the public ``src/rewards.py`` / ``src/utils.py``
(taco-group/Region-R1): ``sorted(range(K), key=score, reverse=True)`` keeps ties in
pool order, the margin is mean(positives) - max(negatives), 1.0 without negatives.
"""

import math

import numpy as np
import pytest
from PIL import Image

from envs.boxes import crop, region_r1_resized_size
from envs.actions import REGION
from envs.region_rerank import RegionRerankEnv
from envs.wrappers import TextAction
from rewards import RewardConfig, region_reward

PUBLIC = RewardConfig.region_r1_public()
DEFAULT = RewardConfig()


def test_the_preset_selects_every_public_choice_and_keeps_the_public_weights():
    assert (PUBLIC.tie_break, PUBLIC.margin_positive, PUBLIC.margin_without_negatives) == ("pool_order", "mean", 1.0)
    assert (PUBLIC.min_box_side, PUBLIC.malformed_as_full, PUBLIC.resize_crop) == (0.0, True, True)
    assert (PUBLIC.text_rules, PUBLIC.text_frame) == ("region_r1_public", "pixel")
    weights = ("scale", "w_mrr", "w_ndcg", "w_rank", "w_margin", "floor", "full_reward", "invalid_box_penalty")
    assert [getattr(PUBLIC, w) for w in weights] == [getattr(DEFAULT, w) for w in weights] == [5.0, 0.2, 0.2, 0.2, 0.4, -0.05, 1.0, -1.0]
    assert RewardConfig.region_r1_public(w_margin=0.1).w_margin == 0.1


def test_ties_keep_pool_order():
    scores, positives = [0.5, 0.5, 0.2], [True, False, False]
    assert DEFAULT.stats(scores, positives).rank == 2  # the tied negative goes first
    public = PUBLIC.stats(scores, positives)
    assert (public.rank, public.rr, public.ndcg) == (1, 1.0, 1.0)  # pool order: the positive is first


def test_margin_uses_the_mean_positive_and_is_one_without_negatives():
    scores, positives = [0.9, 0.5, 0.7, 0.1], [True, True, False, False]
    assert DEFAULT.stats(scores, positives).margin == pytest.approx(0.9 - 0.7)
    assert PUBLIC.stats(scores, positives).margin == pytest.approx((0.9 + 0.5) / 2 - 0.7)
    assert DEFAULT.stats([0.3, 0.6], [True, True]).margin == 0.0
    assert PUBLIC.stats([0.3, 0.6], [True, True]).margin == 1.0
    assert PUBLIC.stats([0.3, 0.6], [False, False]).margin == 0.0  # no positive: 0 in both


def test_region_reward_under_the_preset_hand_computed():
    positives = [False, True, True, False]
    old = PUBLIC.stats([0.7, 0.6, 0.5, 0.7], positives)  # pool order: c0, c3, c1, c2 -> rank 3
    new = PUBLIC.stats([0.4, 0.6, 0.6, 0.1], positives)  # c1, c2, c0, c3 -> rank 1
    d_mrr = 1 - 1 / 3
    d_ndcg = 1 - (1 / math.log2(4) + 1 / math.log2(5)) / (1 + 1 / math.log2(3))
    d_rank = math.log(4) - math.log(2)
    d_margin = (0.6 - 0.4) - ((0.6 + 0.5) / 2 - 0.7)
    terms = region_reward(old, new, PUBLIC)
    assert (terms.d_mrr, terms.d_ndcg, terms.d_rank, terms.d_margin) == pytest.approx((d_mrr, d_ndcg, d_rank, d_margin))
    assert terms.reward == pytest.approx(5 * (0.2 * d_mrr + 0.2 * d_ndcg + 0.2 * d_rank + 0.4 * d_margin))


def test_public_resize_rule_hand_computed():
    # round(60/28)*28 = 56, round(80/28)*28 = 84; 84 * 56 >= 4*28*28, so no rescale
    assert region_r1_resized_size(80, 60) == (84, 56)
    # 28 x 28 < 4*28*28: beta = sqrt(3136 / 100) = 5.6, ceil(10 * 5.6 / 28) * 28 = 56
    assert region_r1_resized_size(10, 10) == (56, 56)
    assert region_r1_resized_size(1000, 1) == (1008, 28)  # no aspect-ratio limit, unlike qwen_vl_utils


@pytest.fixture()
def public_env(scene_pools, tiny_scorer) -> RegionRerankEnv:
    return RegionRerankEnv(scene_pools, tiny_scorer, reward=PUBLIC)


def test_crops_are_resized_before_scoring_and_any_positive_area_is_valid(public_env, scene_pools, tiny_scorer):
    _, info0 = public_env.reset(options={"query_index": 1})
    _, reward, _, _, info = public_env.step({"decision": REGION, "box": [0.25, 0.1, 0.75, 0.6]})
    image = Image.open(scene_pools[1].image).convert("RGB")
    view = crop(image, info["box"])
    assert view.size == (80, 60)
    resized = view.resize(region_r1_resized_size(80, 60), Image.Resampling.BICUBIC)
    expected = tiny_scorer.score([resized], scene_pools[1])[0]
    np.testing.assert_allclose(info["scores"], expected, atol=1e-6)
    positives = scene_pools[1].positives
    assert reward == pytest.approx(float(region_reward(PUBLIC.stats(info0["baseline_scores"], positives), PUBLIC.stats(expected, positives), PUBLIC).reward), abs=1e-5)
    public_env.reset(options={"query_index": 1})
    tiny_box = [0.5, 0.5, 0.5 + 2 / 160, 0.5 + 2 / 120]  # 2 x 2 px: under the project's 4 px minimum
    assert public_env.step({"decision": REGION, "box": tiny_box})[4]["outcome"] == "region"
    project = RegionRerankEnv(scene_pools, tiny_scorer)
    project.reset(options={"query_index": 1})
    assert project.step({"decision": REGION, "box": tiny_box})[4]["outcome"] == "invalid_box"


def tool_call(bbox) -> str:
    return '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": ' + bbox + "}}\n</tool_call>"


@pytest.mark.parametrize(
    "text, outcome, box",
    [
        (tool_call("[40, 30, 120, 90]"), "region", [40, 30, 120, 90]),  # original pixels (the public frame)
        (tool_call('["40", "30", "120", "90"]'), "region", [40, 30, 120, 90]),  # numeric strings pass
        (tool_call("[0, 0, 80, 60]") + tool_call("[40, 30, 120, 90]"), "region", [0, 0, 80, 60]),  # the first call
        ("<think>" + tool_call("[0, 0, 80, 60]") + "</think> NO_CROP_NEEDED", "region", [0, 0, 80, 60]),  # think is not removed
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0, 0, 80, 60]}}', "full", None),  # unclosed
        ("I would not crop.", "full", None),  # no box: scored as FULL, not penalized
        (tool_call("[0, 0, 80]"), "full", None),
    ],
)
def test_public_text_rules_through_the_text_wrapper(public_env, text, outcome, box):
    env = TextAction(public_env)
    _, info0 = env.reset(options={"query_index": 1})
    _, reward, _, _, info = env.step(text)
    assert info["outcome"] == outcome
    if box is not None:
        np.testing.assert_allclose(info["box"], box)
    else:
        assert reward == (1.0 if info0["baseline_rank"] == 1 else 0.0)
