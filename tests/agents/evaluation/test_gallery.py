"""The gallery and per_query.jsonl: which queries are shown, the picture, and replaying a row."""

import json

import numpy as np
import pytest
from PIL import Image

from agents.evaluation.baselines import CenterCropPolicy, FullPolicy, OraclePolicy, centered_box, region_action
from agents.evaluation.runner import evaluate_and_report, trace_episode
from agents.evaluation.gallery import (
    GAIN,
    GAP,
    KEPT_FULL,
    LOSS,
    PANEL_WIDTH,
    RANDOM,
    GalleryConfig,
    episode_from_row,
    gallery_filename,
    gallery_policies,
    per_query_row,
    read_per_query,
    replay,
    select_panels,
)
from envs.region_rerank import RegionRerankEnv
from rewards.evaluation import EpisodeRecord


def record(baseline: int, final: int, cropped: bool = True, pool: int = 20) -> EpisodeRecord:
    return EpisodeRecord("q", pool, True, baseline, final, 0.0, cropped, 0.0, 1, "region" if cropped else "full")


# Gains (by reciprocal rank): #1 (2->1) > #3 (10->2) > #0 (5->4); losses: #2 (1->3) worst, then #4 (6->8).
RECORDS = [record(5, 4), record(2, 1), record(1, 3), record(10, 2), record(6, 8)]
RECORDS += [record(r, r, cropped=False) for r in (1, 3, 7, 12)]  # #5-#8: kept FULL
RECORDS += [record(4, 4) for _ in range(6)]  # #9-#14: cropped, rank unchanged


def test_selection_takes_the_largest_gains_and_losses_in_order():
    panels = select_panels(RECORDS, GalleryConfig(gains=2, losses=2, kept_full=0, random=0))
    assert panels == [(GAIN, 1), (GAIN, 3), (LOSS, 2), (LOSS, 4)]


def test_selection_is_deterministic_covers_every_category_and_shows_a_query_once():
    config = GalleryConfig(gains=2, losses=1, kept_full=2, random=3, seed=7)
    panels = select_panels(RECORDS, config)
    assert panels == select_panels(RECORDS, config)  # same records, same seed: same gallery
    categories = [c for c, _ in panels]
    assert categories == [GAIN] * 2 + [LOSS] + [KEPT_FULL] * 2 + [RANDOM] * 3
    assert all(5 <= i <= 8 for c, i in panels if c == KEPT_FULL)
    assert len({i for _, i in panels}) == len(panels) == config.size
    other_seeds = {tuple(select_panels(RECORDS, GalleryConfig(random=3, seed=s))) for s in range(10)}
    assert len(other_seeds) > 1  # the seed does move the random sample


def test_unfilled_categories_go_to_the_random_sample():
    always_crops = [r for r in RECORDS if r.cropped]
    panels = select_panels(always_crops, GalleryConfig(gains=1, losses=1, kept_full=3, random=1))
    assert [c for c, _ in panels] == [GAIN, LOSS] + [RANDOM] * 4
    assert len(select_panels(RECORDS[:3], GalleryConfig())) == 3  # never more panels than queries


def test_gallery_draws_the_learned_policies_else_a_cropping_baseline():
    baselines = ["full", "center-0.5", "annotated", "oracle"]
    fallbacks = ["center-0.5", "annotated"]
    assert gallery_policies(baselines + ["trained", "vlm"], baselines, fallbacks, GalleryConfig()) == ["trained", "vlm"]
    assert gallery_policies(baselines, baselines, fallbacks, GalleryConfig()) == ["center-0.5"]
    assert gallery_policies(["full"], ["full"], [], GalleryConfig()) == ["full"]
    assert gallery_policies(baselines, baselines, fallbacks, GalleryConfig(policies=("oracle",))) == ["oracle"]
    with pytest.raises(ValueError, match="not evaluated"):
        gallery_policies(baselines, baselines, fallbacks, GalleryConfig(policies=("trained",)))
    assert gallery_filename("trained", main=True) == "gallery.png"
    assert gallery_filename("zero-shot VLM", main=False) == "gallery_zero-shot_VLM.png"


def learned(obs, info, env):
    """A stand-in for a trained policy (not a baseline): crop the centre half."""
    return region_action(centered_box(0.5))


@pytest.fixture(scope="module")
def evaluated(scene_pools, tiny_scorer, tmp_path_factory):
    """The scene queries evaluated with FULL, the oracle and two non-baseline policies."""
    out = tmp_path_factory.mktemp("eval")
    env = RegionRerankEnv(scene_pools, tiny_scorer)
    policies = {"full": FullPolicy(), "oracle": OraclePolicy(), "learned": learned, "centre": CenterCropPolicy(0.4)}
    config = GalleryConfig(gains=1, losses=1, kept_full=1, random=0, columns=10)
    evaluate_and_report(env, policies, range(len(scene_pools)), out, "scenes", config, progress=False)
    return out, policies


def test_every_evaluation_writes_a_gallery_with_one_panel_per_selected_query(evaluated):
    out, _ = evaluated
    # "learned" is the main policy; "centre" is a baseline only by type, not by name
    assert (out / "gallery.png").exists() and not (out / "gallery_learned.png").exists()
    gallery = Image.open(out / "gallery.png")
    assert gallery.width == 3 * (PANEL_WIDTH + GAP)  # 3 panels, all in one row of 10 columns
    assert not (out / "gallery_centre.png").exists() and not (out / "gallery_full.png").exists()


def test_per_query_rows_round_trip_and_replay_the_same_episode(evaluated, scene_pools, tiny_scorer):
    out, policies = evaluated
    rows = read_per_query(out / "per_query.jsonl")
    assert len(rows) == len(policies) * len(scene_pools)
    assert {r["policy"] for r in rows} == set(policies)
    for row in rows:
        assert json.loads(json.dumps(per_query_row(*episode_from_row(row)))) == row

    env = RegionRerankEnv(scene_pools, tiny_scorer, render_mode="rgb_array")
    row = next(r for r in rows if r["policy"] == "learned" and r["query_id"] == scene_pools[2].query_id)
    assert row["decision"] == "REGION" and len(row["box"]) == 4
    info = replay(env, row)
    assert info["rank"] == row["final_rank"] and info["baseline_rank"] == row["baseline_rank"]
    np.testing.assert_allclose(env.view_box, row["box"], atol=1e-4)
    replayed = env.render()
    trace_episode(env, learned, 2)  # the episode as evaluation played it
    np.testing.assert_array_equal(replayed, env.render())

    kept = next(r for r in rows if r["policy"] == "full")
    assert kept["decision"] == "FULL" and kept["box"] is None and kept["views"] == []
    assert replay(env, kept)["rank"] == kept["final_rank"]


def test_multi_step_zoom_records_and_replays_the_chain_of_views(scene_pools, tiny_scorer, tmp_path):
    env = RegionRerankEnv(scene_pools, tiny_scorer, max_steps=2)
    record_, trace = trace_episode(env, learned, 1)
    assert trace.decisions == ("REGION", "REGION") and len(trace.views) == 2
    (ax1, ay1, ax2, ay2), (bx1, by1, bx2, by2) = trace.views
    assert ax1 <= bx1 and ay1 <= by1 and bx2 <= ax2 and by2 <= ay2  # the second view zooms into the first
    assert replay(env, per_query_row("learned", record_, trace))["rank"] == record_.final_rank
    evaluate_and_report(env, {"learned": learned}, range(3), tmp_path, "scenes", progress=False)
    assert (tmp_path / "gallery.png").stat().st_size > 0


def test_a_given_oracle_run_spares_playing_the_oracle_again(scene_pools, tiny_scorer, tmp_path, monkeypatch):
    import agents.evaluation.runner as evaluation
    from agents.evaluation.runner import trace_policy

    env = RegionRerankEnv(scene_pools, tiny_scorer)
    oracle = trace_policy(env, OraclePolicy(), range(4), progress=False)

    class Unplayable(OraclePolicy):
        def __call__(self, obs, info, env):
            raise AssertionError("the gallery played the oracle although its episodes were given")

    monkeypatch.setattr(evaluation, "OraclePolicy", Unplayable)
    evaluate_and_report(env, {"learned": learned}, range(4), tmp_path, "scenes", oracle=oracle, progress=False)
    assert (tmp_path / "gallery.png").exists()


def test_gallery_config_refuses_negative_counts():
    with pytest.raises(ValueError, match="losses"):
        GalleryConfig(losses=-1)
