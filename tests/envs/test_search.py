"""SEARCH (re-retrieval from the KB index) and multi-region views in RegionRerankEnv.

The world: a KB of the six colour entities of the scene pools plus one entity whose image
IS query q0's image (so a FULL search finds it first), and pools of 3 candidates cut from
the scene pools. q0's pool lacks its gold entity; q1's pool keeps its own labels.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs.data.pools import Candidate, QueryPool, load_image, write_query_pools
from envs.factory import make_env
from envs.data.kb_index import KbItem, KnowledgeBaseIndex, write_kb_file
from envs.region_rerank import RegionRerankEnv
from envs.scorers.openclip import combine_features
from envs.settings import EnvSettings

FULL = {"decision": 0, "box": np.zeros(4, np.float32)}
K = 3


def full_search(**extra) -> dict:
    return {"decision": 0, "box": np.zeros(4, np.float32), "search": 1, **extra}


def region(box, **extra) -> dict:
    return {"decision": 1, "box": np.asarray(box, np.float32), **extra}


@pytest.fixture(scope="module")
def image_scorer(make_tiny_scorer):
    return make_tiny_scorer(candidate_features="image")


@pytest.fixture(scope="module")
def world(tmp_path_factory, scene_pools, image_scorer):
    root = tmp_path_factory.mktemp("search-world")
    colours = scene_pools[0].candidates
    items = [KbItem(c.id, c.image, c.text) for c in colours]
    items.append(KbItem("gold-q0", scene_pools[0].image, "the scene of query zero"))
    kb_file = write_kb_file(items, root / "kb.jsonl")
    q0, q1 = scene_pools[0], scene_pools[1]
    pools = [
        QueryPool("q0", q0.question, q0.image, tuple(Candidate(c.id, False, c.image, c.text) for c in colours[:K]),
                  q0.box, gold_ids=("gold-q0",), kb=kb_file),
        QueryPool("q1", q1.question, q1.image, tuple(q1.candidates[:K]), q1.box, kb=kb_file),
    ]
    index = KnowledgeBaseIndex.build(items, image_scorer, "image", progress=False, num_workers=0)
    return {"root": root, "kb_file": kb_file, "pools": pools, "index": index, "items": items}


def make(world, scorer, **settings) -> RegionRerankEnv:
    return RegionRerankEnv(world["pools"], scorer, kb_index=world["index"], obs_size=32, **{"search": True, **settings})


def test_full_search_recovers_a_missing_positive_and_pays_for_it(world, image_scorer):
    env = make(world, image_scorer, search_cost=0.0)
    _, info = env.reset(options={"query_index": 0})
    assert info["baseline_rank"] == K + 1 and not info["pool_has_positive"]  # the pool lacks gold-q0
    _, reward, terminated, _, info = env.step(full_search())
    assert terminated and info["outcome"] == "search" and info["searched"]
    assert info["pool_ids"][0] == "gold-q0" and info["rank"] == 1 and info["pool_has_positive"]
    assert info["search_recall"] == 1.0 and env.search_log[0]["has_positive"]
    # rank K+1 -> 1: dRank = log(K + 2) - log(2), and the reward is positive
    assert info["reward_terms"]["d_rank"] == pytest.approx(np.log(K + 2) - np.log(2))
    assert info["reward_terms"]["d_mrr"] == pytest.approx(1.0) and reward > 0


def test_new_pool_is_the_index_top_k_of_the_view_ranked_on_index_vectors(world, image_scorer):
    env = make(world, image_scorer)
    env.reset(options={"query_index": 1})
    box = np.array([0.1, 0.1, 0.7, 0.8])
    outcome = env.score_actions([region(box, search=1)])[0]
    crop_embedding = image_scorer.embed_images([outcome.view])
    ids, _ = world["index"].search(crop_embedding, K)
    assert outcome.search.ids == tuple(ids[0])
    rows = world["index"].rows_of(ids[0])
    expected = np.asarray(world["index"].vectors, np.float64)[rows] @ crop_embedding[0].astype(np.float64)
    np.testing.assert_allclose(outcome.scores, expected, atol=1e-6)


class OwnPoolOnly:
    """A scorer client like the verl agent loop's: it serves only its own query's pool."""

    def __init__(self, scorer, pool):
        self.scorer, self.pool, self.name = scorer, pool, scorer.name

    def embed_images(self, images):
        return self.scorer.embed_images(images)

    def candidate_embeddings(self, pool):
        if pool.query_id != self.pool.query_id:
            raise AssertionError(f"asked for another pool's candidates ({pool.query_id})")
        return self.scorer.candidate_embeddings(pool)


def test_search_needs_no_candidate_embeddings_from_the_scorer(world, image_scorer):
    pool = world["pools"][0]
    env = RegionRerankEnv([pool], OwnPoolOnly(image_scorer, pool), kb_index=world["index"], search=True, obs_size=32)
    env.reset(options={"query_index": 0})
    _, _, _, _, info = env.step(full_search())
    assert info["rank"] == 1
    # a text rewrite with a scorer that has no text tower: the search runs on the view, and says so
    env.reset(options={"query_index": 0})
    _, _, _, _, info = env.step(full_search(query="a red square"))
    assert info["searched"] and "text rewrite not used" in info["reason"]


def test_a_text_rewrite_is_combined_with_the_view_for_retrieval_only(world, image_scorer):
    env = make(world, image_scorer)
    obs, _ = env.reset(options={"query_index": 1})
    query = "colour 3"
    outcome = env.score_actions([full_search(query=query)])[0]
    view = image_scorer.embed_images([env.view])[0]
    combined = combine_features([view, image_scorer.embed_texts([query])[0]])
    ids, _ = world["index"].search(combined, K)
    assert outcome.search.ids == tuple(ids[0])
    rows = world["index"].rows_of(ids[0])
    np.testing.assert_allclose(outcome.scores, np.asarray(world["index"].vectors, np.float64)[rows] @ view, atol=1e-6)


def test_positives_come_from_the_data_never_from_the_index(world, image_scorer):
    pools = [dataclasses.replace(world["pools"][0], gold_ids=None)]
    env = RegionRerankEnv(pools, image_scorer, kb_index=world["index"], search=True, obs_size=32)
    env.reset(options={"query_index": 0})
    _, _, _, _, info = env.step(full_search())
    # gold-q0 is retrieved first, but nothing in the data names it gold: no positive
    assert info["pool_ids"][0] == "gold-q0" and not info["pool_has_positive"] and info["rank"] == K + 1


def test_search_cost_and_budget(world, image_scorer):
    free, paid = make(world, image_scorer, search_cost=0.0), make(world, image_scorer, search_cost=0.3)
    rewards = []
    for env in (free, paid):
        env.reset(options={"query_index": 1})
        rewards.append(env.step(full_search())[1])
    assert rewards[0] - rewards[1] == pytest.approx(0.3)
    env = make(world, image_scorer, max_steps=2, search_budget=1)
    env.reset(options={"query_index": 1})
    _, reward, terminated, _, info = env.step(region([0, 0, 1, 1], search=1))
    assert not terminated and reward == 0.0 and info["searches"] == 1
    _, reward, terminated, _, info = env.step(region([0.1, 0.1, 0.9, 0.9], search=1))
    assert terminated and info["outcome"] == "malformed" and "search budget of 1" in info["reason"]
    assert reward == env.settings.reward.malformed_penalty


def test_later_steps_rerank_the_new_pool_and_pay_the_final_ranking_against_the_original_full(world, image_scorer):
    env = make(world, image_scorer, max_steps=2, search_cost=0.1)
    _, info = env.reset(options={"query_index": 0})
    baseline = env.baseline_stats
    env.step(region([0, 0, 1, 1], search=1))  # search with the whole view, go on
    searched_pool = list(env.pool_ids)
    _, reward, terminated, _, info = env.step(region([0.0, 0.0, 0.9, 0.9]))
    assert terminated and info["pool_ids"] == searched_pool  # re-ranked, not re-retrieved
    from rewards import search_reward

    expected = search_reward(baseline, env.stats, 1, env.settings.reward, 0.1)
    assert reward == pytest.approx(float(expected.reward))


@pytest.mark.parametrize(
    "action, reason",
    [
        (full_search(search=1.0), "search 1.0 is not the integer 0 or 1"),
        (full_search(query=3), "query 3 is not a str"),
        (region([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1]]), "1 to 2 boxes"),
        (region([[0, 0, 0.5, 0.5]], count=2), "count 2 is more than the 1 boxes given"),
        (region([[0, 0, 0.5, 0.5], [0, 0, np.nan, 1]]), "1 to 2 boxes"),
    ],
)
def test_malformed_extended_actions_are_penalties_with_a_reason(world, image_scorer, action, reason):
    env = make(world, image_scorer, max_regions=2)
    env.reset(options={"query_index": 1})
    _, reward, terminated, _, info = env.step(action)
    assert terminated and info["outcome"] == "malformed" and reason in info["reason"]
    assert reward == env.settings.reward.malformed_penalty


def test_bad_index_arguments_are_clear_errors(world, image_scorer, make_tiny_scorer):
    with pytest.raises(ValueError, match="search=True needs a kb_index"):
        RegionRerankEnv(world["pools"], image_scorer, search=True)
    other = make_tiny_scorer(candidate_features="auto")
    with pytest.raises(ValueError, match="differ from the scorer's candidate embeddings"):
        RegionRerankEnv(world["pools"], other, kb_index=world["index"], search=True, obs_size=32).reset(
            options={"query_index": 1})
    with pytest.raises(ValueError, match="search_budget must be >= 1"):
        EnvSettings(search_budget=0)
    with pytest.raises(ValueError, match="max_regions must be in 1..16"):
        EnvSettings(max_regions=0)


def test_several_regions_fuse_into_one_view_in_one_scorer_call(world, make_tiny_scorer):
    scorer = make_tiny_scorer(candidate_features="image", invariance="padded")  # one call = one forward
    env = RegionRerankEnv(world["pools"], scorer, max_regions=2, obs_size=32)
    env.reset(options={"query_index": 1})
    a, b = np.array([0.0, 0.0, 0.5, 0.6]), np.array([0.4, 0.3, 1.0, 1.0])
    forwards = scorer.stats.image_forwards
    both, same = env.score_actions([region([a, b]), region([a, a])])
    assert scorer.stats.image_forwards == forwards + 1  # four crops (two distinct), one scorer call
    crops = [load_image(env.pool.image).crop(tuple(int(v) for v in box)) for box in both.image_boxes]
    fused = combine_features(scorer.embed_images(crops))
    np.testing.assert_allclose(both.scores, env.candidate_embeddings @ fused.astype(np.float64), atol=1e-6)
    single = env.score_actions([region(a)])[0]
    np.testing.assert_allclose(same.scores, single.scores, atol=1e-6)  # the mean of one region twice is that region
    assert both.terminated and both.image_boxes.shape == (2, 4)


def test_check_env_passes_with_the_options_on(world, image_scorer):
    for settings in ({"max_regions": 2}, {"search": True}, {"search": True, "max_regions": 3, "max_steps": 2}):
        env = RegionRerankEnv(world["pools"], image_scorer, kb_index=world["index"], obs_size=32, **settings)
        check_env(env, skip_render_check=True)
    assert env.action_space["box"].shape == (3, 4) and env.action_space["count"].n == 3


def test_with_the_options_off_spaces_info_and_rewards_are_the_papers(world, image_scorer):
    """Options off: the same action space, info keys and rewards as the env without the
    options; the extended envs pay an action without the new parts exactly the same."""
    paper = RegionRerankEnv(world["pools"], image_scorer, obs_size=32, max_steps=2)
    explicit = RegionRerankEnv(world["pools"], image_scorer, obs_size=32, max_steps=2, search=False, max_regions=1)
    assert set(paper.action_space.keys()) == {"decision", "box"} and paper.action_space["box"].shape == (4,)
    assert paper.action_space == explicit.action_space
    extended = [make(world, image_scorer, max_steps=2), make(world, image_scorer, max_steps=2, max_regions=2)]
    actions = [FULL, region([0.1, 0.1, 0.6, 0.7]), region([0.5, 0.5, 0.5, 0.5]), {"decision": 2}, "junk"]
    for q in range(2):
        obs, info = paper.reset(options={"query_index": q})
        assert set(info) == {"query_id", "question", "view", "policy_image", "view_box", "baseline_rank", "rank",
                             "baseline_scores", "scores", "has_positive"}
        expected = [o.reward for o in paper.score_actions(actions)]
        for env in extended:
            other, _ = env.reset(options={"query_index": q})
            assert (other["image"] == obs["image"]).all()
            assert [o.reward for o in env.score_actions(actions)] == expected
        first = paper.step(actions[1])
        for env in extended:
            step = env.step(actions[1])
            assert step[1:3] == first[1:3] and (step[0]["image"] == first[0]["image"]).all()
        assert paper.step(FULL)[1] == pytest.approx(extended[0].step(FULL)[1])


def test_make_env_builds_the_index_from_the_pools_kb(world, image_scorer):
    path = write_query_pools(world["pools"], world["root"] / "pools.jsonl")
    env = make_env(path, image_scorer, search=True, obs_size=32)
    assert env.kb_index.ids == [item.id for item in world["items"]] and env.kb_index.features == "image"
    env.reset(options={"query_index": 0})
    assert env.step(full_search())[4]["rank"] == 1
    plain = write_query_pools([QueryPool("x", "?", world["pools"][0].image, world["pools"][0].candidates)],
                              world["root"] / "plain.jsonl")
    with pytest.raises(ValueError, match="query 'x' names none"):
        make_env(plain, image_scorer, search=True)
