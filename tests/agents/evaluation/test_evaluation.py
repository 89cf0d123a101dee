"""Evaluation: the metric aggregation, the baselines, and the evaluate recipe end to end."""

import json

import numpy as np
import pytest

from agents.evaluation.baselines import (
    AnnotatedBoxPolicy,
    CenterCropPolicy,
    FullPolicy,
    OraclePolicy,
    RandomCropPolicy,
    baseline_policies,
    centered_box,
    grid_boxes,
)
from agents.evaluation.runner import evaluate_policy
from envs.region_rerank import RegionRerankEnv
from rewards.evaluation import EpisodeRecord, rank_bucket, summarize_episodes
import tyro

from envs.settings import ScorerSettings

def record(baseline, final, cropped, has_positive=True, pool=20, reward=0.0) -> EpisodeRecord:
    return EpisodeRecord("q", pool, has_positive, baseline, final, 0.0, cropped, reward, 1, "x")


def test_summary_hand_computed():
    records = [
        record(1, 1, False, reward=1.0),
        record(4, 2, True, reward=0.5),
        record(8, 6, True),
        record(21, 21, True, has_positive=False),  # positive not in the pool
    ]
    s = summarize_episodes(records)
    assert s["MRR"] == pytest.approx((1 + 1 / 2 + 1 / 6 + 0) / 4)
    assert s["R@1"] == 0.25 and s["R@5"] == 0.5
    assert s["CondR@1"] == pytest.approx(1 / 3)  # over the three queries with a positive
    assert s["RC"] == 0.75
    assert (s["RC[1]"], s["RC[2-5]"], s["RC[6-10]"], s["RC[absent]"]) == (0.0, 1.0, 1.0, 1.0)
    assert np.isnan(s["RC[11-K]"]) and s["n[11-K]"] == 0
    assert s["improved"] == 0.5 and s["worsened"] == 0.0 and s["reward"] == pytest.approx(0.375)


def test_rank_buckets():
    assert [rank_bucket(r, 20) for r in (1, 2, 5, 6, 10, 11, 20, 21)] == [
        "1", "2-5", "2-5", "6-10", "6-10", "11-K", "11-K", "absent"
    ]


def test_box_helpers():
    np.testing.assert_allclose(centered_box(0.5), [0.25, 0.25, 0.75, 0.75])
    boxes = grid_boxes(scales=(0.5,), steps=3)
    assert boxes.shape == (9, 4) and boxes.min() == 0.0 and boxes.max() == 1.0
    with pytest.raises(ValueError, match="scale"):
        centered_box(0.0)


def test_baselines_do_what_they_say(scene_pools, tiny_scorer):
    env = RegionRerankEnv(scene_pools, tiny_scorer)
    obs, info = env.reset(options={"query_index": 0})
    assert FullPolicy()(obs, info, env)["decision"] == 0
    np.testing.assert_allclose(CenterCropPolicy(0.5)(obs, info, env)["box"], [0.25, 0.25, 0.75, 0.75])
    x1, y1, x2, y2 = scene_pools[0].box
    np.testing.assert_allclose(AnnotatedBoxPolicy()(obs, info, env)["box"], [x1 / 160, y1 / 120, x2 / 160, y2 / 120], atol=1e-6)
    a, b = RandomCropPolicy(seed=3), RandomCropPolicy(seed=3)
    np.testing.assert_array_equal(a(obs, info, env)["box"], b(obs, info, env)["box"])


def test_baseline_policies_without_names_are_those_the_env_can_run(scene_pools, tiny_scorer):
    from envs.settings import EnvSettings

    env = RegionRerankEnv(scene_pools, tiny_scorer)
    names = ["full", "center-0.5", "random", "annotated", "oracle"]
    assert list(baseline_policies(env=env)) == list(baseline_policies()) == names
    assert list(baseline_policies(env=EnvSettings(max_regions=2))) == names + ["oracle-2box"]
    assert list(baseline_policies(env=EnvSettings(search=True))) == names + ["search-full", "search-annotated", "oracle-search"]
    for name, policy in baseline_policies(env=env).items():  # each runs on the env it was chosen for
        obs, info = env.reset(options={"query_index": 0})
        env.step(policy(obs, info, env))


def test_oracle_is_an_upper_bound_of_every_baseline(scene_pools, tiny_scorer):
    env = RegionRerankEnv(scene_pools, tiny_scorer)
    rewards = {}
    for policy in (FullPolicy(), CenterCropPolicy(), AnnotatedBoxPolicy(), OraclePolicy()):
        _, records = evaluate_policy(env, policy, progress=False)
        rewards[type(policy).__name__] = np.array([r.reward for r in records])
    for name, values in rewards.items():
        assert np.all(rewards["OraclePolicy"] >= values - 1e-9), name


def test_evaluate_recipe_end_to_end(scene_pool_files, tiny_model_name, tiny_checkpoint, tmp_path, load_recipe):
    recipe = load_recipe("evaluate")
    args = recipe.Args(
        data=scene_pool_files["val"], scorer=ScorerSettings(tiny_model_name, str(tiny_checkpoint)), out=tmp_path
    )
    summaries = recipe.main(args)
    assert list(summaries) == ["full", "center-0.5", "random", "annotated", "oracle"]
    assert summaries["full"]["RC"] == 0.0 and summaries["center-0.5"]["RC"] == 1.0
    assert summaries["oracle"]["reward"] >= max(s["reward"] for s in summaries.values())
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["summaries"]["full"]["MRR"] == summaries["full"]["MRR"]
    assert len(saved["records"]["oracle"]) == 6
    assert "| full |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "rc_by_bucket.png").stat().st_size > 0 and (tmp_path / "rank_before_after.png").exists()
    # baselines only: the gallery shows the first cropping baseline; one row per policy and query
    assert (tmp_path / "gallery.png").stat().st_size > 0 and not list(tmp_path.glob("gallery_*.png"))
    rows = [json.loads(line) for line in (tmp_path / "per_query.jsonl").read_text().splitlines()]
    assert len(rows) == 5 * 6 and {r["policy"] for r in rows} == set(summaries)


@pytest.mark.parametrize("name", ["evaluate", "bench_env", "generate_benchmark"])
def test_recipes_refuse_scorer_weights_without_a_model(name, load_recipe, capsys):
    recipe = load_recipe(name)
    extra = ["--out", "x"] if name == "generate_benchmark" else []
    with pytest.raises(SystemExit):
        tyro.cli(recipe.Args, args=["--scorer.pretrained", "w.pt", *extra])
    assert "pretrained= needs a model name" in capsys.readouterr().err


def test_search_summary_hand_computed():
    from rewards.evaluation import SearchRecord, summarize_search

    s = summarize_search([SearchRecord("a", True, True, 0, None), SearchRecord("b", False, True, 1, 1.0),
                          SearchRecord("c", True, False, 1, 0.0), SearchRecord("d", False, False, 0, None)])
    assert (s["cov_before"], s["cov_after"], s["searched"], s["KB-R@K"]) == (0.5, 0.5, 0.5, 0.5)


def test_search_and_multi_region_baselines(scene_pools, make_tiny_scorer, tmp_path):
    from agents.evaluation.baselines import SearchAnnotatedPolicy, SearchFullPolicy, TwoBoxOraclePolicy
    from agents.evaluation.runner import evaluate_and_report
    from envs.data.kb_index import KbItem, KnowledgeBaseIndex

    scorer = make_tiny_scorer(candidate_features="image")
    items = [KbItem(c.id, c.image, c.text) for c in scene_pools[0].candidates]
    index = KnowledgeBaseIndex.build(items, scorer, "image", progress=False, num_workers=0)
    plain = RegionRerankEnv(scene_pools, scorer, obs_size=32)
    for policy in (SearchFullPolicy(), SearchAnnotatedPolicy(), OraclePolicy(search=True)):
        plain.reset(options={"query_index": 0})
        with pytest.raises(ValueError, match="needs an env with search=True"):
            policy({}, {}, plain)
    with pytest.raises(ValueError, match="max_regions >= 2"):
        TwoBoxOraclePolicy()({}, {}, plain)
    env = RegionRerankEnv(scene_pools, scorer, kb_index=index, search=True, max_regions=2, obs_size=32)
    boxes = grid_boxes(scales=(0.4, 0.7), steps=2)
    policies = {"oracle": OraclePolicy(boxes), "oracle-search": OraclePolicy(boxes, search=True),
                "oracle-2box": TwoBoxOraclePolicy(boxes), "search-full": SearchFullPolicy()}
    from agents.evaluation.gallery import GalleryConfig

    summaries = evaluate_and_report(env, policies, range(len(scene_pools)), tmp_path, "scenes",
                                    GalleryConfig(draw=False), progress=False)
    # each oracle chooses among a superset of the plain oracle's actions
    assert summaries["oracle-search"]["reward"] >= summaries["oracle"]["reward"] - 1e-9
    assert summaries["oracle-2box"]["reward"] >= summaries["oracle"]["reward"] - 1e-9
    assert summaries["search-full"]["searched"] == 1.0 and summaries["oracle"]["searched"] == 0.0
    # the whole KB is the pool here: a search always covers the positive, except for the query without one
    assert summaries["search-full"]["cov_after"] == pytest.approx(5 / 6) and summaries["search-full"]["KB-R@K"] == pytest.approx(5 / 6)
    assert "cov_before" in (tmp_path / "results.md").read_text()
