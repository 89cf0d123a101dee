"""The knowledge-base index (envs/data/kb_index.py): embedding, the resumable cache, exact search."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from envs.data.pools import Candidate, DataError, QueryPool, load_image
from envs.data.kb_index import KbItem, KnowledgeBaseIndex, embed_items


def random_image(rng: np.random.Generator) -> Image.Image:
    """Noise with a bright rectangle, so images (and their embeddings) differ."""
    pixels = rng.integers(0, 80, size=(40, 48, 3), dtype=np.uint8)
    x, y = rng.integers(0, 24), rng.integers(0, 20)
    pixels[y : y + 20, x : x + 24] = rng.integers(100, 256, size=3, dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture
def kb(tmp_path: Path) -> list[KbItem]:
    """Ten entities with images and texts, one without an image, one whose image is corrupt,
    one without a text, and one whose image is a copy of entity 0's (an exact tie)."""
    rng = np.random.default_rng(3)
    items = []
    for i in range(10):
        path = tmp_path / f"e{i}.png"
        random_image(rng).save(path)
        items.append(KbItem(f"https://en.wikipedia.org/wiki/E{i}", image=path, text=f"entity number {i}"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    items += [
        KbItem("https://en.wikipedia.org/wiki/No_image", text="an entity without a picture"),
        KbItem("https://en.wikipedia.org/wiki/Broken", image=tmp_path / "broken.jpg", text="a broken picture"),
        KbItem("https://en.wikipedia.org/wiki/No_text", image=items[3].image),
        KbItem("https://en.wikipedia.org/wiki/Copy_of_E0", image=items[0].image, text="entity number 0"),
    ]
    return items


class FailingScorer:
    """Delegates to a scorer, raising after ``fail_after`` image batches (an interrupted run)."""

    def __init__(self, scorer, fail_after: int) -> None:
        self.scorer, self.fail_after, self.name, self.calls = scorer, fail_after, scorer.name, 0

    def embed_images(self, images):
        self.calls += 1
        if self.calls > self.fail_after:
            raise KeyboardInterrupt("interrupted")
        return self.scorer.embed_images(images)

    def embed_texts(self, texts):
        return self.scorer.embed_texts(texts)


def test_vectors_are_the_candidates_vectors_and_gaps_are_counted(kb, make_tiny_scorer) -> None:
    scorer = make_tiny_scorer(candidate_features="image+text")
    index = KnowledgeBaseIndex.build(kb, scorer, "image+text", progress=False, num_workers=1)
    # an index row is what the env's scorer makes of the same entity as a pool candidate
    pool = QueryPool("q", "", kb[0].image, tuple(Candidate(it.id, False, image=it.image, text=it.text) for it in kb[:10]))
    np.testing.assert_allclose(index.vectors[:10], scorer.candidate_embeddings(pool), atol=1e-6)
    assert index.stats.left_out == {}
    assert index.stats.partial == {"image_only (no text)": 1, "text_only (no readable image)": 2}
    assert len(index) == len(kb)

    image_index = KnowledgeBaseIndex.build(kb, scorer, "image", progress=False, num_workers=0)
    assert image_index.stats.left_out == {"image_unreadable": 1, "no_image": 1}
    assert len(image_index) == len(kb) - 2
    ids, _ = image_index.search(np.eye(image_index.dim, dtype=np.float32), k=len(kb))
    assert all(len(row) == len(kb) - 2 and "https://en.wikipedia.org/wiki/Broken" not in row for row in ids)
    text_index = KnowledgeBaseIndex.build(kb, scorer, "text", progress=False)
    assert text_index.stats.left_out == {"no_text": 1}


def test_search_is_exact_and_breaks_ties_by_position(kb, make_tiny_scorer) -> None:
    scorer = make_tiny_scorer()
    index = KnowledgeBaseIndex.build(kb, scorer, "image", progress=False)
    queries = scorer.embed_images([load_image(kb[i].image) for i in (0, 5)])
    ids, scores = index.search(queries, k=3, kb_chunk=4, query_batch=1)  # chunked: same answer
    # entity 0 and its copy score the same: the earlier one comes first
    assert ids[0][:2] == ["https://en.wikipedia.org/wiki/E0", "https://en.wikipedia.org/wiki/Copy_of_E0"]
    assert scores[0, 0] == scores[0, 1]
    assert ids[1][0] == "https://en.wikipedia.org/wiki/E5"
    brute = queries @ np.asarray(index.vectors).T
    brute[:, ~index.valid] = -np.inf
    np.testing.assert_allclose(scores, -np.sort(-brute, axis=1)[:, :3], rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 0)
    with pytest.raises(ValueError, match=r"query vectors must be \(n, 32\)"):
        index.search(np.zeros((1, 5), np.float32), k=1)
    with pytest.raises(ValueError, match="NaN or infinite"):
        index.search(np.full((1, 32), np.nan, np.float32), k=1)


def test_an_interrupted_build_resumes_and_a_finished_one_is_reused(kb, make_tiny_scorer, tmp_path) -> None:
    scorer = make_tiny_scorer()
    cache = tmp_path / "cache"
    reference = embed_items(kb, scorer, "image", progress=False, batch_size=2)
    with pytest.raises(KeyboardInterrupt):
        embed_items(kb, FailingScorer(scorer, fail_after=3), "image", cache_dir=cache, progress=False,
                    batch_size=2, chunk_rows=4)  # chunk 1 (rows 0-3) committed, chunk 2 interrupted
    resumed = embed_items(kb, scorer, "image", cache_dir=cache, progress=False, batch_size=2, chunk_rows=4)
    assert (resumed.stats.reused, resumed.stats.embedded) == (4, len(kb) - 4)
    np.testing.assert_array_equal(resumed.valid, reference.valid)
    np.testing.assert_allclose(resumed.vectors, reference.vectors, atol=1e-6)
    again = embed_items(kb, FailingScorer(scorer, fail_after=0), "image", cache_dir=cache, progress=False)
    assert (again.stats.reused, again.stats.embedded) == (len(kb), 0) and again.folder == resumed.folder
    assert again.stats.left_out == {"image_unreadable": 1, "no_image": 1}
    changed = list(kb)
    changed[1] = KbItem(kb[1].id, image=kb[2].image)  # another image: another content hash, another folder
    assert embed_items(changed, scorer, "image", cache_dir=cache, progress=False).folder != resumed.folder

    loaded = KnowledgeBaseIndex.load(resumed.folder)
    built = KnowledgeBaseIndex.build(kb, scorer, "image", cache_dir=cache, progress=False)
    queries = scorer.embed_images([load_image(kb[4].image)])
    assert loaded.search(queries, 5)[0] == built.search(queries, 5)[0]
    assert loaded.scorer_name == scorer.name and loaded.features == "image" and len(loaded) == len(kb) - 2
    (resumed.folder / "meta.json").write_text("{}")
    with pytest.raises(DataError, match="not a complete knowledge-base index"):
        KnowledgeBaseIndex.load(resumed.folder)


def test_duplicate_ids_and_bad_arguments_are_refused(kb, make_tiny_scorer) -> None:
    scorer = make_tiny_scorer()
    with pytest.raises(ValueError, match=r"duplicate item id 'https://en.wikipedia.org/wiki/E0' \(items 0 and 14\)"):
        embed_items(kb + [kb[0]], scorer, "image", progress=False)
    with pytest.raises(ValueError, match="features='both'"):
        embed_items(kb, scorer, "both", progress=False)

    class ImageOnlyScorer:  # the Scorer protocol does not require embed_texts
        name = "image-only"
        embed_images = scorer.embed_images
        candidate_embeddings = scorer.candidate_embeddings

    with pytest.raises(TypeError, match=r"features='text' need a scorer with embed_texts"):
        embed_items(kb, ImageOnlyScorer(), "text", progress=False)
    assert embed_items(kb, ImageOnlyScorer(), "image", progress=False).stats.searchable == len(kb) - 2


def test_faiss_backend(kb, make_tiny_scorer, monkeypatch) -> None:
    scorer = make_tiny_scorer()
    index = KnowledgeBaseIndex.build(kb, scorer, "image", progress=False)
    queries = scorer.embed_images([load_image(kb[i].image) for i in (0, 7)])
    monkeypatch.setitem(sys.modules, "faiss", None)  # as if not installed
    index.backend = "faiss"
    with pytest.raises(ImportError, match=r"pip install 'region-rerank\[faiss\]'"):
        index.search(queries, 3)
    monkeypatch.undo()
    pytest.importorskip("faiss")
    index.backend = "numpy"
    expected = index.search(queries, 4)
    index.backend = "faiss"
    ids, scores = index.search(queries, 4)
    assert ids == expected[0]  # exact Flat index, ties ordered by position as NumPy orders them
    np.testing.assert_allclose(scores, expected[1], atol=1e-5)


def test_kb_file_round_trips_and_names_bad_records(kb, tmp_path: Path) -> None:
    from envs.data.kb_index import load_kb_file, write_kb_file

    path = write_kb_file(kb, tmp_path / "kb.jsonl")
    assert load_kb_file(path) == kb
    assert '"image": "e0.png"' in path.read_text(encoding="utf-8")  # relative to the file's folder
    for line, message in [
        ('{"id": ""}', "kb2.jsonl:2: field 'id' must be a non-empty string"),
        ('{"id": "a", "text": "x"}', "kb2.jsonl:2: field 'id': duplicate entity id 'a'"),
        ('{"id": "b"}', "kb2.jsonl:2: entity 'b' has neither 'image' nor 'text'"),
        ('{"id": "b", "text": 5}', "kb2.jsonl:2: field 'text' must be a non-empty string"),
    ]:
        (tmp_path / "kb2.jsonl").write_text('{"id": "a", "text": "x"}\n' + line + "\n", encoding="utf-8")
        with pytest.raises(DataError, match=message):
            load_kb_file(tmp_path / "kb2.jsonl")


def test_shared_index_is_built_once_and_its_rows_are_candidate_embeddings(kb, tmp_path: Path, make_tiny_scorer) -> None:
    from envs.data.kb_index import index_features, shared_index, write_kb_file

    items = [item for item in kb[:10]]  # entities with both image and text
    path = write_kb_file(items, tmp_path / "kb.jsonl")
    scorer = make_tiny_scorer()
    assert index_features(scorer) == "image+text"  # candidate_features="auto"
    index = shared_index(path, scorer, cache_dir=tmp_path / "cache")
    assert shared_index(path, scorer, cache_dir=tmp_path / "cache") is index
    candidates = [Candidate(item.id, False, item.image, item.text) for item in items[:3]]
    expected = scorer.candidate_embeddings(QueryPool("q", "?", items[0].image, tuple(candidates)))
    rows = index.rows_of([c.id for c in candidates] + ["not-in-kb"])
    assert rows[-1] == -1
    np.testing.assert_allclose(np.asarray(index.vectors)[rows[:3]], expected, atol=1e-6)
