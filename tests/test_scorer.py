"""OpenClipScorer: unit-norm embeddings, cosine scores, candidate features, caches, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from envs.data import Candidate, DataError, QueryPool, load_image
from envs.scorer import OpenClipScorer, l2_normalize


def candidate_images_and_texts(scorer: OpenClipScorer, pool: QueryPool) -> tuple[dict, dict]:
    """Each candidate's image and text embeddings, computed directly (no cache)."""
    with_image = [c for c in pool.candidates if c.image is not None]
    with_text = [c for c in pool.candidates if c.text is not None]
    images = scorer.embed_images([load_image(c.image) for c in with_image])
    texts = scorer.embed_texts([c.text for c in with_text])
    return dict(zip([c.id for c in with_image], images)), dict(zip([c.id for c in with_text], texts))


def test_embeddings_are_float32_unit_vectors(tiny_scorer, tiny_views):
    images = tiny_scorer.embed_images(tiny_views)
    texts = tiny_scorer.embed_texts(["a cat", "a red square on a gray wall"])
    assert images.shape == (5, 32) and texts.shape == (2, 32)
    assert images.dtype == texts.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(images, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert tiny_scorer.embed_images([]).shape == (0, 32)


def test_auto_features_combine_what_each_candidate_has(tiny_scorer, tiny_pool):
    images, texts = candidate_images_and_texts(tiny_scorer, tiny_pool)
    expected = []
    for c in tiny_pool.candidates:
        if c.id in images and c.id in texts:  # Region-R1: sum of normalized embeddings, re-normalized
            expected.append((images[c.id] + texts[c.id]) / np.linalg.norm(images[c.id] + texts[c.id]))
        else:
            expected.append(images.get(c.id, texts.get(c.id)))
    candidates = tiny_scorer.candidate_embeddings(tiny_pool)
    assert candidates.shape == (5, 32) and candidates.dtype == np.float32
    np.testing.assert_allclose(candidates, np.stack(expected), atol=1e-5)


@pytest.mark.parametrize("mode", ["image", "text", "image+text"])
def test_explicit_feature_modes(make_tiny_scorer, tiny_pool, mode):
    scorer = make_tiny_scorer(candidate_features=mode)
    pool = dataclasses.replace(
        tiny_pool, candidates=tuple(c for c in tiny_pool.candidates if c.image is not None and c.text is not None)
    )
    images, texts = candidate_images_and_texts(scorer, pool)
    ids = [c.id for c in pool.candidates]
    image_rows, text_rows = np.stack([images[i] for i in ids]), np.stack([texts[i] for i in ids])
    expected = {"image": image_rows, "text": text_rows, "image+text": l2_normalize(image_rows + text_rows)}[mode]
    np.testing.assert_allclose(scorer.candidate_embeddings(pool), expected, atol=1e-5)


def test_score_is_cosine_of_views_and_candidates(tiny_scorer, tiny_pool, tiny_views):
    scores = tiny_scorer.score(tiny_views, tiny_pool)
    assert scores.shape == (5, 5) and scores.dtype == np.float32
    views, candidates = tiny_scorer.embed_images(tiny_views), tiny_scorer.candidate_embeddings(tiny_pool)
    cosine = (views @ candidates.T) / np.outer(np.linalg.norm(views, axis=1), np.linalg.norm(candidates, axis=1))
    np.testing.assert_allclose(scores, cosine, atol=1e-5)
    assert scores.std() > 1e-3  # random weights still tell the views apart


def test_batched_score_equals_single_view_scores_in_one_forward(make_tiny_scorer, tiny_pool, tiny_views):
    scorer = make_tiny_scorer(batch_size=8)
    scorer.candidate_embeddings(tiny_pool)
    before = scorer.stats.image_forwards
    batched = scorer.score(tiny_views, tiny_pool)
    assert scorer.stats.image_forwards == before + 1
    singles = np.concatenate([scorer.score([view], tiny_pool) for view in tiny_views])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_views_beyond_batch_size_are_chunked(make_tiny_scorer, tiny_pool, tiny_views, tiny_scorer):
    scorer = make_tiny_scorer(batch_size=2)
    scorer.candidate_embeddings(tiny_pool)
    before = scorer.stats.image_forwards
    scores = scorer.score(tiny_views, tiny_pool)
    assert scorer.stats.image_forwards - before == 3  # ceil(5 / 2)
    np.testing.assert_allclose(scores, tiny_scorer.score(tiny_views, tiny_pool), atol=1e-5)


def test_candidates_are_encoded_once(make_tiny_scorer, tiny_pool, tiny_views):
    scorer = make_tiny_scorer()
    first = scorer.score(tiny_views[:1], tiny_pool)
    # 4 candidate images in one forward (+1 for the view), 4 candidate texts in one forward
    assert (scorer.stats.image_forwards, scorer.stats.images_encoded) == (2, 5)
    assert (scorer.stats.text_forwards, scorer.stats.texts_encoded) == (1, 4)
    second = scorer.score(tiny_views[:1], tiny_pool)
    assert (scorer.stats.image_forwards, scorer.stats.text_forwards) == (3, 1)  # only the view
    assert scorer.stats.cache_hits == 8
    np.testing.assert_array_equal(first, second)


def test_disk_cache_is_reused_only_by_the_same_weights(
    make_tiny_scorer, make_tiny_checkpoint, tiny_pool, tiny_views, tmp_path
):
    writer = make_tiny_scorer(cache_dir=tmp_path)
    expected = writer.candidate_embeddings(tiny_pool)

    reader = make_tiny_scorer(cache_dir=tmp_path)
    assert reader.name == writer.name
    np.testing.assert_array_equal(reader.candidate_embeddings(tiny_pool), expected)
    assert (reader.stats.image_forwards, reader.stats.text_forwards, reader.stats.disk_hits) == (0, 0, 8)
    np.testing.assert_array_equal(reader.embed_images(tiny_views), writer.embed_images(tiny_views))

    other = make_tiny_scorer(make_tiny_checkpoint(1), cache_dir=tmp_path)
    assert other.name != writer.name
    other_candidates = other.candidate_embeddings(tiny_pool)
    assert other.stats.disk_hits == 0 and other.stats.text_forwards == 1
    assert not np.allclose(other_candidates, expected)


def test_cache_keys_include_the_candidate_source(make_tiny_scorer, tiny_pool):
    scorer = make_tiny_scorer(candidate_features="text")
    pool = dataclasses.replace(tiny_pool, candidates=(Candidate("same-id", True, text="a cat"),))
    renamed = dataclasses.replace(tiny_pool, candidates=(Candidate("same-id", True, text="a bridge at night"),))
    np.testing.assert_allclose(scorer.candidate_embeddings(renamed), scorer.embed_texts(["a bridge at night"]), atol=1e-6)
    assert not np.allclose(scorer.candidate_embeddings(pool), scorer.candidate_embeddings(renamed))


def test_uncached_baseline_matches_and_reencodes(make_tiny_scorer, tiny_pool, tiny_views):
    scorer = make_tiny_scorer()
    for _ in range(2):
        np.testing.assert_allclose(scorer.score_uncached(tiny_views, tiny_pool), scorer.score(tiny_views, tiny_pool), atol=1e-5)
    # score() encoded the texts once; score_uncached() did so on each of its two calls
    assert scorer.stats.text_forwards == 3


def test_random_weights_are_fingerprinted_by_value(tiny_model_name):
    torch.manual_seed(3)
    a = OpenClipScorer(tiny_model_name)
    torch.manual_seed(3)
    b = OpenClipScorer(tiny_model_name)
    c = OpenClipScorer(tiny_model_name)
    assert a.name == b.name != c.name
    assert a.name.startswith(f"{tiny_model_name}@random:")


def test_missing_checkpoint_is_named(tiny_model_name, tmp_path):
    missing = tmp_path / "eva02_b16.pt"
    with pytest.raises(FileNotFoundError, match="eva02_b16.pt"):
        OpenClipScorer(tiny_model_name, missing)
    with pytest.raises(FileNotFoundError, match="eva02_b16.pt"):
        OpenClipScorer(tiny_model_name, str(missing))


def test_unknown_model_and_tag_are_named(tiny_model_name):
    with pytest.raises(ValueError, match=r"'EVA99-Z-1'.*open_clip.list_models\(\)"):
        OpenClipScorer("EVA99-Z-1")
    with pytest.raises(ValueError, match="not-a-tag"):
        OpenClipScorer(tiny_model_name, "not-a-tag")


def test_hub_tag_offline_fails_with_a_hint():
    # HF_HUB_OFFLINE=1 (conftest): the download fails at once, before the model is built
    with pytest.raises(RuntimeError, match="local checkpoint file"):
        OpenClipScorer("ViT-B-32", "openai")


def test_checkpoint_of_another_model_is_refused(tiny_model_name, tmp_path):
    wrong = tmp_path / "wrong.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, wrong)
    with pytest.raises(RuntimeError, match="wrong.pt"):
        OpenClipScorer(tiny_model_name, wrong)


def test_candidate_lacking_a_requested_feature_is_named(make_tiny_scorer, tiny_pool, tiny_views):
    scorer = make_tiny_scorer(candidate_features="image+text")
    with pytest.raises(ValueError, match=r"candidate 'c2' of query 'q0' has no text"):
        scorer.score(tiny_views, tiny_pool)
    with pytest.raises(ValueError, match="candidate_features"):
        make_tiny_scorer(candidate_features="images")


def test_unreadable_candidate_image_is_named(tiny_scorer, tiny_pool, tmp_path):
    pool = dataclasses.replace(tiny_pool, candidates=(Candidate("ghost", True, image=tmp_path / "ghost.png"),))
    with pytest.raises(DataError, match=r"candidate 'ghost' of query 'q0'.*ghost.png"):
        tiny_scorer.candidate_embeddings(pool)
