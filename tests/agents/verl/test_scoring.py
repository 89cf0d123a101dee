"""The batched scorer service (agents/verl/scoring.py): equality with the in-process env
under concurrency, dynamic batching, per-query sharing, and loud failure.

The scorer and the env are real (the tiny rr scorer of conftest); the service runs on its
own event-loop thread (:class:`LocalHost`), and one test hosts it as a Ray actor.
Tolerance: none in one process. The service's scorer is the in-process env's scorer (same
settings, a batch-invariant padded forward, the same torch threads), so scores, ranks and
rewards are compared bitwise. Across processes (the Ray actor) a forward's float32 summation
order follows the process's torch thread count, so scores agree to 1e-6.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time

import numpy as np
import pytest
from PIL import Image

from agents.verl.scoring import DynamicBatcher, EpisodeScorer, LocalHost, ScoringError, ScoringService
from agents.verl.settings import ScoringServiceSettings
from envs.actions import FULL, REGION
from envs.region_rerank import RegionRerankEnv
from envs.settings import EnvSettings


def random_actions(rng: np.random.Generator, steps: int) -> list[dict]:
    """An episode's actions: random boxes drawn per rollout, the last one sometimes FULL."""
    actions = []
    for _ in range(steps):
        size = rng.uniform(0.3, 0.9, size=2)
        corner = rng.uniform(0.0, 1.0 - size)
        actions.append({"decision": REGION, "box": np.concatenate([corner, corner + size]).astype(np.float32)})
    if rng.random() < 0.25:
        actions[-1] = {"decision": FULL, "box": np.zeros(4, np.float32)}
    return actions


def play(env: RegionRerankEnv, actions: list[dict]) -> list[tuple]:
    """What an episode's reset and steps return, as comparable values."""
    _, info = env.reset(options={"query_index": 0})
    record = [(info["baseline_rank"], info["baseline_scores"].tobytes())]
    for action in actions:
        _, reward, terminated, _, info = env.step(action)
        record.append((reward, info["rank"], info["scores"].tobytes(), info["outcome"]))
        if terminated:
            break
    return record


@pytest.fixture()
def host(make_tiny_scorer):
    hosts = []

    def make(**settings) -> LocalHost:
        hosts.append(LocalHost(make_tiny_scorer(), ScoringServiceSettings(**settings)))
        return hosts[-1]

    yield make
    for h in hosts:
        h.shutdown()


def test_concurrent_episodes_equal_the_in_process_env_bitwise_and_share_the_full(host, make_tiny_scorer, scene_pools):
    service = host(max_batch=64, max_wait_ms=50)
    rollouts = 12
    settings = EnvSettings(max_steps=2)
    rng = np.random.default_rng(0)
    plan = [(pool, random_actions(rng, int(rng.integers(1, 3)))) for pool in scene_pools for _ in range(rollouts)]
    assert len(plan) >= 64
    threads = concurrent.futures.ThreadPoolExecutor(len(plan))

    async def episode(pool, actions):
        scorer = await EpisodeScorer(service, pool).prepare()
        env = RegionRerankEnv([pool], scorer, settings=settings)
        return await asyncio.get_running_loop().run_in_executor(threads, play, env, actions)

    async def all_episodes():
        return await asyncio.gather(*(episode(pool, actions) for pool, actions in plan))

    served = asyncio.run(all_episodes())
    reference = make_tiny_scorer()
    for (pool, actions), got in zip(plan, served):
        assert got == play(RegionRerankEnv([pool], reference, settings=settings), actions), pool.query_id

    stats = service.call("stats").result(5)
    crops = sum(1 for record in served for step in record[1:] if step[3] == "region")
    # the FULL baseline and the candidates once per query, shared by its 12 rollouts
    assert stats["queries_prepared"] == len(scene_pools) and stats["prepare_calls"] == len(plan)
    candidate_images = {str(c.image) for pool in scene_pools for c in pool.candidates}  # cached by the scorer
    assert stats["images_encoded"] == len(scene_pools) + len(candidate_images) + crops
    # crops of concurrent episodes were encoded together
    assert max(stats["batch_images"]) > 8 and stats["batches"] < crops / 4
    threads.shutdown()


def test_batches_close_at_max_batch_and_after_max_wait(make_tiny_scorer, scene_pools):
    scorer = make_tiny_scorer(invariance="padded")  # the service's case: a batch is one forward (GPU)
    images = [Image.open(scene_pools[i % len(scene_pools)].image).convert("RGB") for i in range(20)]

    async def burst(max_batch, max_wait_s):
        batcher = DynamicBatcher(scorer.embed_images, concurrent.futures.ThreadPoolExecutor(1), max_batch, max_wait_s)
        out = await asyncio.gather(*(batcher.embed(f"q{i}", [image]) for i, image in enumerate(images)))
        await batcher.aclose()
        return batcher, np.concatenate(out)

    forwards = scorer.stats.image_forwards
    batcher, vectors = asyncio.run(burst(max_batch=8, max_wait_s=10.0))
    assert batcher.batch_images == [8, 8, 4]  # full batches at once; the rest after its wait
    assert scorer.stats.image_forwards - forwards == 3  # 8 rows per padded forward of the tiny scorer
    np.testing.assert_array_equal(vectors, scorer.embed_images(images))  # batch-invariant: bitwise

    start = time.perf_counter()
    batcher, _ = asyncio.run(burst(max_batch=64, max_wait_s=0.2))
    assert batcher.batch_images == [20] and time.perf_counter() - start < 5.0


def test_a_request_that_outlives_its_timeout_fails_naming_the_query(host, scene_pools):
    service = host(max_batch=1000, max_wait_ms=60_000, timeout_s=0.5)  # the batch would wait a minute
    start = time.perf_counter()
    with pytest.raises(ScoringError, match=rf"query {scene_pools[0].query_id!r}: prepare timed out after 0.5 s"):
        asyncio.run(EpisodeScorer(service, scene_pools[0]).prepare())
    assert time.perf_counter() - start < 5.0


def test_a_dead_service_fails_the_episode_naming_the_query(host, scene_pools):
    service = host(max_wait_ms=0, timeout_s=5)
    scorer = asyncio.run(EpisodeScorer(service, scene_pools[1]).prepare())
    env = RegionRerankEnv([scene_pools[1]], scorer)
    env.reset(options={"query_index": 0})  # served from what prepare fetched
    service.shutdown()
    start = time.perf_counter()
    with pytest.raises(ScoringError, match=rf"query {scene_pools[1].query_id!r}: embed failed.*shut down"):
        env.step({"decision": REGION, "box": np.array([0.1, 0.1, 0.8, 0.8], np.float32)})
    assert time.perf_counter() - start < 5.0


def test_bad_requests_fail_naming_the_query(host, scene_pools, tmp_path):
    service = host(max_wait_ms=0, timeout_s=5)
    pool = scene_pools[2]
    scorer = asyncio.run(EpisodeScorer(service, pool).prepare())
    with pytest.raises(ScoringError, match=rf"query {pool.query_id!r}: bad request: item 0 is a ndarray"):
        scorer.embed_images([np.zeros((4, 4, 3), np.uint8)])
    with pytest.raises(ScoringError, match=rf"query {pool.query_id!r}: bad request: expected a list of PIL images"):
        scorer.embed_images(Image.new("RGB", (8, 8)))
    with pytest.raises(ScoringError, match=rf"query {pool.query_id!r}: bad request: this episode's scorer got query"):
        scorer.candidate_embeddings(scene_pools[3])
    with pytest.raises(NotImplementedError, match="text queries"):
        scorer.embed_texts(["a"])
    missing = type(pool)(**{**vars(pool), "query_id": "gone", "image": tmp_path / "missing.png"})
    with pytest.raises(ScoringError, match=r"query 'gone': .*missing.png"):
        asyncio.run(EpisodeScorer(service, missing).prepare())
    # the service is still up for everyone else, and a failed query may be retried
    assert scorer.embed_images([Image.new("RGB", (16, 16))]).shape == (1, scorer.candidate_embeddings(pool).shape[1])


def test_score_equals_the_scorers_own(host, make_tiny_scorer, scene_pools):
    service = host(max_wait_ms=0)
    pool = scene_pools[0]
    views = [Image.open(pool.image).convert("RGB").crop((0, 0, 80, 60)), Image.open(pool.image).convert("RGB")]
    served = EpisodeScorer(service, pool).score(views, pool)
    np.testing.assert_array_equal(served, make_tiny_scorer().score(views, pool))


def test_the_service_as_a_ray_actor_serves_equal_scores_and_a_killed_one_fails_loudly(scene_pools):
    ray = pytest.importorskip("ray")
    from agents.verl.scoring import service_actor
    from envs.factory import make_scorer
    from envs.settings import ScorerSettings

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        host = service_actor(
            ScorerSettings(),  # the embedded rr-tiny scorer: the actor's process knows no test-only model configs
            ScoringServiceSettings(max_wait_ms=10, timeout_s=120, num_gpus=0),  # a busy machine starts workers slowly
        )
        pool = scene_pools[4]
        action = {"decision": REGION, "box": np.array([0.2, 0.1, 0.9, 0.7], np.float32)}
        scorer = asyncio.run(EpisodeScorer(host, pool).prepare())
        # Another process: its torch thread count (which sets a forward's summation order) may
        # differ from this one's, so scores agree to float32 rounding (1e-6), ranks and outcomes exactly.
        served, local = RegionRerankEnv([pool], scorer), RegionRerankEnv([pool], make_scorer())
        for env in (served, local):
            _, info = env.reset(options={"query_index": 0})
            env.baseline = info["baseline_scores"]
            _, env.reward, _, _, env.info = env.step(action)
        np.testing.assert_allclose(served.baseline, local.baseline, rtol=0, atol=1e-6)
        np.testing.assert_allclose(served.info["scores"], local.info["scores"], rtol=0, atol=1e-6)
        assert served.info["rank"] == local.info["rank"] and served.info["outcome"] == local.info["outcome"] == "region"
        assert served.reward == pytest.approx(local.reward, abs=1e-5)
        ray.kill(host.handle)
        start = time.perf_counter()
        with pytest.raises(ScoringError, match=rf"query {pool.query_id!r}: embed failed: .*Actor"):
            scorer.embed_images([Image.new("RGB", (16, 16))])
        assert time.perf_counter() - start < 60
    finally:
        ray.shutdown()


def test_an_agent_loop_episode_whose_scoring_times_out_fails_naming_the_query_and_is_counted(
    tiny_pool, tiny_model_name, tiny_checkpoint, tmp_path_factory, load_recipe
):
    from transformers import AutoProcessor

    from agents.qwen.tiny import cached_tiny_qwen
    from agents.verl.agent_loop import RegionRerankAgentLoop
    from agents.verl.plugin import rollout_metrics
    from envs.data.pools import write_query_pools
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    bench = load_recipe("bench_rollouts")  # its stand-in policy and verl's trainer config
    processor = AutoProcessor.from_pretrained(cached_tiny_qwen(tmp_path_factory.getbasetemp()))
    pool_file = write_query_pools([tiny_pool], tmp_path_factory.mktemp("failing") / "pools.jsonl")
    policy, config = bench.InstantPolicy(processor.tokenizer, seed=0), bench.trainer_config()
    settings = {
        "scorer": {"model": tiny_model_name, "pretrained": str(tiny_checkpoint)}, "images": {"max_pixels": 64 * 28 * 28},
        "scoring": {"max_batch": 1000, "max_wait_ms": 60_000, "timeout_s": 0.5},  # the batch would wait a minute
    }

    async def episode():
        loop = RegionRerankAgentLoop(
            trainer_config=DictConfigWrap(config), server_manager=policy, tokenizer=processor.tokenizer,
            processor=processor, dataset_cls=RLHFDataset, data_config=DictConfigWrap(config.data),
            hf_model_type="qwen2_5_vl", **settings,
        )
        extra_info = {"pool_file": str(pool_file), "query_id": tiny_pool.query_id}
        return await loop.run({"temperature": 1.0, "top_p": 1.0}, extra_info=extra_info, raw_prompt=[], uid="g0")

    start = time.perf_counter()
    out = asyncio.run(episode())
    assert time.perf_counter() - start < 30
    assert out.extra_fields["scoring_failed"] == 1 and out.extra_fields["balance_path"] == "failed"
    assert f"query {tiny_pool.query_id!r}: prepare timed out after 0.5 s" in out.extra_fields["scoring_error"]
    # nothing of a failed episode is trained on, and the policy was never asked
    assert out.reward_score == 0.0 and out.response_mask == [0] and policy.calls == 0
    assert rollout_metrics([out.extra_fields, {"decision": 0, "scoring_failed": 0}])["region_rerank/scoring_failed"] == 1
