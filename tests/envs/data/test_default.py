"""The embedded default: the shipped scorer, and benchmark splits materialized into a cache."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from envs.boxes import crop
from envs.data.pools import load_image, load_query_pools
from envs.data.default import CACHE_ENV, DEFAULT_CONFIG, POOLS_FILE, SCORER_CHECKPOINT, SCORER_MODEL, benchmark_dir, default_dataset, default_scorer
from envs.boxes import expand_box
from envs.data.synthetic import BenchmarkConfig, render_scene, scene_spec
from rewards.metrics import reciprocal_rank

# A seed other than the default one the scorer was trained and calibrated on.
SMALL = BenchmarkConfig(seed=11, train_queries=10, val_queries=10, test_queries=40)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as patch:
        root = tmp_path_factory.mktemp("region-rerank-cache")
        patch.setenv(CACHE_ENV, str(root))
        yield root


@pytest.fixture(scope="module")
def small_test(cache):
    return default_dataset("test", config=SMALL)


@pytest.fixture(scope="module")
def scorer():
    return default_scorer()


def test_split_is_materialized_into_the_cache_and_loads(cache, small_test, scorer):
    folder = benchmark_dir(SMALL, scorer.name) / "test"
    assert folder.parent.parent == cache and (folder / POOLS_FILE).is_file()
    assert [p.name for p in folder.parent.iterdir()] == ["test"]  # no partial folder left behind
    assert len(small_test) == 40
    assert all(len(pool.candidates) == SMALL.pool_size for pool in small_test)
    assert sum(not pool.has_positive for pool in small_test) == 4
    assert all(pool.positives.sum() <= 1 and pool.image.parent == folder / "images" for pool in small_test)
    assert load_query_pools(folder / POOLS_FILE).pools == small_test.pools


def test_first_use_says_what_it_generates_and_later_runs_stay_quiet(cache, small_test, capsys):
    val = default_dataset("val", config=SMALL)
    said = capsys.readouterr().err
    assert "first use: generating the embedded benchmark's val split (10 scenes" in said
    assert str(cache) in said and len(val) == 10
    default_dataset("val", config=SMALL)
    assert "first use" not in capsys.readouterr().err


def test_second_call_reuses_the_files(cache, small_test):
    pools_file = next(cache.glob(f"*/test/{POOLS_FILE}"))
    written = pools_file.stat().st_mtime_ns
    again = default_dataset("test", config=SMALL)
    assert again.pools == small_test.pools and pools_file.stat().st_mtime_ns == written


def test_training_purpose_drops_pools_without_the_positive(small_test):
    train = default_dataset("test", purpose="train", config=SMALL)
    assert len(train) == 36 and train.dropped_without_positive == 4


def test_files_match_the_generator(small_test):
    for i in (0, 17):
        pool = small_test[i]
        spec = scene_spec(SMALL, "test", i)
        scene = render_scene(spec)
        assert (pool.query_id, pool.question, pool.box) == (spec.query_id, spec.question, tuple(map(float, scene.target_box)))
        assert load_image(pool.image).tobytes() == scene.image.tobytes()
        assert [c.id for c in pool.candidates if c.positive] in ([], [spec.target.entity.id])


def test_cropping_the_annotated_box_beats_the_full_image(small_test, scorer):
    full, box = [], []
    for pool in small_test:
        image = load_image(pool.image)
        view = crop(image, expand_box(pool.box, 0.1, image.width, image.height))
        scores = scorer.score([image, view], pool)
        full.append(reciprocal_rank(scores[0], pool.positives))
        box.append(reciprocal_rank(scores[1], pool.positives))
    assert np.mean(box) >= np.mean(full) + 0.15, (np.mean(full), np.mean(box))


def test_the_checkpoint_loads_with_plain_open_clip(scorer):
    import open_clip  # envs.scorers.openclip registered the shipped model configs
    import torch

    model, _, _ = open_clip.create_model_and_transforms(SCORER_MODEL, pretrained=str(SCORER_CHECKPOINT))
    tokens = open_clip.get_tokenizer(SCORER_MODEL)(["a red striped hexagon"])
    with torch.inference_mode():
        text = model.eval().encode_text(tokens, normalize=True).numpy()
    np.testing.assert_allclose(text, scorer.embed_texts(["a red striped hexagon"]), atol=1e-5)
    assert SCORER_CHECKPOINT.stat().st_size < 8e6  # small enough to commit


def test_cache_folder_depends_on_config_and_scorer(cache):
    assert benchmark_dir(SMALL, "a") != benchmark_dir(DEFAULT_CONFIG, "a") != benchmark_dir(DEFAULT_CONFIG, "b")
    assert benchmark_dir(dataclasses.replace(SMALL), "a") == benchmark_dir(SMALL, "a")
    assert benchmark_dir(SMALL, "a").parent == cache


def test_unknown_split_is_refused(cache):
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        default_dataset("dev")


def test_any_protocol_scorer_mines_the_hard_negatives(tmp_path, monkeypatch):
    """write_split needs only the Scorer protocol: the knowledge base is embedded without a
    query pool (envs.scorers.openclip.embed_candidates), and the FULL-image similarity picks the negatives."""
    from pathlib import Path

    from envs.data.default import write_split
    from envs.data.synthetic import ENTITIES

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[3]))
    from examples.custom_scorer import HistogramScorer

    config = BenchmarkConfig(seed=11, train_queries=4, val_queries=4, test_queries=6)
    scorer = HistogramScorer(bins=4)
    pools = load_query_pools(write_split(tmp_path, "test", config, scorer))
    assert len(pools) == 6 and all(len(p.candidates) == config.pool_size for p in pools)
    kb = {c.id: c for c in (p for pool in pools for p in pool.candidates)}
    assert set(kb) <= {e.id for e in ENTITIES} and all(Path(c.image).parent == tmp_path / "kb" for c in kb.values())
    # the histogram scorer cached every knowledge-base image, by path, without a pool of them
    assert len(scorer._cache) == len(ENTITIES)


def test_pools_name_the_knowledge_base_and_their_scene_target_as_gold(small_test):
    from envs.data.kb_index import load_kb_file
    from envs.data.synthetic import ENTITIES

    kb = load_kb_file(small_test[0].kb)
    assert [item.id for item in kb] == [e.id for e in ENTITIES] and all(item.image.is_file() for item in kb)
    for i, pool in enumerate(small_test):
        assert pool.gold == (scene_spec(SMALL, "test", i).target.entity.id,)
    # the retriever mined some pools without their positive: their gold entity is still known, not in the pool
    absent = [pool for pool in small_test if not pool.has_positive]
    assert absent and all(pool.gold[0] not in {c.id for c in pool.candidates} for pool in absent)


# A process that materializes SMALL's test split into the cache $REGION_RERANK_CACHE names.
BUILD_SMALL = """
from envs.data.default import default_dataset
from envs.data.synthetic import BenchmarkConfig
print(len(default_dataset("test", config=BenchmarkConfig(seed=11, train_queries=10, val_queries=10, test_queries=40))))
"""


def _builder(root):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, CACHE_ENV: str(root), "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", BUILD_SMALL], cwd=repo, env=env, stdout=subprocess.PIPE, text=True)


@pytest.mark.slow  # two builds of a split in subprocesses (~1 min)
@pytest.mark.timeout(240)
@pytest.mark.parametrize("kill_when", ["kb images", "query images"])
def test_a_killed_build_is_never_read_and_the_next_run_rebuilds_it(tmp_path, scorer, kill_when):
    """SIGKILL the builder while it writes the knowledge base or the query images: the cache
    holds no split folder afterwards, and the next call builds the whole split."""
    import signal
    import time

    builder = _builder(tmp_path)
    pattern = "*/.test.*/kb/*.png" if kill_when == "kb images" else "*/.test.*/images/*.png"
    deadline = time.monotonic() + 180
    while not list(tmp_path.glob(pattern)):
        assert builder.poll() is None and time.monotonic() < deadline, "the build ended before the kill point"
        time.sleep(0.005)
    builder.send_signal(signal.SIGKILL)
    builder.wait(timeout=30)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path))
        assert not (benchmark_dir(SMALL, scorer.name) / "test").exists()  # only the hidden partial copy
        again = default_dataset("test", config=SMALL)
    assert len(again) == 40 and all(pool.image.is_file() for pool in again)


@pytest.mark.slow  # two concurrent builds in subprocesses (~1 min)
@pytest.mark.timeout(240)
def test_two_processes_building_the_same_split_leave_one_whole_copy(tmp_path, scorer, small_test):
    builders = [_builder(tmp_path) for _ in range(2)]
    assert [b.communicate(timeout=200)[0].strip() for b in builders] == ["40", "40"]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path))
        assert [p.name for p in benchmark_dir(SMALL, scorer.name).iterdir()] == ["test"]  # the loser's copy discarded
        assert [p.question for p in default_dataset("test", config=SMALL)] == [p.question for p in small_test]
