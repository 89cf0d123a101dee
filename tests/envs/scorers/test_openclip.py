"""OpenClipScorer: unit-norm embeddings, cosine scores, candidate features, caches, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from envs.data.pools import Candidate, DataError, QueryPool, load_image
from envs.scorers.openclip import OpenClipScorer, l2_normalize


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
    scorer = make_tiny_scorer(batch_size=8, invariance="padded")
    scorer.candidate_embeddings(tiny_pool)
    before = scorer.stats.image_forwards
    batched = scorer.score(tiny_views, tiny_pool)
    assert scorer.stats.image_forwards == before + 1
    singles = np.concatenate([scorer.score([view], tiny_pool) for view in tiny_views])
    np.testing.assert_allclose(batched, singles, atol=1e-5)


def test_views_beyond_batch_size_are_chunked(make_tiny_scorer, tiny_pool, tiny_views, tiny_scorer):
    scorer = make_tiny_scorer(batch_size=2, invariance="padded")
    scorer.candidate_embeddings(tiny_pool)
    before = scorer.stats.image_forwards
    scores = scorer.score(tiny_views, tiny_pool)
    assert scorer.stats.image_forwards - before == 3  # ceil(5 / 2)
    np.testing.assert_allclose(scores, tiny_scorer.score(tiny_views, tiny_pool), atol=1e-5)


def test_one_row_forwards_cost_one_image_per_view_and_score_bitwise_like_batches(make_tiny_scorer, tiny_pool, tiny_views):
    """On CPU ("auto") every forward is one unpadded row: a single view costs one image, a
    group one row per view, and a view's scores are bitwise the same alone and in any group."""
    scorer = make_tiny_scorer(batch_size=8)
    assert scorer.forward_rows == 1
    scorer.candidate_embeddings(tiny_pool)
    before = (scorer.stats.image_forwards, scorer.stats.images_encoded)
    batched = scorer.score(tiny_views, tiny_pool)
    assert (scorer.stats.image_forwards - before[0], scorer.stats.images_encoded - before[1]) == (5, 5)
    for i, view in enumerate(tiny_views):
        np.testing.assert_array_equal(scorer.score([view], tiny_pool)[0], batched[i])
    np.testing.assert_array_equal(scorer.score(tiny_views[::-1], tiny_pool), batched[::-1])
    assert make_tiny_scorer(batch_invariant=False).forward_rows is None
    assert make_tiny_scorer(invariance="padded").forward_rows == 8


def test_candidates_are_encoded_once(make_tiny_scorer, tiny_pool, tiny_views):
    scorer = make_tiny_scorer(invariance="padded")
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
    assert other.stats.disk_hits == 0 and other.stats.texts_encoded == 4
    assert not np.allclose(other_candidates, expected)


def test_cache_keys_include_the_candidate_source(make_tiny_scorer, tiny_pool):
    scorer = make_tiny_scorer(candidate_features="text")
    pool = dataclasses.replace(tiny_pool, candidates=(Candidate("same-id", True, text="a cat"),))
    renamed = dataclasses.replace(tiny_pool, candidates=(Candidate("same-id", True, text="a bridge at night"),))
    np.testing.assert_allclose(scorer.candidate_embeddings(renamed), scorer.embed_texts(["a bridge at night"]), atol=1e-6)
    assert not np.allclose(scorer.candidate_embeddings(pool), scorer.candidate_embeddings(renamed))


def test_uncached_baseline_matches_and_reencodes(make_tiny_scorer, tiny_pool, tiny_views):
    scorer = make_tiny_scorer(invariance="padded")  # counts padded batches
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


# --------------------------------------------------------------------------- the protocol and its checks
class _Fake:
    """A protocol scorer whose outputs a test bends: ``bend(member, array) -> array``."""

    def __init__(self, bend=lambda member, array: array, dim: int = 6):
        self.name, self.bend, self.dim = "fake-scorer", bend, dim

    def _rows(self, n: int, seed: int) -> np.ndarray:
        return l2_normalize(np.random.default_rng(seed).normal(size=(n, self.dim)))

    def embed_images(self, images):
        return self.bend("embed_images", self._rows(len(images), 0))

    def candidate_embeddings(self, pool):
        return self.bend("candidate_embeddings", self._rows(len(pool.candidates), 1))


def test_scorers_are_runtime_checkable_against_the_minimal_protocol(tiny_scorer):
    from envs.scorers.openclip import Scorer

    assert isinstance(tiny_scorer, Scorer) and isinstance(_Fake(), Scorer)
    assert not isinstance(object(), Scorer)
    assert not hasattr(_Fake(), "embed_texts") and not hasattr(_Fake(), "score")  # not required
    half = _Fake()
    half.candidate_embeddings = None
    del half.name
    assert not isinstance(half, Scorer)


def test_check_scorer_accepts_the_built_in_scorer_and_returns_its_dimension(tiny_scorer, tiny_pool):
    from envs.scorers.openclip import check_scorer

    assert check_scorer(tiny_scorer, tiny_pool) == 32
    assert check_scorer(_Fake(), tiny_pool) == 6


@pytest.mark.parametrize(
    "bend, member, message",
    [
        (lambda m, a: a.astype(np.float64) if m == "candidate_embeddings" else a, "candidate_embeddings", "dtype float64; expected float32"),
        (lambda m, a: a * 3 if m == "embed_images" else a, "embed_images", "not L2-normalized"),
        (lambda m, a: l2_normalize(a[:, :4]) if m == "embed_images" else a, "embed_images", "4-dimensional"),
        (lambda m, a: a[:-1] if m == "candidate_embeddings" else a, "candidate_embeddings", r"shape \(4, 6\); expected \(5, d\)"),
        (lambda m, a: a.tolist() if m == "embed_images" else a, "embed_images", "returned a list"),
        (lambda m, a: np.full_like(a, np.nan) if m == "candidate_embeddings" else a, "candidate_embeddings", "non-finite"),
    ],
)
def test_a_broken_scorer_is_refused_naming_it_and_the_member(tiny_pool, bend, member, message):
    from envs.region_rerank import RegionRerankEnv
    from envs.scorers.openclip import ScorerError, check_scorer

    scorer = _Fake(bend)
    with pytest.raises(ScorerError, match=f"fake-scorer.*{member}.*{message}"):
        check_scorer(scorer, tiny_pool)
    env = RegionRerankEnv([tiny_pool], scorer)  # outputs are checked at the first reset, on what it fetches
    with pytest.raises(ScorerError, match=f"\\._Fake \\(name='fake-scorer'\\): {member}.*{message}"):
        env.reset(seed=0)


def test_a_scorer_without_its_members_is_refused_when_the_env_is_built(tiny_pool):
    from envs.region_rerank import RegionRerankEnv
    from envs.scorers.openclip import ScorerError

    class NoName:
        def embed_images(self, images): ...
        def candidate_embeddings(self, pool): ...

    class NoCandidates:
        name = "half"

        def embed_images(self, images): ...

    with pytest.raises(ScorerError, match="NoName has no attribute 'name'"):
        RegionRerankEnv([tiny_pool], NoName())
    with pytest.raises(ScorerError, match="no callable 'candidate_embeddings'"):
        RegionRerankEnv([tiny_pool], NoCandidates())
    empty = NoName()
    empty.name = ""
    with pytest.raises(ScorerError, match="non-empty str"):
        RegionRerankEnv([tiny_pool], empty)


def test_a_good_scorer_is_checked_once_without_extra_calls(make_tiny_scorer, tiny_pool):
    from envs.region_rerank import RegionRerankEnv

    scorer = make_tiny_scorer(invariance="padded")  # counts padded batches
    env = RegionRerankEnv([tiny_pool], scorer)
    assert scorer.stats.image_forwards == 0  # building the env embeds nothing
    env.reset(seed=0)
    env.reset(seed=0)
    assert scorer.stats.image_forwards == 1 + 2  # candidate images once, then one FULL forward per reset


def test_embed_candidates_needs_no_pool_and_shares_the_cache(make_tiny_scorer, tiny_pool, tmp_path):
    from envs.scorers.openclip import embed_candidates

    scorer = make_tiny_scorer()
    direct = scorer.embed_candidates(tiny_pool.candidates)
    forwards = (scorer.stats.image_forwards, scorer.stats.text_forwards)
    np.testing.assert_array_equal(scorer.candidate_embeddings(tiny_pool), direct)
    assert (scorer.stats.image_forwards, scorer.stats.text_forwards) == forwards
    np.testing.assert_array_equal(embed_candidates(scorer, tiny_pool.candidates), direct)
    # a protocol-only scorer gets the candidates as one query-less pool
    fake = _Fake()
    np.testing.assert_array_equal(embed_candidates(fake, tiny_pool.candidates), fake.candidate_embeddings(tiny_pool))
    # errors name the candidate without a pool, and the query and field with one
    missing = Candidate("gone", False, image=tmp_path / "missing.png")
    with pytest.raises(DataError, match="candidate 'gone': field 'image'"):
        scorer.embed_candidates([missing])
    with pytest.raises(DataError, match=r"candidates\[0\].image: candidate 'gone' of query 'q0'"):
        scorer.candidate_embeddings(dataclasses.replace(tiny_pool, candidates=(missing,)))
    with pytest.raises(ValueError, match="candidate 'c3' has no image"):
        make_tiny_scorer(candidate_features="image").embed_candidates(tiny_pool.candidates)
