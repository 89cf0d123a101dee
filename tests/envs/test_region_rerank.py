"""RegionRerankEnv: conformance, the reward wiring, multi-step zoom, batching and wrappers.

The scorer is a real open_clip model (tiny, random weights, built by the tests); rewards
are checked against :mod:`rewards` applied to that scorer's own scores of the same crop.
"""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from PIL import Image

import envs  # noqa: F401  (registers RegionRerank-v0)
from envs.boxes import crop, expand_box, from_norm, mirror_norm_box, qwen_resized_size, view_box_to_image
from envs.data.pools import Candidate, QueryPool
from envs.actions import FULL, REGION
from envs.region_rerank import RegionRerankEnv
from envs.text_actions import MalformedAction
from envs.wrappers import FlatBoxAction, HashedQuestion, TextAction
from rewards import RewardConfig, full_reward, ranking_stats, region_reward


@pytest.fixture()
def pools(scene_pools) -> list[QueryPool]:
    return scene_pools


@pytest.fixture()
def env(pools, tiny_scorer) -> RegionRerankEnv:
    return RegionRerankEnv(pools, tiny_scorer)


def region(box) -> dict:
    return {"decision": REGION, "box": np.asarray(box, np.float32)}


FULL_ACTION = {"decision": FULL, "box": np.zeros(4, np.float32)}


def test_check_env_passes(pools, tiny_scorer):
    env = gym.make("RegionRerank-v0", dataset=pools, scorer=tiny_scorer, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    check_env(RegionRerankEnv(pools, tiny_scorer, max_steps=3, policy_max_side=32))


def test_envs_sharing_an_image_cache_decode_each_query_image_once(pools, tiny_scorer):
    from envs.data.pools import ImageCache

    cache = ImageCache()
    plain, shared = RegionRerankEnv(pools, tiny_scorer), [RegionRerankEnv(pools, tiny_scorer, image_cache=cache) for _ in range(3)]
    for env in shared:
        obs, info = env.reset(options={"query_index": 0})
    expected_obs, expected_info = plain.reset(options={"query_index": 0})
    assert (cache.misses, cache.hits) == (1, 2)
    assert np.array_equal(obs["image"], expected_obs["image"])
    assert np.array_equal(info["baseline_scores"], expected_info["baseline_scores"])
    step = [env.step(region([0.1, 0.1, 0.6, 0.7])) for env in (shared[0], plain)]
    assert step[0][1] == step[1][1]


def test_gym_make_and_sync_vector_env(pools, tiny_scorer):
    env = gym.make("RegionRerank-v0", dataset=pools, scorer=tiny_scorer)
    obs, _ = env.reset(seed=0)
    assert obs["image"].shape == (224, 224, 3)
    vec = gym.make_vec("envs:RegionRerank-v0", num_envs=2, vectorization_mode="sync", dataset=pools, scorer=tiny_scorer)
    obs, _ = vec.reset(seed=0)
    assert obs["image"].shape == (2, 224, 224, 3)
    actions = {"decision": np.array([FULL, REGION]), "box": np.array([[0, 0, 1, 1], [0.1, 0.1, 0.6, 0.7]], np.float32)}
    _, rewards, terminated, truncated, infos = vec.step(actions)
    assert rewards.shape == (2,) and terminated.all() and not truncated.any()
    assert list(infos["outcome"]) == ["full", "region"]
    vec.close()


def test_reset_is_deterministic_and_selectable(env, pools):
    ids = [env.reset(seed=7)[1]["query_id"] for _ in range(3)]
    assert len(set(ids)) == 1
    _, info = env.reset(options={"query_index": 3})
    assert info["query_id"] == "q3"
    _, info = env.reset(options={"query_id": "q4"})
    assert info["query_id"] == "q4"
    with pytest.raises(KeyError, match="nope"):
        env.reset(options={"query_id": "nope"})
    with pytest.raises(IndexError, match="query_index"):
        env.reset(options={"query_index": 99})


def test_full_reward_follows_the_baseline_rule(env, tiny_scorer, pools):
    for q in range(len(pools)):
        _, info = env.reset(options={"query_index": q})
        baseline = tiny_scorer.score([Image.open(pools[q].image).convert("RGB")], pools[q])[0]
        np.testing.assert_allclose(info["baseline_scores"], baseline, rtol=1e-5, atol=1e-6)
        _, reward, terminated, _, info = env.step(FULL_ACTION)
        expected = full_reward(ranking_stats(baseline, pools[q].positives))
        assert reward == pytest.approx(float(expected)) and terminated and info["outcome"] == "full"


def test_region_reward_is_the_reward_library_on_the_crop(env, tiny_scorer, pools):
    _, info0 = env.reset(options={"query_index": 1})
    box = np.array([0.25, 0.1, 0.75, 0.6])
    _, reward, terminated, _, info = env.step(region(box))
    image = Image.open(pools[1].image).convert("RGB")
    image_box = view_box_to_image(box, (0, 0, image.width, image.height))
    np.testing.assert_allclose(info["box"], [40, 12, 120, 72])
    np.testing.assert_allclose(info["box"], image_box)
    crop_scores = tiny_scorer.score([crop(image, image_box)], pools[1])[0]
    positives = pools[1].positives
    expected = region_reward(ranking_stats(info0["baseline_scores"], positives), ranking_stats(crop_scores, positives))
    assert reward == pytest.approx(float(expected.reward), abs=1e-5)
    assert info["reward_terms"]["d_margin"] == pytest.approx(float(expected.d_margin), abs=1e-5)
    assert terminated and info["view"].size == (80, 60)


@pytest.mark.parametrize(
    "action, kind",
    [
        (region([0.5, 0.5, 0.5, 0.9]), "invalid_box"),  # zero width
        (region([0.9, 0.1, 0.2, 0.8]), "invalid_box"),  # inverted
        (region([1.2, 1.1, 1.5, 1.4]), "invalid_box"),  # outside the view: empty after clamping
        (region([np.nan, 0, 1, 1]), "malformed"),
        ({"decision": 7, "box": np.zeros(4)}, "malformed"),
        ("crop the left half", "malformed"),
        (MalformedAction("no box", "blah"), "malformed"),
    ],
)
def test_bad_actions_are_penalties_not_crashes(env, action, kind):
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step(action)
    config = RewardConfig()
    assert info["outcome"] == kind and terminated
    assert reward == (config.invalid_box_penalty if kind == "invalid_box" else config.malformed_penalty)
    assert info["reason"]


def test_out_of_view_box_is_clamped(env):
    env.reset(options={"query_index": 0})
    _, _, _, _, info = env.step(region([-0.5, -0.2, 0.5, 1.3]))
    assert info["outcome"] == "region"
    np.testing.assert_allclose(info["box"], [0, 0, 80, 120])


def test_malformed_as_full_option(pools, tiny_scorer):
    env = RegionRerankEnv(pools, tiny_scorer, reward=RewardConfig(malformed_as_full=True))
    _, info = env.reset(options={"query_index": 0})
    _, reward, _, _, info = env.step(MalformedAction("unparseable", "???"))
    assert info["outcome"] == "full"
    assert reward == float(full_reward(ranking_stats(info["baseline_scores"], env.pool.positives)))


def test_multi_step_zoom_composes_views(pools, tiny_scorer):
    env = RegionRerankEnv(pools, tiny_scorer, max_steps=3, reward_mode="terminal")
    obs, _ = env.reset(options={"query_index": 2})
    obs, r1, term1, _, info1 = env.step(region([0.5, 0.5, 1.0, 1.0]))
    assert (r1, term1, obs["step"]) == (0.0, False, 1)
    np.testing.assert_allclose(info1["view_box"], [80, 60, 160, 120])
    obs, r2, term2, _, info2 = env.step(region([0.0, 0.0, 0.5, 0.5]))
    np.testing.assert_allclose(info2["box"], [80, 60, 120, 90])  # nested in the first crop
    assert (r2, term2) == (0.0, False)
    _, r3, term3, _, info3 = env.step(FULL_ACTION)  # stop: paid against the FULL baseline
    positives = pools[2].positives
    expected = region_reward(ranking_stats(info3["baseline_scores"], positives), ranking_stats(info2["scores"], positives))
    assert term3 and info3["outcome"] == "stop" and r3 == pytest.approx(float(expected.reward), abs=1e-6)


def test_multi_step_ends_at_max_steps_and_incremental_mode(pools, tiny_scorer):
    env = RegionRerankEnv(pools, tiny_scorer, max_steps=2, reward_mode="incremental")
    _, info0 = env.reset(options={"query_index": 0})
    _, r1, term1, _, info1 = env.step(region([0.0, 0.0, 0.8, 0.8]))
    _, r2, term2, _, info2 = env.step(region([0.1, 0.1, 0.9, 0.9]))
    positives = pools[0].positives
    stats = [ranking_stats(i["scores"], positives) for i in (info0, info1, info2)]
    assert not term1 and term2
    assert r1 == pytest.approx(float(region_reward(stats[0], stats[1]).reward), abs=1e-6)
    assert r2 == pytest.approx(float(region_reward(stats[1], stats[2]).reward), abs=1e-6)


def test_score_actions_is_one_batch_and_equals_step(pools, make_tiny_scorer):
    env = RegionRerankEnv(pools, make_tiny_scorer(invariance="padded"))  # padded: the group is one forward
    env.reset(options={"query_index": 1})
    rng = np.random.default_rng(0)
    lo = rng.uniform(0, 0.5, size=(8, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0.2, 0.5, size=(8, 2))], axis=1)
    actions = [region(b) for b in boxes] + [FULL_ACTION, "garbage"]
    forwards = env.scorer.stats.image_forwards
    outcomes = env.score_actions(actions)
    assert env.scorer.stats.image_forwards == forwards + 1
    for action, outcome in zip(actions, outcomes):
        env.reset(options={"query_index": 1})
        _, reward, _, _, info = env.step(action)
        assert (reward, info["outcome"]) == (pytest.approx(outcome.reward, abs=1e-6), outcome.kind)


def test_a_step_costs_one_image_and_scores_bitwise_like_score_actions(pools, make_tiny_scorer):
    """CPU default: one-row forwards, so a step embeds one image (not a padded batch), and
    what it pays is bitwise what the batched ``score_actions`` predicted."""
    env = RegionRerankEnv(pools, make_tiny_scorer())
    env.reset(options={"query_index": 2})
    actions = [region([0.1 * i, 0.05, 0.4 + 0.1 * i, 0.7]) for i in range(5)]
    group = env.score_actions(actions)
    for action, outcome in zip(actions, group):
        env.reset(options={"query_index": 2})
        rows = env.scorer.stats.image_rows
        _, reward, _, _, info = env.step(action)
        assert env.scorer.stats.image_rows == rows + 1
        np.testing.assert_array_equal(info["scores"], outcome.scores)
        assert reward == outcome.reward


def test_information_gap_downscales_only_what_the_policy_sees(pools, tiny_scorer):
    env = RegionRerankEnv(pools, tiny_scorer, policy_max_side=40)
    _, info = env.reset(options={"query_index": 0})
    assert info["policy_image"].size == (40, 30)
    assert info["view"].size == (160, 120)
    _, _, _, _, info = env.step(region([0, 0, 0.5, 0.5]))
    assert info["view"].size == (80, 60)  # cut and scored at full resolution


def test_render_draws_on_the_query_image(pools, tiny_scorer):
    env = RegionRerankEnv(pools, tiny_scorer, max_steps=2, render_mode="rgb_array")
    env.reset(options={"query_index": 0})
    before = env.render()
    env.step(region([0.2, 0.2, 0.7, 0.7]))
    after = env.render()
    assert before.shape == after.shape == (120, 160, 3) and before.dtype == np.uint8
    assert not np.array_equal(before, after)  # the crop rectangle is drawn


def test_constructor_rejects_bad_arguments(pools, tiny_scorer):
    with pytest.raises(ValueError, match="max_steps"):
        RegionRerankEnv(pools, tiny_scorer, max_steps=0)
    with pytest.raises(ValueError, match="reward_mode"):
        RegionRerankEnv(pools, tiny_scorer, reward_mode="sometimes")
    with pytest.raises(ValueError, match="no query pools"):
        RegionRerankEnv([], tiny_scorer)


def test_flat_box_wrapper(pools, tiny_scorer):
    env = FlatBoxAction(RegionRerankEnv(pools, tiny_scorer), encoding="corners")
    assert env.action_space.shape == (5,)
    env.reset(options={"query_index": 0})
    _, _, _, _, info = env.step(np.array([0.9, 0.0, 0.0, 0.5, 0.5], np.float32))
    assert info["outcome"] == "region"
    np.testing.assert_allclose(info["box"], [0, 0, 80, 60])
    env.reset(options={"query_index": 0})
    assert env.step(np.array([0.1, 0, 0, 0, 0], np.float32))[4]["outcome"] == "full"
    env.reset(options={"query_index": 0})
    assert env.step(np.zeros(3, np.float32))[4]["outcome"] == "malformed"


def test_text_wrapper_reads_qwen_boxes_in_the_resized_frame(pools, tiny_scorer):
    env = TextAction(RegionRerankEnv(pools, tiny_scorer))
    _, info = env.reset(options={"query_index": 0})
    resized = qwen_resized_size(160, 120)
    assert env.resized_size() == resized
    x1, y1, x2, y2 = from_norm([0.25, 0.5, 0.75, 1.0], "resized", (160, 120), resized).round().astype(int)
    text = f'<tool_call>{{"name": "image_zoom_in_tool", "arguments": {{"bbox_2d": [{x1}, {y1}, {x2}, {y2}]}}}}</tool_call>'
    _, _, _, _, info = env.step(text)
    assert info["outcome"] == "region"
    np.testing.assert_allclose(info["box"], [40, 60, 120, 120], atol=160 / resized[0])
    env.reset(options={"query_index": 0})
    assert env.step("NO_CROP_NEEDED")[4]["outcome"] == "full"
    env.reset(options={"query_index": 0})
    _, reward, _, _, info = env.step("I would crop around the red thing")
    assert info["outcome"] == "malformed" and reward == RewardConfig().malformed_penalty


def test_expand_box_adds_context_and_stays_in_the_image():
    # margin x the longer side (40 px) on every side, clamped to the 100 x 100 image
    assert expand_box((10, 20, 30, 60), 0.25, 100, 100).tolist() == [0.0, 10.0, 40.0, 70.0]
    assert expand_box((80, 80, 100, 100), 0.5, 100, 100).tolist() == [70.0, 70.0, 100.0, 100.0]


@pytest.mark.parametrize("horizontal, vertical", [(True, False), (False, True), (True, True)])
def test_a_mirrored_box_crops_the_mirror_image_of_the_crop(horizontal, vertical):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8))
    mirrored = image
    for flip, transpose in ((horizontal, Image.Transpose.FLIP_LEFT_RIGHT), (vertical, Image.Transpose.FLIP_TOP_BOTTOM)):
        mirrored = mirrored.transpose(transpose) if flip else mirrored
    box = np.array([0.1, 0.25, 0.6, 0.5])
    view = (0.0, 0.0, 80.0, 60.0)
    expected = crop(image, view_box_to_image(box, view))
    for flip, transpose in ((horizontal, Image.Transpose.FLIP_LEFT_RIGHT), (vertical, Image.Transpose.FLIP_TOP_BOTTOM)):
        expected = expected.transpose(transpose) if flip else expected
    got = crop(mirrored, view_box_to_image(mirror_norm_box(box, horizontal, vertical), view))
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
    np.testing.assert_allclose(mirror_norm_box(mirror_norm_box(box, horizontal, vertical), horizontal, vertical), box)


# --- wrapper stacks are Gymnasium citizens -------------------------------------------------

WRAPPER_STACKS = {
    "FlatBoxAction": lambda env: FlatBoxAction(env),
    "TextAction": lambda env: TextAction(env),
    "HashedQuestion": lambda env: HashedQuestion(env),
    "FlatBoxAction(HashedQuestion)": lambda env: FlatBoxAction(HashedQuestion(env)),
}


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")  # checking the stack is the point
@pytest.mark.parametrize("stack", WRAPPER_STACKS)
def test_wrapper_stacks_pass_check_env_and_rebuild_from_their_spec(pools, tiny_scorer, stack):
    wrapped = WRAPPER_STACKS[stack](gym.make("RegionRerank-v0", dataset=pools, scorer=tiny_scorer, obs_size=32))
    check_env(wrapped)
    names = [w.name for w in wrapped.spec.additional_wrappers]
    assert names == [part.rstrip(")") for part in reversed(stack.split("("))]
    rebuilt = gym.make(wrapped.spec)
    assert str(rebuilt) == str(wrapped)
    assert rebuilt.unwrapped.scorer is tiny_scorer  # the frozen scorer is shared, not deep-copied
    obs, _ = rebuilt.reset(seed=3)
    expected, _ = wrapped.reset(seed=3)
    assert rebuilt.observation_space.contains(obs)
    np.testing.assert_array_equal(obs["image"], expected["image"])


# --- batch invariance -------------------------------------------------------------------------


def test_scores_do_not_depend_on_the_batch_or_the_cache(pools, make_tiny_scorer):
    """The bound the docstrings state is 1e-6; the fixed-shape forwards make it exact."""
    env = RegionRerankEnv(pools, make_tiny_scorer())
    env.reset(options={"query_index": 1})
    rng = np.random.default_rng(5)
    lo = rng.uniform(0, 0.5, size=(11, 2))
    actions = [region(np.concatenate([c, c + rng.uniform(0.2, 0.5, size=2)])) for c in lo]
    group = [o.scores for o in env.score_actions(actions)]
    for k in (1, 2, 3, 5):  # other group sizes and mates
        for i, outcome in zip(range(k), env.score_actions(actions[-k:])):
            assert np.abs(outcome.scores - group[len(actions) - k + i]).max() <= 1e-6
            np.testing.assert_array_equal(outcome.scores, group[len(actions) - k + i])
    for action, scores in zip(actions, group):
        env.reset(options={"query_index": 1})
        np.testing.assert_array_equal(env.step(action)[4]["scores"], scores)
    # Candidates encoded in another order, after other pools were cached, embed the same.
    other = RegionRerankEnv(pools, make_tiny_scorer())
    for q in (4, 0, 2):
        other.reset(options={"query_index": q})
    _, info = other.reset(options={"query_index": 1})
    fresh = RegionRerankEnv(pools, make_tiny_scorer())
    np.testing.assert_array_equal(info["baseline_scores"], fresh.reset(options={"query_index": 1})[1]["baseline_scores"])


# --- exact multi-step frames ------------------------------------------------------------------


def test_zoom_views_are_the_whole_pixel_crops_the_policy_is_shown(pools, tiny_scorer):
    """A pixel box in the view the policy saw maps onto exactly those pixels, step after step."""
    env = TextAction(RegionRerankEnv(pools, tiny_scorer, max_steps=4, reward=RewardConfig(min_box_side=1)), frame="pixel")
    _, info = env.reset(options={"query_index": 2})
    original = np.asarray(Image.open(pools[2].image).convert("RGB"))
    view_box = np.array([0, 0, 160, 120])
    for x1, y1, x2, y2 in ([13, 7, 151, 110], [5, 3, 97, 71], [11, 2, 60, 39]):
        shown = np.asarray(info["view"])
        _, _, _, _, info = env.step(f"<box>{x1}, {y1}, {x2}, {y2}</box>")
        view_box = np.array([view_box[0] + x1, view_box[1] + y1, view_box[0] + x2, view_box[1] + y2])
        np.testing.assert_array_equal(info["view_box"], view_box)
        np.testing.assert_array_equal(np.asarray(info["view"]), shown[y1:y2, x1:x2])
        np.testing.assert_array_equal(np.asarray(info["view"]), original[view_box[1] : view_box[3], view_box[0] : view_box[2]])
        assert env.unwrapped.view_size == info["view"].size


def test_fractional_boxes_become_whole_pixel_views(pools, tiny_scorer):
    env = FlatBoxAction(RegionRerankEnv(pools, tiny_scorer, max_steps=3, reward=RewardConfig(min_box_side=1)), encoding="corners")
    _, info = env.reset(options={"query_index": 0})
    for box in ([0.333, 0.271, 0.811, 0.933], [0.05, 0.41, 0.77, 0.99]):
        previous = info["view_box"]
        w, h = previous[2] - previous[0], previous[3] - previous[1]
        _, _, _, _, info = env.step(np.array([1, *box]))
        vb = info["view_box"]
        assert np.all(vb == np.round(vb)) and info["view"].size == (vb[2] - vb[0], vb[3] - vb[1])
        exact = previous[:2].tolist() * 2 + np.array(box) * [w, h, w, h]
        assert np.all(vb[:2] <= exact[:2]) and np.all(vb[2:] >= exact[2:])  # rounded outwards
        assert np.all(np.abs(vb - exact) < 1)


# --- TextAction on views the resize rule refuses ---------------------------------------------


def test_text_action_on_an_extreme_aspect_ratio_view(pools, tiny_scorer, tmp_path):
    """Zoom into a 1000 x 1 px strip, which Qwen2.5-VL's resize rule refuses (aspect > 200):
    FULL stays FULL, junk stays malformed, a box is an invalid box; nothing raises."""
    wide = tmp_path / "wide.png"
    Image.new("RGB", (1000, 40), (90, 20, 200)).save(wide)
    pool = QueryPool("wide", "What is this?", wide, pools[0].candidates)
    env = TextAction(RegionRerankEnv([pool], tiny_scorer, max_steps=2, reward=RewardConfig(min_box_side=1)))
    strip = {"decision": REGION, "box": np.array([0.0, 0.5, 1.0, 0.5 + 1 / 40])}
    for text, kind in (
        ("NO_CROP_NEEDED", "stop"),
        ('<tool_call>{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0, 0, 10, 10]}}</tool_call>', "invalid_box"),
        ("I am not sure", "malformed"),
    ):
        env.reset(options={"query_index": 0})
        env.env.step(strip)  # the native action, under the text wrapper
        assert env.unwrapped.view_size == (1000.0, 1.0)
        with pytest.raises(ValueError, match="aspect ratio"):
            env.resized_size()
        _, reward, terminated, _, info = env.step(text)
        assert info["outcome"] == kind and terminated
        if kind == "invalid_box":
            assert reward == RewardConfig().invalid_box_penalty and "1000x1 view" in info["reason"]


def test_first_observation_is_resets_without_scoring(env):
    env.reset(options={"query_index": 0})
    obs, view_box = env.first_observation(2)
    assert env.pool is env.pools[0]  # the env's state is untouched
    expected, info = env.reset(options={"query_index": 2})
    assert np.array_equal(obs["image"], expected["image"]) and obs["question"] == expected["question"]
    assert np.array_equal(view_box, info["view_box"]) and obs["step"] == 0
    with pytest.raises(IndexError, match="query_index"):
        env.first_observation(len(env.pools))


def test_strict_raises_on_malformed_actions_and_invalid_boxes_naming_them(pools, tiny_scorer):
    from envs.region_rerank import StrictActionError

    env = RegionRerankEnv(pools, tiny_scorer, strict=True)
    for action, words in (({"decision": True, "box": [0, 0, 1, 1]}, "malformed action"),
                          (region([0.6, 0.6, 0.2, 0.2]), "invalid box")):
        env.reset(options={"query_index": 0})
        with pytest.raises(StrictActionError, match=words):
            env.step(action)
    env.reset(options={"query_index": 0})
    assert env.step(region([0.1, 0.1, 0.6, 0.6]))[4]["outcome"] == "region"  # valid actions step as before
    lenient = RegionRerankEnv(pools, tiny_scorer)
    lenient.reset(options={"query_index": 0})
    assert lenient.step({"decision": True, "box": [0, 0, 1, 1]})[4]["outcome"] == "malformed"
