"""A searchable index of knowledge-base entities: one L2-normalized vector per entity.

The retriever in front of the re-ranker: every KB entity is embedded once with a frozen
:class:`~envs.scorers.openclip.Scorer` (its image, its text, or both summed and re-normalized with
:func:`envs.scorers.openclip.combine_features`, exactly as pool candidates are), and a query is the
top-K entities by inner product (cosine, the vectors being unit length).
``recipes/retrieve.py`` writes such top-K lists for ``recipes/prepare_data.py``; the same
index is what an agent's SEARCH action would query::

    from envs.data.kb_index import KbItem, KnowledgeBaseIndex
    items = [KbItem("https://en.wikipedia.org/wiki/Eiffel_Tower", image=Path("kb/eiffel.jpg"),
                    text="Eiffel Tower. The Eiffel Tower is ..."), ...]
    index = KnowledgeBaseIndex.build(items, scorer, "image", cache_dir="cache/kb_index")
    ids, scores = index.search(scorer.embed_images([query_image]), k=20)

**Embedding** (:func:`embed_items`) streams the items in chunks of ``chunk_rows``, in
batches of ``batch_size`` whose images are decoded by ``num_workers`` threads while the
previous batch runs through the model. With a ``cache_dir`` every chunk is written to
``<cache_dir>/<scorer name>/<label>-<features>-<content hash>/`` as soon as it is done
(``vectors.npy`` and ``status.npy`` memory-mapped, ``progress.json`` renamed into place
after them), so an interrupted build continues where it stopped and a finished one is
read back without a forward. The key is the scorer's :attr:`~envs.scorers.openclip.Scorer.name`
(model and weights), the features and a hash of the items' content (ids, texts, and
image paths with their size and modification time): any change builds a new index.

An item that lacks what ``features`` needs (no image, an image that does not decode, no
text) gets no vector and is never returned by a search; ``image+text`` items with only
one of the two are embedded from it. Every such case is counted, by reason, in
:class:`EmbeddingStats`.

**Search** is exact by default: inner products in NumPy (float32 products shortlist,
float64 rescoring of the shortlist decides, rounded to float32) over chunks of ``kb_chunk`` entities and ``query_batch`` queries (memory bounded by their
product), best first, ties broken by entity position (lower first), so results are
deterministic and do not depend on the chunk sizes. ``backend="faiss"``
hands the vectors to FAISS (``pip install 'region-rerank[faiss]'``; ``faiss_factory``
``"Flat"`` is exact, others such as ``"HNSW32"`` or ``"IVF4096,Flat"`` approximate) for
indexes of millions of entries; its first ``2k`` hits (at least ``k + 16``) are rescored
exactly and ordered by the same rule, so an exact FAISS index returns what NumPy returns
unless more entities tie at the k-th place than were fetched.

**The KB file** a query pool names (``"kb"``, see :mod:`envs.data.pools`) is JSONL, one entity
a line, ``{"id": ..., "image": "kb/e.png", "text": "..."}`` (image and text optional,
paths relative to the file's folder): :func:`write_kb_file` / :func:`load_kb_file`.
:func:`shared_index` builds (or reads back from the cache) the index of such a file once
per process, with the features that make its vectors equal to the scorer's candidate
embeddings (:func:`index_features`), which is what the env's SEARCH action relies on: a
re-retrieved pool's candidate vectors are the index's rows, no scorer call needed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
from PIL import Image

from envs.data.pools import DataError, iter_jsonl, load_image
from envs.scorers.openclip import Scorer, combine_features
from envs.atomic import atomic_open, atomic_write_json

IndexFeatures = Literal["image", "text", "image+text"]
FEATURES: tuple[str, ...] = ("image", "text", "image+text")
Backend = Literal["numpy", "faiss"]
FORMAT_VERSION = 1
"""Bump when the cache layout or what is hashed changes (it keys the cache)."""

# Per-row status in status.npy.
_PENDING, _FULL, _TEXT_ONLY, _IMAGE_ONLY = 0, 1, 2, 3
_NO_IMAGE, _IMAGE_UNREADABLE, _NO_TEXT, _NO_IMAGE_OR_TEXT = 10, 11, 12, 13
_LEFT_OUT = {_NO_IMAGE: "no_image", _IMAGE_UNREADABLE: "image_unreadable", _NO_TEXT: "no_text",
             _NO_IMAGE_OR_TEXT: "no_image_or_text"}
_PARTIAL = {_TEXT_ONLY: "text_only (no readable image)", _IMAGE_ONLY: "image_only (no text)"}


def check_features(features: str) -> None:
    """Raise ``ValueError`` unless ``features`` is ``"image"``, ``"text"`` or ``"image+text"``."""
    if features not in FEATURES:
        raise ValueError(f"features={features!r}; expected one of {', '.join(FEATURES)}")


@dataclass(frozen=True)
class KbItem:
    """One knowledge-base entity to embed: its id (e.g. the Wikipedia URL) and its content."""

    id: str
    image: Path | None = None
    text: str | None = None


@dataclass
class EmbeddingStats:
    """What an :func:`embed_items` call did."""

    items: int = 0
    embedded: int = 0
    """Rows processed by this call (embedded, or found to lack what the features need)."""
    reused: int = 0
    """Rows read back from the on-disk cache."""
    left_out: dict[str, int] = field(default_factory=dict)
    """Rows without a vector (never returned by a search), by reason."""
    partial: dict[str, int] = field(default_factory=dict)
    """``image+text`` rows embedded from one feature only, by which."""
    seconds: float = 0.0
    """Wall time of the call."""

    @property
    def searchable(self) -> int:
        return self.items - sum(self.left_out.values())

    @property
    def items_per_second(self) -> float:
        """Rows processed per second of this call (0 when nothing was processed)."""
        return self.embedded / self.seconds if self.embedded and self.seconds > 0 else 0.0

    def report(self, label: str = "items") -> str:
        lines = [f"{label}: {self.items}, searchable {self.searchable}; embedded {self.embedded} in {self.seconds:.1f} s"
                 + (f" ({self.items_per_second:.1f}/s)" if self.embedded else "") + f", {self.reused} from the cache"]
        for reason, count in sorted(self.left_out.items()):
            lines.append(f"  left out {count}: {reason}")
        for reason, count in sorted(self.partial.items()):
            lines.append(f"  embedded from one feature {count}: {reason}")
        return "\n".join(lines)


@dataclass
class Embeddings:
    """Vectors for a sequence of items, row ``i`` for ``ids[i]``."""

    ids: list[str]
    vectors: np.ndarray
    """``(n, d)`` float32, L2-normalized; all-zero rows where ``valid`` is False (memory-mapped when cached)."""
    valid: np.ndarray
    """``(n,)`` bool: the row has a vector."""
    stats: EmbeddingStats
    folder: Path | None = None
    """The cache folder, when there is one."""


# ---------------------------------------------------------------- embedding


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def content_hash(items: Sequence[KbItem], features: str) -> str:
    """SHA-256 of what the embeddings of ``items`` under ``features`` depend on: each id, its
    text (text features) and its image path with size and modification time (image features)."""
    digest = hashlib.sha256(f"v{FORMAT_VERSION}\0{features}\0{len(items)}\n".encode())
    uses_image, uses_text = features != "text", features != "image"
    for item in items:
        parts = [item.id]
        if uses_image:
            if item.image is None:
                parts.append("\1none")
            else:
                try:
                    stat = os.stat(item.image)
                    parts.append(f"{item.image}\0{stat.st_size}\0{stat.st_mtime_ns}")
                except OSError:
                    parts.append(f"{item.image}\0missing")
        if uses_text:
            parts.append("\1none" if item.text is None else item.text)
        digest.update("\0".join(parts).encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _load_or_none(path: Path | None) -> Image.Image | None:
    if path is None:
        return None
    try:
        return load_image(path)
    except DataError:
        return None


class _Store:
    """The arrays of one embedding run: in memory, or memory-mapped in a cache folder."""

    def __init__(self, folder: Path | None, meta: dict, ids: list[str], dim_hint: int) -> None:
        self.folder, self.meta, self.n, self.dim_hint = folder, meta, len(ids), dim_hint
        self.vectors: np.ndarray | None = None
        self.rows_done = 0
        if folder is None:
            self.status = np.zeros(self.n, np.uint8)
            return
        previous = _read_json(folder / "meta.json")
        progress = _read_json(folder / "progress.json")
        resumable = (
            isinstance(previous, dict) and isinstance(progress, dict)
            and {k: previous.get(k) for k in meta} == meta
            and (folder / "status.npy").is_file()
        )
        if resumable:
            self.status = np.load(folder / "status.npy", mmap_mode="r+")
            self.rows_done = int(progress.get("rows_done", 0))
            if (folder / "vectors.npy").is_file():
                self.vectors = np.load(folder / "vectors.npy", mmap_mode="r+")
            if self.status.shape != (self.n,) or (self.vectors is not None and self.vectors.shape[0] != self.n):
                resumable = False
        if not resumable:
            folder.mkdir(parents=True, exist_ok=True)
            for name in ("progress.json", "vectors.npy", "status.npy"):
                (folder / name).unlink(missing_ok=True)
            _write_json(folder / "ids.json", ids)
            _write_json(folder / "meta.json", meta)
            self.status = np.lib.format.open_memmap(folder / "status.npy", mode="w+", dtype=np.uint8, shape=(self.n,))
            self.vectors, self.rows_done = None, 0
            _write_json(folder / "progress.json", {"rows_done": 0})

    def ensure_vectors(self, dim: int) -> np.ndarray:
        if self.vectors is None:
            if self.folder is None:
                self.vectors = np.zeros((self.n, dim), np.float32)
            else:
                self.vectors = np.lib.format.open_memmap(
                    self.folder / "vectors.npy", mode="w+", dtype=np.float32, shape=(self.n, dim))
        return self.vectors

    def commit(self, rows_done: int) -> None:
        self.rows_done = rows_done
        if self.folder is None:
            return
        if isinstance(self.vectors, np.memmap):
            self.vectors.flush()
        if isinstance(self.status, np.memmap):
            self.status.flush()
        _write_json(self.folder / "progress.json", {"rows_done": rows_done})

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        vectors = self.ensure_vectors(self.dim_hint) if self.vectors is None else self.vectors
        status = np.asarray(self.status)
        if self.folder is not None:
            meta = _read_json(self.folder / "meta.json") or dict(self.meta)
            meta.update(complete=True, dim=int(vectors.shape[1]))
            _write_json(self.folder / "meta.json", meta)
            vectors = np.load(self.folder / "vectors.npy", mmap_mode="r" if vectors.size else None)
            status = np.load(self.folder / "status.npy", mmap_mode="r" if self.n else None)
        return vectors, status


def _batches(start: int, stop: int, size: int) -> Iterator[tuple[int, int]]:
    for a in range(start, stop, size):
        yield a, min(a + size, stop)


def embed_items(
    items: Sequence[KbItem],
    scorer: Scorer,
    features: IndexFeatures = "image",
    *,
    cache_dir: str | os.PathLike | None = None,
    label: str = "kb",
    batch_size: int = 32,
    chunk_rows: int = 2048,
    num_workers: int = 1,
    progress: bool = True,
) -> Embeddings:
    """Embed ``items`` with ``scorer`` (resumably, when ``cache_dir`` is given).

    Args:
        items: the entities, ids unique.
        scorer: any :class:`~envs.scorers.openclip.Scorer` (its ``name`` keys the cache); text
            features also need its ``embed_texts`` (:class:`~envs.scorers.openclip.OpenClipScorer` has it).
        features: ``"image"``, ``"text"`` or ``"image+text"`` (normalized image and text
            embeddings summed and re-normalized, :func:`envs.scorers.openclip.combine_features`).
        cache_dir: root of the on-disk cache (see the module docstring); ``None``: memory only.
        label: names the cache folder (``"kb"``, ``"queries"``, ...).
        batch_size: items loaded and embedded together.
        chunk_rows: rows written to the cache at a time (the most an interruption loses).
        num_workers: threads decoding images ahead of the model (0: in the calling thread).
        progress: show a tqdm progress bar.

    Raises:
        ValueError: for unknown features, non-positive sizes or duplicate ids.
        TypeError: for text features with a scorer that cannot embed texts.
    """
    _check_embedding_request(scorer, features, batch_size, chunk_rows, num_workers)
    started = time.perf_counter()
    ids = [item.id for item in items]
    _check_unique_ids(ids)
    folder = None
    meta = {"version": FORMAT_VERSION, "scorer": scorer.name, "features": features, "count": len(items)}
    if cache_dir is not None:
        meta["content_hash"] = content_hash(items, features)
        folder = _cache_folder(Path(cache_dir), scorer.name, label, features, meta["content_hash"])
    store = _Store(folder, meta, ids, int(getattr(scorer, "dim", 0) or 0))
    stats = EmbeddingStats(items=len(items), reused=store.rows_done)
    stats.embedded = _embed_remaining_rows(items, scorer, features, store, label, batch_size, chunk_rows,
                                           num_workers, progress)
    vectors, status = store.finish()
    _count_incomplete_rows(status, stats)
    stats.seconds = time.perf_counter() - started
    valid = np.isin(status, (_FULL, _TEXT_ONLY, _IMAGE_ONLY))
    return Embeddings(ids=ids, vectors=vectors, valid=valid, stats=stats, folder=folder)


def _check_embedding_request(
    scorer: Scorer, features: str, batch_size: int, chunk_rows: int, num_workers: int
) -> None:
    """Raise (see :func:`embed_items`) for unknown features, text features with a scorer
    that cannot embed texts, or sizes out of range."""
    check_features(features)
    if features != "image" and not callable(getattr(scorer, "embed_texts", None)):
        raise TypeError(
            f"features={features!r} need a scorer with embed_texts(texts) -> (n, d), which "
            f"{type(scorer).__name__} (name={getattr(scorer, 'name', None)!r}) lacks; use features='image'"
        )
    if batch_size < 1 or chunk_rows < 1 or num_workers < 0:
        raise ValueError(f"batch_size={batch_size}, chunk_rows={chunk_rows} must be >= 1 and num_workers={num_workers} >= 0")


def _check_unique_ids(ids: list[str]) -> None:
    """Raise ``ValueError`` naming the first repeated id and the two items that hold it."""
    if len(set(ids)) != len(ids):
        first: dict[str, int] = {}
        for i, item_id in enumerate(ids):
            if item_id in first:
                raise ValueError(f"duplicate item id {item_id!r} (items {first[item_id]} and {i})")
            first[item_id] = i


def _cache_folder(cache_dir: Path, scorer_name: str, label: str, features: str, digest: str) -> Path:
    """The cache folder of one (scorer, label, features, content) embedding run."""
    return cache_dir / _safe(scorer_name) / f"{_safe(label)}-{features.replace('+', '_')}-{digest[:16]}"


def _embed_remaining_rows(
    items: Sequence[KbItem], scorer: Scorer, features: str, store: _Store, label: str,
    batch_size: int, chunk_rows: int, num_workers: int, progress: bool,
) -> int:
    """Embed the rows after ``store.rows_done`` into ``store``, committing every
    ``chunk_rows`` (what an interruption keeps); returns how many rows this call processed."""
    from tqdm.auto import tqdm

    embedded = 0
    bar = tqdm(total=len(items), initial=store.rows_done, desc=f"embedding {label} ({features})", unit=" items",
               disable=None if progress else True)
    pool = ThreadPoolExecutor(num_workers) if num_workers > 0 and features != "text" else None
    try:
        for chunk_start, chunk_stop in _batches(store.rows_done, len(items), chunk_rows):
            _embed_chunk(items, chunk_start, chunk_stop, scorer, features, batch_size, pool, store, bar)
            store.commit(chunk_stop)
            embedded += chunk_stop - chunk_start
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True)
    return embedded


def _count_incomplete_rows(status: np.ndarray, stats: EmbeddingStats) -> None:
    """Count into ``stats`` the rows left out and the ``image+text`` rows embedded from
    one feature only, by reason."""
    codes, counts = np.unique(status, return_counts=True)
    for code, count in zip(codes.tolist(), counts.tolist()):
        if code in _LEFT_OUT:
            stats.left_out[_LEFT_OUT[code]] = count
        elif code in _PARTIAL:
            stats.partial[_PARTIAL[code]] = count


def _embed_chunk(items, start, stop, scorer, features, batch_size, pool, store, bar) -> None:
    uses_image, uses_text = features != "text", features != "image"

    def submit(a: int, b: int) -> list:
        """Start decoding the images of rows a..b (futures, or the images themselves without a pool)."""
        paths = [items[i].image if uses_image else None for i in range(a, b)]
        if pool is None:
            return [_load_or_none(path) for path in paths]
        return [pool.submit(_load_or_none, path) for path in paths]

    batches = list(_batches(start, stop, batch_size))
    pending = submit(*batches[0]) if batches else []
    for n, (a, b) in enumerate(batches):
        images = [f.result() for f in pending] if pool is not None else pending
        if n + 1 < len(batches):
            pending = submit(*batches[n + 1])  # decode the next batch while this one runs through the model
        image_rows = [i for i, image in enumerate(images) if image is not None]
        text_rows = [i for i in range(b - a) if items[a + i].text] if uses_text else []
        image_vectors = dict(zip(image_rows, scorer.embed_images([images[i] for i in image_rows]))) if image_rows else {}
        text_vectors = dict(zip(text_rows, scorer.embed_texts([items[a + i].text for i in text_rows]))) if text_rows else {}
        for i in range(b - a):
            item, parts = items[a + i], []
            if i in image_vectors:
                parts.append(image_vectors[i])
            if i in text_vectors:
                parts.append(text_vectors[i])
            if features == "image":
                code = _FULL if parts else (_NO_IMAGE if item.image is None else _IMAGE_UNREADABLE)
            elif features == "text":
                code = _FULL if parts else _NO_TEXT
            elif len(parts) == 2:
                code = _FULL
            elif i in text_vectors:
                code = _TEXT_ONLY
            elif i in image_vectors:
                code = _IMAGE_ONLY
            else:
                code = _NO_IMAGE_OR_TEXT
            if parts:
                store.ensure_vectors(len(parts[0]))[a + i] = combine_features(parts)
            store.status[a + i] = code
        bar.update(b - a)


# ---------------------------------------------------------------- index


def _import_faiss():
    try:
        import faiss  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError(
            "backend='faiss' needs the faiss package, which is not installed: "
            "pip install 'region-rerank[faiss]' (or faiss-cpu); the default backend='numpy' needs nothing"
        ) from exc
    return faiss


def _top_k(scores: np.ndarray, cols: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best ``(cols, scores)`` by score descending, then col ascending."""
    rows_n, m = scores.shape
    k = min(k, m)
    if k == 0 or rows_n == 0:
        return np.zeros((rows_n, 0), np.int64), np.zeros((rows_n, 0), np.float32)
    if m > k:
        kth = np.partition(scores, m - k, axis=1)[:, m - k]
        rows, pos = np.nonzero(scores >= kth[:, None])  # ties at the k-th score all come along
    else:
        rows, pos = np.divmod(np.arange(rows_n * m), m)
    s, c = scores[rows, pos], cols[rows, pos]
    order = np.lexsort((c, -s, rows))
    rows, s, c = rows[order], s[order], c[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(rows_n))[rows]
    keep = rank < k
    return c[keep].reshape(rows_n, k), s[keep].reshape(rows_n, k)


_PAD = np.iinfo(np.int64).max


def _exact_top_k(queries: np.ndarray, chunk: np.ndarray, scores: np.ndarray, margin: np.ndarray, offset: int,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per query, the ``k`` best entities of ``chunk`` by float64 inner product rounded to
    float32 (score descending, then position), from the float32 ``scores``: only entities
    within ``margin`` of the k-th float32 score can be among them, and only those are
    rescored. Rows with fewer than ``k`` searchable entities are padded with ``-inf``."""
    rows_n, m = scores.shape
    kk = min(k, m)
    if kk == 0 or rows_n == 0:
        return np.zeros((rows_n, 0), np.int64), np.zeros((rows_n, 0), np.float32)
    kth = np.partition(scores, m - kk, axis=1)[:, m - kk] if m > kk else scores.min(axis=1)
    shortlist = (scores >= (kth - margin)[:, None]) & np.isfinite(scores)
    rows, pos = np.nonzero(shortlist)
    exact = np.einsum("ij,ij->i", queries[rows].astype(np.float64), chunk[pos].astype(np.float64)).astype(np.float32)
    out_s = np.full((rows_n, kk + 1), -np.inf, np.float32)  # one spare column: rows may run short
    out_c = np.full((rows_n, kk + 1), _PAD, np.int64)
    if len(rows):
        order = np.lexsort((pos, -exact, rows))
        rows, pos, exact = rows[order], pos[order], exact[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(rows_n))[rows]
        keep = rank < kk
        out_s[rows[keep], rank[keep]] = exact[keep]
        out_c[rows[keep], rank[keep]] = pos[keep] + offset
    return out_c[:, :kk], out_s[:, :kk]


class KnowledgeBaseIndex:
    """Entity ids and their L2-normalized float32 vectors, searchable by inner product.

    Args:
        ids: entity ids, row ``i`` for ``ids[i]``.
        vectors: ``(n, d)`` float32 unit rows (a memory map is fine: it is read in chunks).
        valid: ``(n,)`` bool, rows that may be returned (default: all).
        scorer_name: the :attr:`~envs.scorers.openclip.Scorer.name` that embedded them; queries must
            be embedded by the same scorer.
        features: what the vectors embed (``"image"``, ``"text"``, ``"image+text"``).
        backend: ``"numpy"`` (exact, the default) or ``"faiss"``.
        faiss_factory: FAISS ``index_factory`` string for ``backend="faiss"`` (``"Flat"``: exact).
    """

    def __init__(
        self,
        ids: Sequence[str],
        vectors: np.ndarray,
        valid: np.ndarray | None = None,
        *,
        scorer_name: str = "",
        features: str = "image",
        backend: Backend = "numpy",
        faiss_factory: str = "Flat",
        folder: Path | None = None,
        stats: EmbeddingStats | None = None,
    ) -> None:
        if vectors.ndim != 2 or vectors.shape[0] != len(ids):
            raise ValueError(f"vectors must be (len(ids), d) = ({len(ids)}, d), got {vectors.shape}")
        if backend not in ("numpy", "faiss"):
            raise ValueError(f"backend={backend!r}; expected 'numpy' or 'faiss'")
        self.ids = list(ids)
        self.vectors = vectors
        self.valid = np.ones(len(self.ids), bool) if valid is None else np.asarray(valid, bool)
        if self.valid.shape != (len(self.ids),):
            raise ValueError(f"valid must have shape ({len(self.ids)},), got {self.valid.shape}")
        self.scorer_name, self.features, self.folder, self.stats = scorer_name, features, folder, stats
        self.backend, self.faiss_factory = backend, faiss_factory
        self._all_valid = bool(self.valid.all())
        self._faiss = None
        self._faiss_rows: np.ndarray | None = None

    # ------------------------------------------------------------ construction
    @classmethod
    def from_embeddings(cls, embeddings: Embeddings, scorer_name: str, features: str, **kwargs) -> "KnowledgeBaseIndex":
        return cls(embeddings.ids, embeddings.vectors, embeddings.valid, scorer_name=scorer_name, features=features,
                   folder=embeddings.folder, stats=embeddings.stats, **kwargs)

    @classmethod
    def build(
        cls,
        items: Sequence[KbItem],
        scorer: Scorer,
        features: IndexFeatures = "image",
        *,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 32,
        chunk_rows: int = 2048,
        num_workers: int = 1,
        progress: bool = True,
        backend: Backend = "numpy",
        faiss_factory: str = "Flat",
    ) -> "KnowledgeBaseIndex":
        """Embed ``items`` (:func:`embed_items`, resumable with ``cache_dir``) and index them."""
        embeddings = embed_items(items, scorer, features, cache_dir=cache_dir, label="kb", batch_size=batch_size,
                                 chunk_rows=chunk_rows, num_workers=num_workers, progress=progress)
        return cls.from_embeddings(embeddings, scorer.name, features, backend=backend, faiss_factory=faiss_factory)

    @classmethod
    def load(cls, folder: str | os.PathLike, *, backend: Backend = "numpy", faiss_factory: str = "Flat") -> "KnowledgeBaseIndex":
        """A finished index from its cache folder (vectors memory-mapped, read-only).

        Raises:
            DataError: naming the folder when it is not a complete index.
        """
        folder = Path(folder)
        meta = _read_json(folder / "meta.json")
        if not isinstance(meta, dict) or not meta.get("complete"):
            raise DataError(f"{folder}: not a complete knowledge-base index (meta.json missing or build unfinished)")
        ids = _read_json(folder / "ids.json")
        if not isinstance(ids, list) or len(ids) != meta.get("count"):
            raise DataError(f"{folder}/ids.json: expected a list of {meta.get('count')} ids")
        vectors = np.load(folder / "vectors.npy", mmap_mode="r" if meta.get("dim") and ids else None)
        status = np.load(folder / "status.npy", mmap_mode="r" if ids else None)
        return cls(ids, vectors, np.isin(status, (_FULL, _TEXT_ONLY, _IMAGE_ONLY)), scorer_name=meta["scorer"],
                   features=meta["features"], backend=backend, faiss_factory=faiss_factory, folder=folder)

    # ------------------------------------------------------------ queries
    def __len__(self) -> int:
        """Number of searchable entities."""
        return int(self.valid.sum())

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Row positions of ``ids`` in :attr:`ids` (``-1`` for an id not in the index or
        without a vector); the id map is built once."""
        if getattr(self, "_row_map", None) is None:
            self._row_map = {entity: i for i, entity in enumerate(self.ids) if self.valid[i]}
        return np.array([self._row_map.get(entity, -1) for entity in ids], np.int64)

    def __repr__(self) -> str:
        return (f"KnowledgeBaseIndex({len(self)} of {len(self.ids)} entities, dim={self.dim}, "
                f"features={self.features!r}, scorer={self.scorer_name!r}, backend={self.backend!r})")

    def search(self, query_vectors: np.ndarray, k: int, **kwargs) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` best entities for each query vector.

        Args:
            query_vectors: ``(n, d)`` float query embeddings from the index's scorer
                (``scorer.embed_images(...)``), or one ``(d,)`` vector.
            k: entities per query (at most the number of searchable entities).
            **kwargs: ``query_batch`` and ``kb_chunk`` of :meth:`search_indices`.

        Returns:
            ``(ids, scores)``: ``ids[q]`` the entity ids best first, ``scores`` the
            ``(n, k)`` float32 inner products.
        """
        indices, scores = self.search_indices(query_vectors, k, **kwargs)
        return [[self.ids[i] for i in row if i >= 0] for row in indices.tolist()], scores

    def search_indices(
        self, query_vectors: np.ndarray, k: int, *, query_batch: int = 256, kb_chunk: int = 65536
    ) -> tuple[np.ndarray, np.ndarray]:
        """Like :meth:`search`, with row positions into :attr:`ids` (``(n, k)`` int64) instead of ids.

        Scores are float64 inner products rounded to float32, so an entity's score (and so
        the order of ties) does not depend on its position or the chunking: a float32 product
        shortlists the entities within its rounding bound of the k-th score, and those are
        rescored exactly. ``query_batch`` x ``kb_chunk`` float32 scores are held at a time
        (64 MiB with the defaults).
        With an approximate FAISS index a row may hold fewer than ``k`` hits: missing ones
        are ``-1`` with score ``-inf``.

        Raises:
            ValueError: for ``k < 1``, a dimension mismatch or non-finite query vectors.
        """
        queries = np.asarray(query_vectors, dtype=np.float32)
        if queries.ndim == 1:
            queries = queries[None, :]
        if k < 1 or query_batch < 1 or kb_chunk < 1:
            raise ValueError(f"k={k}, query_batch={query_batch}, kb_chunk={kb_chunk} must be >= 1")
        if queries.ndim != 2 or (len(self.ids) and queries.shape[1] != self.dim):
            raise ValueError(f"query vectors must be (n, {self.dim}), got {queries.shape}")
        if not np.isfinite(queries).all():
            raise ValueError("query vectors hold NaN or infinite values")
        k = min(k, len(self))
        if k == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        if self.backend == "faiss":
            return self._search_faiss(queries, k)
        blocks = [(qa, min(qa + query_batch, len(queries))) for qa in range(0, len(queries), query_batch)]
        best = [(np.zeros((qb - qa, 0), np.int64), np.zeros((qb - qa, 0), np.float32)) for qa, qb in blocks]
        query_norms = np.linalg.norm(queries.astype(np.float64), axis=1)
        for a in range(0, len(self.ids), kb_chunk):
            b = min(a + kb_chunk, len(self.ids))
            chunk = np.asarray(self.vectors[a:b], dtype=np.float32)
            invalid = None if self._all_valid else ~self.valid[a:b]
            chunk_norm = float(np.sqrt(np.max(np.einsum("ij,ij->i", chunk, chunk, dtype=np.float64)))) if b > a else 0.0
            for n, (qa, qb) in enumerate(blocks):
                scores = queries[qa:qb] @ chunk.T
                if invalid is not None:
                    scores[:, invalid] = -np.inf
                # |float32 dot - exact| <= d * u * |q| * |v| (u = 2**-24); shortlist everything
                # within twice that of the k-th float32 score, then score the shortlist exactly
                margin = 2 * (self.dim * 2.0**-24 * query_norms[qa:qb] * chunk_norm + 2.0**-23)
                chunk_c, chunk_s = _exact_top_k(queries[qa:qb], chunk, scores, margin, a, k)
                best_c, best_s = best[n]
                best[n] = _top_k(np.concatenate([best_s, chunk_s], 1), np.concatenate([best_c, chunk_c], 1), k)
        return np.concatenate([c for c, _ in best]), np.concatenate([s for _, s in best]).astype(np.float32)

    def _search_faiss(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        faiss = _import_faiss()
        if self._faiss is None:
            rows = np.flatnonzero(self.valid)
            index = faiss.index_factory(self.dim, self.faiss_factory, faiss.METRIC_INNER_PRODUCT)
            if not index.is_trained:
                index.train(np.ascontiguousarray(self.vectors[rows], dtype=np.float32))
            for a in range(0, len(rows), 65536):
                index.add(np.ascontiguousarray(self.vectors[rows[a : a + 65536]], dtype=np.float32))
            self._faiss, self._faiss_rows = index, rows
        # Over-fetch, then rescore FAISS's hits exactly (float64, rounded to float32) and order
        # them by the NumPy backend's rule, so exact ties at the k-th place resolve the same way.
        fetch = min(len(self._faiss_rows), k + max(k, 16))
        out_c, out_s = [], []
        for qa in range(0, len(queries), 256):
            block = np.ascontiguousarray(queries[qa : qa + 256])
            _, hits = self._faiss.search(block, fetch)
            found = hits >= 0
            rows = np.where(found, self._faiss_rows[np.where(found, hits, 0)], 0)
            gathered = np.asarray(self.vectors[rows.reshape(-1)], dtype=np.float64).reshape(*rows.shape, -1)
            exact = np.einsum("qd,qkd->qk", block.astype(np.float64), gathered).astype(np.float32)
            exact[~found] = -np.inf
            cols, scores = _top_k(exact, np.where(found, rows, _PAD), k)
            out_c.append(np.where(np.isfinite(scores), cols, -1))
            out_s.append(scores)
        return np.concatenate(out_c), np.concatenate(out_s)


# ---------------------------------------------------------------- KB files and the shared index


def write_kb_file(items: Sequence[KbItem], path: str | os.PathLike) -> Path:
    """Write ``items`` as a KB file (JSONL; image paths relative to its folder when inside
    it), renamed into place so a reader never sees half a file. Returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = Path(os.path.abspath(out.parent))
    with atomic_open(out, "w", encoding="utf-8") as handle:
        for item in items:
            record: dict[str, Any] = {"id": item.id}
            if item.image is not None:
                image = Path(os.path.abspath(item.image))
                record["image"] = image.relative_to(base).as_posix() if image.is_relative_to(base) else str(image)
            if item.text is not None:
                record["text"] = item.text
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return out


def load_kb_file(path: str | os.PathLike) -> list[KbItem]:
    """The entities of a KB file (see the module docstring), image paths made absolute.

    Raises:
        DataError: naming the file, line and field of a missing file, a record that is
            not an object, a missing or empty ``id``, a duplicate id, an ``image`` or
            ``text`` that is not a non-empty string, or an entity with neither.
    """
    source = Path(path)
    base = Path(os.path.abspath(source.parent))
    items: list[KbItem] = []
    first: dict[str, str] = {}
    for _, where, record in iter_jsonl(source):
        if not isinstance(record, dict):
            raise DataError(f"{where}: a KB record must be a JSON object, got {type(record).__name__}")
        item_id = record.get("id")
        if not isinstance(item_id, str) or not item_id.strip():
            raise DataError(f"{where}: field 'id' must be a non-empty string, got {item_id!r}")
        if item_id in first:
            raise DataError(f"{where}: field 'id': duplicate entity id {item_id!r} (first at {first[item_id]})")
        first[item_id] = where
        values = {}
        for key in ("image", "text"):
            value = record.get(key)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise DataError(f"{where}: field '{key}' must be a non-empty string, got {value!r}")
            values[key] = value
        if values["image"] is None and values["text"] is None:
            raise DataError(f"{where}: entity {item_id!r} has neither 'image' nor 'text'")
        image = Path(os.path.abspath(base / values["image"])) if values["image"] is not None else None
        items.append(KbItem(item_id, image=image, text=values["text"]))
    if not items:
        raise DataError(f"{source}: no KB entities")
    return items


def index_features(scorer: Scorer) -> IndexFeatures:
    """The index features whose vectors equal ``scorer``'s candidate embeddings: its
    ``candidate_features``, with ``"auto"`` as ``"image+text"`` (both agree entity by
    entity: an entity with one feature is embedded from it either way); ``"image"`` for a
    scorer that names none."""
    features = getattr(scorer, "candidate_features", "image")
    return "image+text" if features == "auto" else features  # type: ignore[return-value]


_SHARED: dict[tuple, KnowledgeBaseIndex] = {}
_SHARED_LOCK = threading.Lock()


def shared_index(
    kb_file: str | os.PathLike,
    scorer: Scorer,
    features: IndexFeatures | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> KnowledgeBaseIndex:
    """The index of ``kb_file`` under ``scorer``, built once per process (and, with
    ``cache_dir``, once per machine: a later process reads it back without a forward).

    Keyed by the file (path, size, modification time), the scorer's name and the features
    (default :func:`index_features`), so every env of a run shares one index. Thread-safe.
    """
    features = features or index_features(scorer)
    check_features(features)
    path = Path(os.path.abspath(kb_file))
    try:
        stat = path.stat()
    except OSError:
        raise DataError(f"{path}: knowledge-base file not found") from None
    key = (str(path), stat.st_size, stat.st_mtime_ns, scorer.name, features, str(cache_dir))
    with _SHARED_LOCK:
        index = _SHARED.get(key)
        if index is None:
            items = load_kb_file(path)
            index = KnowledgeBaseIndex.build(items, scorer, features, cache_dir=cache_dir, progress=progress,
                                             num_workers=0)
            _SHARED[key] = index
    return index
