"""Action reading is strict and total: through step, score_actions and every wrapper.

The property tests feed arbitrary Python objects (nested containers, NumPy arrays of any
dtype and shape, huge integers, non-finite floats, bytes, text) and check that nothing
raises and that an action counts as FULL or REGION exactly when the rules of
:mod:`envs.actions` say it is one.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from envs.actions import FULL, MALFORMED, MIN_CENTER_SIDE, REGION, MalformedAction, read_action, read_flat_action
from envs.region_rerank import RegionRerankEnv
from envs.wrappers import FlatBoxAction, HashedQuestion, TextAction
from rewards import RewardConfig

BOX = [0.1, 0.1, 0.6, 0.6]
PENALTY = RewardConfig().malformed_penalty

_dtypes = st.one_of(
    hnp.scalar_dtypes(), hnp.byte_string_dtypes(max_len=3), hnp.unicode_string_dtypes(max_len=3), st.just(np.dtype(object))
)
_arrays = hnp.arrays(_dtypes, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**500),
    st.floats(allow_nan=True, allow_infinity=True),
    st.complex_numbers(),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.fractions(),
    st.sampled_from([0, 1, np.int64(1), np.uint8(0), np.float32(1.0), np.bool_(True), np.array(1), "1", b"1", 1.0]),
    _arrays,
)
objects = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.tuples(children, children, children, children),
        st.dictionaries(st.sampled_from(["decision", "box", "x"]), children, max_size=3),
    ),
    max_leaves=12,
)
native_actions = st.one_of(objects, st.fixed_dictionaries({"decision": objects, "box": objects}))

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def is_valid_decision(value) -> bool:
    """The rule, written independently of envs.actions: an integer 0/1, never bool."""
    if isinstance(value, (bool, np.bool_)):
        return False
    if isinstance(value, np.ndarray):
        return value.shape == () and value.dtype.kind in "iu" and int(value) in (0, 1)
    return isinstance(value, (int, np.integer)) and int(value) in (0, 1)


def is_numbers(value, n: int = 4) -> bool:
    """The box rule, written independently: n finite real numbers, never bool/str/complex."""
    if isinstance(value, np.ndarray):
        if value.shape != (n,) or value.dtype.kind not in "iuf":
            return False
        with np.errstate(all="ignore"):
            return bool(np.all(np.isfinite(value.astype(np.float64))))
    if not isinstance(value, (list, tuple)) or len(value) != n:
        return False
    for v in value:
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
            return False
        try:
            if not math.isfinite(float(v)):
                return False
        except OverflowError:
            return False
    return True


def expected_kind(action) -> str:
    if not isinstance(action, dict) or "decision" not in action or not is_valid_decision(action["decision"]):
        return "malformed"
    if int(np.asarray(action["decision"])) == FULL:
        return "full"
    return "box" if is_numbers(action.get("box")) else "malformed"


@pytest.fixture()
def env(scene_pools, tiny_scorer) -> RegionRerankEnv:
    return RegionRerankEnv(scene_pools, tiny_scorer)


@PROPERTY
@given(action=native_actions)
def test_step_and_score_actions_never_raise_and_follow_the_rules(env, action):
    env.reset(options={"query_index": 0})
    [predicted] = env.score_actions([action])
    _, reward, terminated, truncated, info = env.step(action)
    kind = expected_kind(action)
    if kind == "box":
        assert info["outcome"] in ("region", "invalid_box")
    else:
        assert info["outcome"] == kind, (action, info.get("reason"))
    if kind == "malformed":
        assert reward == PENALTY and info["decision"] == MALFORMED and info["reason"]
        assert len(info["reason"]) < 400  # the reason quotes the action, bounded
    assert (predicted.kind, predicted.reward) == (info["outcome"], pytest.approx(reward, abs=1e-6))
    assert terminated and not truncated


@PROPERTY
@given(action=objects)
def test_flat_box_wrapper_never_raises(scene_pools, tiny_scorer, action):
    env = FlatBoxAction(RegionRerankEnv(scene_pools, tiny_scorer))
    env.reset(options={"query_index": 0})
    _, reward, _, _, info = env.step(action)
    if is_numbers(action, 5):
        assert info["outcome"] in ("full", "region", "invalid_box")
    else:
        assert info["outcome"] == "malformed" and reward == PENALTY


@PROPERTY
@given(action=st.one_of(objects, st.text(max_size=200)))
def test_text_wrapper_never_raises(scene_pools, tiny_scorer, action):
    env = TextAction(RegionRerankEnv(scene_pools, tiny_scorer))
    env.reset(options={"query_index": 0})
    _, _, terminated, _, info = env.step(action)
    assert terminated and info["outcome"] in ("full", "region", "invalid_box", "malformed")
    if not isinstance(action, str):
        assert info["outcome"] == "malformed"


@pytest.mark.parametrize(
    "decision",
    [float("inf"), float("nan"), 1.7, 0.9, 0.5, -0.5, 1.0, np.float64(0.0), "1", b"1", True, False, np.bool_(True),
     [1], (0,), np.array([[1]]), np.array([1]), np.array(1.0), 2, -1, 10**400, Fraction(1), None, 1 + 0j],
)  # fmt: skip
def test_decisions_outside_the_space_are_malformed(env, decision):
    env.reset(options={"query_index": 0})
    action = {"decision": decision, "box": BOX}
    [outcome] = env.score_actions([action])
    _, reward, terminated, _, info = env.step(action)
    assert outcome.kind == info["outcome"] == "malformed" and reward == PENALTY and terminated
    assert "0 (FULL) or 1 (REGION)" in info["reason"]


@pytest.mark.parametrize("decision", [1, np.int64(1), np.int8(1), np.uint8(1), np.array(1), np.array(1, np.int32)])
def test_integer_decisions_of_any_integer_type_are_read(env, decision):
    env.reset(options={"query_index": 0})
    assert env.step({"decision": decision, "box": BOX})[4]["outcome"] == "region"
    env.reset(options={"query_index": 0})
    assert env.step({"decision": decision - 1, "box": None})[4]["outcome"] == "full"  # the box is not read for FULL


@pytest.mark.parametrize(
    "box",
    [[10**400, 0, 1, 1], [np.nan, 0, 1, 1], [0, 0, np.inf, 1], [0.1, 0.1, 0.6], [0.1, 0.1, 0.6, 0.6, 0.7], ["0", 0, 1, 1],
     [True, 0, 1, 1], [0, 0, 1, 1j], np.array([[0.1, 0.1], [0.6, 0.6]]), np.array(["0", "0", "1", "1"]),
     np.array([0, 0, 1, 1], dtype=object), np.array([0, 0, 1, 1], dtype=bool), np.array([1e300, 0, 1, 1], np.longdouble) ** 2,
     None, "0 0 1 1", {"x1": 0}, [[0], [0], [1], [1]]],
)  # fmt: skip
def test_boxes_that_are_not_four_finite_numbers_are_malformed(env, box):
    env.reset(options={"query_index": 0})
    [outcome] = env.score_actions([{"decision": 1, "box": box}])
    _, reward, _, _, info = env.step({"decision": 1, "box": box})
    assert outcome.kind == info["outcome"] == "malformed" and reward == PENALTY
    assert "4 finite numbers" in info["reason"]


@pytest.mark.parametrize(
    "action",
    [[np.nan, 0.1, 0.1, 0.6, 0.6], [0.9, 0.1, np.inf, 0.6, 0.6], [0.9, 10**400, 0.1, 0.6, 0.6], ["a"] * 5,
     np.array(["0.9", "0", "0", "1", "1"]), [[0.9], 0.1, 0.1, 0.6, 0.6], [0.9, [0.1, 0.2], 0.1, 0.6, 0.6],
     np.zeros(3, np.float32), np.zeros((1, 5), np.float32), "0.9 0 0 1 1", None, {"decision": 1}],
)  # fmt: skip
def test_flat_actions_that_are_not_five_finite_numbers_are_malformed(scene_pools, tiny_scorer, action):
    env = FlatBoxAction(RegionRerankEnv(scene_pools, tiny_scorer))
    env.reset(options={"query_index": 0})
    _, reward, _, _, info = env.step(action)
    assert info["outcome"] == "malformed" and reward == PENALTY and "5 finite numbers" in info["reason"]


def test_flat_actions_threshold_the_decision(scene_pools, tiny_scorer):
    env = FlatBoxAction(RegionRerankEnv(scene_pools, tiny_scorer), encoding="corners")
    for action, kind in (([0.5, 0, 0, 0.5, 0.5], "region"), ((0.49, 0, 0, 0.5, 0.5), "full"), (np.array([1, 0, 0, 1, 1]), "region")):
        env.reset(options={"query_index": 0})
        assert env.step(action)[4]["outcome"] == kind


def test_score_actions_refuses_a_non_sequence(env):
    env.reset(options={"query_index": 0})
    for actions in ({"decision": 1, "box": BOX}, "garbage", 7):
        with pytest.raises(TypeError, match="sequence of actions"):
            env.score_actions(actions)


def test_read_action_results():
    assert read_action({"decision": 0}).decision == FULL
    read = read_action({"decision": np.int32(1), "box": (0, 0.5, 1, 1)})
    assert read.decision == REGION and read.box.dtype == np.float64 and read.box.tolist() == [0, 0.5, 1, 1]
    assert read_action(MalformedAction("no box", "blah")).reason == "no box"

    class Exploding(dict):
        def __getitem__(self, key):
            raise RuntimeError("boom")

        def __repr__(self):
            raise RuntimeError("no repr either")

    read = read_action(Exploding(decision=1, box=BOX))
    assert read.decision == MALFORMED and "cannot be read" in read.reason


def test_hashed_question_observation_is_numeric(scene_pools, tiny_scorer):
    env = HashedQuestion(RegionRerankEnv(scene_pools, tiny_scorer), dim=64)
    obs, info = env.reset(options={"query_index": 0})
    assert obs["question"].shape == (64,) and obs["question"].dtype == np.float32
    assert env.observation_space.contains(obs)
    words = {w for w in info["question"].lower().replace("?", " ").split()}
    assert 1 <= obs["question"].sum() <= len(words)
    again, _ = env.reset(options={"query_index": 0})
    np.testing.assert_array_equal(obs["question"], again["question"])
    other, _ = env.reset(options={"query_index": 1})  # "scene 0" vs "scene 1"
    assert not np.array_equal(obs["question"], other["question"])


extended_actions = st.one_of(
    objects,
    st.fixed_dictionaries({"decision": objects, "box": objects},
                          optional={"search": objects, "query": objects, "count": objects}),
)


@PROPERTY
@given(action=extended_actions)
def test_the_extended_reader_never_raises_and_follows_the_rules(action):
    """With SEARCH and 2 regions on, any object still reads to FULL, REGION or MALFORMED;
    a search flag that is not the integer 0/1 is malformed; a REGION holds 1-2 finite boxes."""
    read = read_action(action, search=True, max_regions=2)
    assert read.decision in (FULL, REGION, MALFORMED)
    if isinstance(action, dict) and "search" in action and action["search"] is not None and read.decision != MALFORMED:
        assert is_valid_decision(action["search"])
    if read.decision == REGION:
        assert read.boxes.ndim == 2 and 1 <= len(read.boxes) <= 2 and np.isfinite(read.boxes).all()
        assert read.query is None or isinstance(read.query, str)


def test_center_encoding_makes_every_flat_action_a_valid_box(scene_pools, tiny_scorer):
    """The default encoding: any 5 finite numbers with d >= 0 crop a box inside the view,
    of 10-100% of its sides; N(0, 1) draws are valid boxes, where ~87% of corners are not."""
    env = FlatBoxAction(RegionRerankEnv(scene_pools, tiny_scorer))
    assert env.action_space.low.min() == -1.0 and env.action_space.high.max() == 1.0
    rng = np.random.default_rng(0)
    draws = np.concatenate([rng.normal(size=(64, 5)), [[0, -1, -1, -1, -1], [0, 1, 1, 1, 1], [0, 5, -5, 9, -9]]])
    draws[:, 0] = np.abs(draws[:, 0])  # REGION
    for action in draws:
        box = read_flat_action(action, encoding="center")["box"]
        assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1
        assert np.all(box[2:] - box[:2] >= MIN_CENTER_SIDE - 1e-12)
    assert read_flat_action([0, 0, 0, 0, 0], encoding="center")["box"] == pytest.approx([0.225, 0.225, 0.775, 0.775])
    assert read_flat_action([-0.01, 0, 0, 0, 0], encoding="center")["decision"] == FULL
    for action in draws[:8]:
        env.reset(options={"query_index": 0})
        assert env.step(action.astype(np.float32))[4]["outcome"] == "region"
    corners = [read_flat_action(np.clip(a, 0, 1)) for a in rng.normal(size=(2000, 5))]
    valid = np.mean([(c["box"][2] > c["box"][0]) and (c["box"][3] > c["box"][1]) for c in corners])
    assert valid < 0.2  # why "center" is the default


def test_flat_box_encoding_is_checked_and_recorded(scene_pools, tiny_scorer):
    with pytest.raises(ValueError, match="encoding='polar'"):
        FlatBoxAction(RegionRerankEnv(scene_pools, tiny_scorer), encoding="polar")
    assert FlatBoxAction(RegionRerankEnv(scene_pools, tiny_scorer), encoding="corners").action_space.low.min() == 0.0


def test_text_action_space_contains_every_answer_syntax_the_parser_reads(scene_pools, tiny_scorer):
    env = TextAction(RegionRerankEnv(scene_pools, tiny_scorer), frame="pixel")
    answers = [
        "NO_CROP_NEEDED",
        "The whole image is fine.\nNO_CROP_NEEDED",
        '<tool_call>\n{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [10, 20, 110, 90]}}\n</tool_call>',
        "<box>10, 20, 110, 90</box>",
        "Zoom on the left_side (x-axis 0.5):\t<box>10, 20, 110, 90</box>",
    ]
    for answer in answers:
        assert env.action_space.contains(answer), answer
        env.reset(options={"query_index": 0})
        assert env.step(answer)[4]["outcome"] in ("full", "region"), answer
    assert env.action_space.contains("") and set(env.action_space.sample()) <= set(env.action_space.character_set)


def test_invalid_box_reasons_name_the_frame_and_the_view_size(scene_pools, tiny_scorer):
    env = TextAction(RegionRerankEnv(scene_pools, tiny_scorer), frame="norm")
    env.reset(options={"query_index": 0})
    _, _, _, _, info = env.step("<box>100, 50, 300, 150</box>")  # pixels given where 0-1 was expected
    assert info["outcome"] == "invalid_box"
    assert "160x120 px view" in info["reason"] and "'norm' frame" in info["reason"], info["reason"]
    native = RegionRerankEnv(scene_pools, tiny_scorer)
    native.reset(options={"query_index": 0})
    reason = native.step({"decision": REGION, "box": np.array([0.5, 0.5, 0.5, 0.9], np.float32)})[4]["reason"]
    assert "0-1 of the current 160x120 px view" in reason
