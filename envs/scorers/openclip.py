"""Frozen image-text scorers that rank a candidate pool against query views.

:class:`Scorer` is the protocol the env and the evaluator call (``name``, ``embed_images``,
``candidate_embeddings``: float32 L2-normalized rows; similarity is cosine);
:func:`check_scorer` validates one, and :class:`SharedScorer` is how a gym spec refers
to a built scorer. The built-in scorers (:class:`CachedScorer`: this module's
:class:`OpenClipScorer`, :class:`envs.scorers.huggingface.TransformersScorer`) compute candidate
embeddings once per candidate and cache them (in memory, and optionally on disk), so
scoring a new view of the query costs one image forward.

:class:`OpenClipScorer` wraps any open_clip model: a model-zoo name ("ViT-B-32", the
paper's "EVA02-B-16", ...) or a custom config JSON in ``envs/assets/model_configs/``,
with weights from a zoo tag, a local checkpoint file, or ``None`` for random weights.
Nothing here downloads anything by itself: a zoo tag needs the model hub (set
``HF_HUB_OFFLINE=1`` where it is unreachable so the failure is quick); a local file does
not.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import os
import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Protocol, Sequence, TypeVar, get_args, runtime_checkable

import numpy as np
import open_clip
import torch
from PIL import Image

from envs.data.pools import Candidate, DataError, QueryPool, load_image
from envs.atomic import atomic_open
from envs.settings import CandidateFeatures, Invariance

MODEL_CONFIG_DIR = Path(__file__).parents[1] / "assets" / "model_configs"
"""Custom open_clip model configs shipped with the project (registered at import)."""

if MODEL_CONFIG_DIR.is_dir():
    open_clip.add_model_config(MODEL_CONFIG_DIR)

Feature = Literal["image", "text"]
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")

T = TypeVar("T")


@runtime_checkable
class Scorer(Protocol):
    """What the environment and the evaluator call on a scorer; nothing else is required.

    - ``name``: a non-empty string fingerprinting the model and its weights (it namespaces
      caches and heads every report);
    - ``embed_images(images)``: ``(n, d)`` embeddings of ``n`` PIL images (query views);
    - ``candidate_embeddings(pool)``: ``(K, d)`` embeddings of the pool's ``K`` candidates,
      in pool order (cache them: the env asks once per query).

    Both return **float32, L2-normalized** rows of the same ``d`` (similarity is their dot
    product, the cosine); :func:`l2_normalize` makes any array so. :func:`check_scorer`
    validates a scorer against a pool; the env runs the same checks once, at its first
    ``reset``, on the arrays it fetches anyway, and refuses a scorer without these members
    when it is built.

    A scorer should be **batch-invariant**: the embedding of an image must not depend on
    what else is embedded in the same call or was embedded before (to 1e-6 at most per
    component), so that a view scores the same alone (``step``) and in a group
    (``score_actions``). :class:`OpenClipScorer` guarantees it with fixed-shape forwards.

    ``isinstance(x, Scorer)`` checks that the members exist (not what they return).
    :class:`OpenClipScorer` adds conveniences beyond the protocol (``embed_texts``,
    ``embed_candidates``, ``score``) that the env never calls.
    """

    name: str
    """Fingerprint of the model and its weights; namespaces every cache."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(n, d)`` float32 L2-normalized image embeddings."""
        ...

    def candidate_embeddings(self, pool: QueryPool) -> np.ndarray:
        """``(K, d)`` float32 L2-normalized embeddings of the pool's candidates (cached)."""
        ...


PROTOCOL_MEMBERS = ("name", "embed_images", "candidate_embeddings")
"""The members of :class:`Scorer`, in the order they are checked."""

NORM_TOLERANCE = 1e-3
"""Largest ``| ||row|| - 1 |`` an embedding row may have to count as L2-normalized."""


class ScorerError(TypeError, ValueError):
    """A scorer that does not keep the :class:`Scorer` contract; the message names the
    scorer and the member. A ``TypeError`` and a ``ValueError``, so either catches it."""


def describe_scorer(scorer: object) -> str:
    """How errors name a scorer: its class, and its ``name`` when it has a usable one."""
    cls = type(scorer)
    label = f"{cls.__module__}.{cls.__qualname__}"
    name = getattr(scorer, "name", None)
    return f"{label} (name={name!r})" if isinstance(name, str) and name else label


def check_scorer_members(scorer: object) -> None:
    """Refuse ``scorer`` unless it has a non-empty ``name`` and callable ``embed_images`` and
    ``candidate_embeddings`` (what the env and the evaluator call).

    Raises:
        ScorerError: naming the scorer and the first missing or wrong member.
    """
    who = describe_scorer(scorer)
    try:
        name = scorer.name  # type: ignore[attr-defined]
    except AttributeError:
        raise ScorerError(
            f"scorer {who} has no attribute 'name': a scorer needs a non-empty str name that fingerprints "
            "its model and weights (it keys caches and heads reports)"
        ) from None
    if not isinstance(name, str) or not name:
        raise ScorerError(f"scorer {who}: 'name' must be a non-empty str, got {name!r}")
    for member in PROTOCOL_MEMBERS[1:]:
        if not callable(getattr(scorer, member, None)):
            signature = "embed_images(images) -> (n, d)" if member == "embed_images" else "candidate_embeddings(pool) -> (K, d)"
            raise ScorerError(f"scorer {who} has no callable {member!r}: the Scorer protocol needs {signature}")


def check_embeddings(scorer: object, member: str, array: object, rows: int, dim: int | None = None) -> np.ndarray:
    """``array`` (what ``scorer.<member>`` returned) if it is a ``(rows, d)`` float32 array of
    finite L2-normalized rows, with ``d == dim`` when ``dim`` is given.

    Raises:
        ScorerError: naming the scorer, the member and what is wrong.
    """
    where = f"scorer {describe_scorer(scorer)}: {member}"
    if not isinstance(array, np.ndarray):
        raise ScorerError(f"{where} returned a {type(array).__name__}; expected a numpy float32 array of shape ({rows}, d)")
    if array.dtype != np.float32:
        raise ScorerError(f"{where} returned dtype {array.dtype}; expected float32 (np.asarray(x, np.float32))")
    if array.ndim != 2 or array.shape[0] != rows:
        raise ScorerError(f"{where} returned shape {array.shape}; expected ({rows}, d), one row per input")
    if dim is not None and array.shape[1] != dim:
        raise ScorerError(
            f"{where} returned {array.shape[1]}-dimensional embeddings, but the other member's are {dim}-dimensional"
        )
    if array.shape[1] == 0:
        raise ScorerError(f"{where} returned 0-dimensional embeddings")
    if not np.isfinite(array).all():
        raise ScorerError(f"{where} returned non-finite values (NaN or inf)")
    norms = np.linalg.norm(array.astype(np.float64), axis=1)
    worst = int(np.argmax(np.abs(norms - 1.0))) if len(norms) else 0
    if len(norms) and abs(norms[worst] - 1.0) > NORM_TOLERANCE:
        raise ScorerError(
            f"{where} returned rows that are not L2-normalized (row {worst} has norm {norms[worst]:.6g}); "
            "similarity is the dot product, so normalize them (envs.scorers.openclip.l2_normalize)"
        )
    return array


def check_scorer(scorer: object, pool: QueryPool, image: Image.Image | None = None) -> int:
    """Check ``scorer`` against :class:`Scorer` on ``pool``: its members, then
    ``candidate_embeddings(pool)`` and ``embed_images([image])`` (``image``: the pool's
    query image), their dtype, shape, norms and common dimension. Returns that dimension.

    Costs one candidate lookup and one image forward; the env does the same checks at its
    first ``reset`` without the extra calls.

    Raises:
        ScorerError: naming the scorer and the member that breaks the contract.
    """
    check_scorer_members(scorer)
    candidates = check_embeddings(scorer, "candidate_embeddings", scorer.candidate_embeddings(pool), len(pool.candidates))  # type: ignore[attr-defined]
    image = load_image(pool.image) if image is None else image
    check_embeddings(scorer, "embed_images", scorer.embed_images([image]), 1, candidates.shape[1])  # type: ignore[attr-defined]
    return int(candidates.shape[1])


@dataclass(frozen=True)
class SharedScorer:
    """A reference to a built scorer of this process, by key.

    The sharing rule: an env made by ``gym.make("RegionRerank-v0", scorer=<built scorer>)``
    records this reference in its spec's kwargs instead of the scorer (see
    :func:`shareable_spec`), so whatever Gymnasium copies or re-makes from the spec
    (``check_env``'s other render modes, ``wrapped.spec``, ``gym.make(env.spec)``) shares
    that one scorer: nothing deep-copies or pickles it. The registry holds the scorer
    weakly where it can (an object without weak references is held for the process's
    life), and a reference resolves only in the process that made it: to make envs in
    other processes, pass :class:`envs.settings.ScorerSettings` or a ``module:attr`` string.
    """

    key: str
    name: str
    """the scorer's :attr:`Scorer.name`, for reading a spec"""

    def resolve(self) -> "Scorer":
        """The scorer referenced.

        Raises:
            LookupError: if it no longer exists in this process (or the reference came
                from another process).
        """
        scorer = _SHARED.get(self.key)
        if scorer is None:
            scorer = _SHARED_STRONG.get(self.key)
        if scorer is None:
            raise LookupError(
                f"shared scorer {self.name!r} ({self.key}) does not exist in this process: a built scorer is shared "
                "only within the process that made the env, while it lives; pass ScorerSettings or a "
                "'module:attr' string as scorer= to make envs anywhere"
            )
        return scorer

    def __deepcopy__(self, memo: dict) -> "SharedScorer":
        return self


_SHARED: "weakref.WeakValueDictionary[str, Scorer]" = weakref.WeakValueDictionary()
_SHARED_STRONG: dict[str, "Scorer"] = {}
_SHARED_KEYS: dict[int, str] = {}
_SHARED_LOCK = threading.Lock()


def share_scorer(scorer: "Scorer") -> SharedScorer:
    """The :class:`SharedScorer` reference of ``scorer`` (the same key for the same object)."""
    with _SHARED_LOCK:
        key = _SHARED_KEYS.get(id(scorer))
        if key is None or (_SHARED.get(key) or _SHARED_STRONG.get(key)) is not scorer:
            key = f"shared-scorer-{len(_SHARED_KEYS)}-{id(scorer):x}"
            _SHARED_KEYS[id(scorer)] = key
            try:
                _SHARED[key] = scorer
            except TypeError:  # no weak references (e.g. __slots__ without __weakref__)
                _SHARED_STRONG[key] = scorer
        return SharedScorer(key, str(getattr(scorer, "name", "")))


def shareable_spec(spec: Any) -> Any:
    """``spec`` (a Gymnasium ``EnvSpec``) with a built scorer in its kwargs replaced by its
    :class:`SharedScorer` reference; anything else unchanged. The env applies it to the spec
    Gymnasium gives it (the sharing rule of :class:`SharedScorer`)."""
    kwargs = getattr(spec, "kwargs", None)
    if not isinstance(kwargs, dict):
        return spec
    scorer = kwargs.get("scorer")
    if scorer is None or isinstance(scorer, (SharedScorer, str, dict)) or not isinstance(scorer, Scorer):
        return spec
    return dataclasses.replace(spec, kwargs={**kwargs, "scorer": share_scorer(scorer)})


@dataclass
class ScorerStats:
    """Work counters, so tests and benchmarks can see what the caches saved."""

    image_forwards: int = 0
    """Batched forward passes of the image tower."""
    text_forwards: int = 0
    """Batched forward passes of the text tower."""
    images_encoded: int = 0
    texts_encoded: int = 0
    image_rows: int = 0
    """Rows the image tower computed, padding included (what the forwards cost)."""
    cache_hits: int = 0
    """Candidate features served from the in-memory cache."""
    disk_hits: int = 0
    """Candidate features loaded from the on-disk cache."""

    def count_forward(self, kind: Feature, items: int, rows: int | None = None) -> None:
        """Record one batched forward of the ``kind`` tower over ``items`` real inputs in
        ``rows`` rows (default ``items``: no padding)."""
        if kind == "image":
            self.image_forwards += 1
            self.images_encoded += items
            self.image_rows += items if rows is None else rows
        else:
            self.text_forwards += 1
            self.texts_encoded += items


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to unit L2 norm (float32)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def candidate_feature_kinds(candidate: Candidate, mode: CandidateFeatures, query_id: str | None = None) -> tuple[Feature, ...]:
    """Which embeddings make up a candidate's vector under ``mode``.

    ``"auto"`` uses image and text when the candidate has both, else whichever it has.

    Raises:
        ValueError: naming the candidate and query, if the candidate lacks a requested
            feature (or has neither).
    """
    available: tuple[Feature, ...] = tuple(
        kind for kind, present in (("image", candidate.image is not None), ("text", candidate.text is not None)) if present
    )
    wanted = available if mode == "auto" else tuple(mode.split("+"))
    missing = [kind for kind in wanted if kind not in available] or ([] if wanted else ["image or text"])
    if missing:
        raise ValueError(
            f"candidate {candidate.id!r}{'' if query_id is None else f' of query {query_id!r}'} has no {' and no '.join(missing)}, "
            f"which candidate_features={mode!r} requires"
        )
    return wanted  # type: ignore[return-value]


def combine_features(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """Region-R1's candidate vector: the sum of normalized feature embeddings, re-normalized."""
    return l2_normalize(np.sum(vectors, axis=0))


def file_digest(path: Path, chunk_bytes: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's contents."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def state_dict_digest(model: torch.nn.Module) -> str:
    """SHA-256 hex digest of a model's parameters and buffers (identifies random weights)."""
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def embed_candidates(scorer: Scorer, candidates: Sequence[Candidate]) -> np.ndarray:
    """``(K, d)`` vectors of ``candidates`` that belong to no query (a knowledge base):
    ``scorer.embed_candidates(candidates)`` when the scorer has that method (the built-in
    backends do), else its protocol method on a query-less pool holding them
    (``query_id="candidates"``, no question, no image)."""
    method = getattr(scorer, "embed_candidates", None)
    if callable(method):
        return method(candidates)
    pool = QueryPool(query_id="candidates", question="", image=Path(), candidates=tuple(candidates))
    return scorer.candidate_embeddings(pool)


def cosine_scores(views: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """float32 ``views @ candidates.T`` of unit rows, one float64 matrix-vector product
    per view rounded once: a matrix product's rounding depends on how many rows it has."""
    candidates = np.asarray(candidates, np.float64)
    rows = [candidates @ row for row in np.asarray(views, np.float64)]
    return np.stack(rows).astype(np.float32) if rows else np.zeros((0, len(candidates)), np.float32)


def _candidate_image(index: int, candidate: Candidate, pool: QueryPool | None) -> Image.Image:
    """A candidate's image; a failure names the candidate (and, given ``pool``, its query,
    record and field ``candidates[index].image``)."""
    try:
        return load_image(candidate.image)  # type: ignore[arg-type]
    except DataError as exc:
        if pool is None:
            raise DataError(f"candidate {candidate.id!r}: field 'image': {exc}") from exc
        where = f"{pool.where}: field 'candidates[{index}].image'" if pool.where else f"candidates[{index}].image"
        raise DataError(f"{where}: candidate {candidate.id!r} of query {pool.query_id!r}: {exc}") from exc


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@functools.lru_cache(maxsize=None)
def _tokenizer(model: str, text_config: str) -> Callable:
    """open_clip's tokenizer for ``model``, shared: building the BPE tokenizer takes ~0.25 s.

    ``text_config`` (the model's text config as JSON) is part of the cache key because a
    re-registered config of the same name may change the context length.
    """
    return open_clip.get_tokenizer(model)


def _resolve_pretrained(model: str, pretrained: str | os.PathLike | None) -> tuple[str | None, Literal["random", "file", "tag"]]:
    """Classify ``pretrained`` as random weights, a checkpoint file or a zoo tag."""
    if pretrained is None:
        return None, "random"
    path = Path(pretrained).expanduser()
    if path.is_file():
        return str(path), "file"
    tags = open_clip.list_pretrained_tags_by_model(model)
    if not isinstance(pretrained, os.PathLike) and pretrained in tags:
        return pretrained, "tag"
    if isinstance(pretrained, os.PathLike) or os.sep in str(pretrained) or path.suffix in CHECKPOINT_SUFFIXES:
        raise FileNotFoundError(f"open_clip checkpoint file not found: {path} (pretrained= for model {model!r})")
    raise ValueError(
        f"pretrained={pretrained!r} is neither an existing checkpoint file nor a known tag of model {model!r} "
        f"(known tags: {tags or 'none'})"
    )


def forward_rows(batch_size: int, batch_invariant: bool, invariance: Invariance, device: torch.device | str) -> int | None:
    """Rows of every forward of a batch-invariant scorer: 1 (``"rows"``, and ``"auto"`` on
    CPU, where a forward costs about its rows, so padding a single view to ``batch_size``
    multiplies its cost), ``batch_size`` (``"padded"``, and ``"auto"`` elsewhere: a GPU
    encodes a padded batch in about the time of one row), or ``None`` (free batching,
    ``batch_invariant=False``)."""
    if not batch_invariant:
        return None
    if invariance == "auto":
        invariance = "rows" if torch.device(device).type == "cpu" else "padded"
    return 1 if invariance == "rows" else batch_size


class CachedScorer:
    """What the built-in scorers share: candidate vectors assembled from per-feature
    embeddings (image, text or both, :func:`candidate_feature_kinds`), cached in memory and
    optionally on disk, plus :meth:`score` / :meth:`embed_candidates` conveniences.

    A subclass sets ``name``, ``dim``, ``candidate_features``, ``batch_size``, ``stats``,
    ``cache_dir`` (:meth:`_init_cache`) and implements ``embed_images`` and ``embed_texts``
    (``(n, dim)`` float32 unit rows).
    """

    name: str
    dim: int
    candidate_features: CandidateFeatures
    batch_size: int
    stats: ScorerStats
    cache_dir: Path | None

    def _init_cache(self, cache_dir: str | os.PathLike | None) -> None:
        """Empty caches; the on-disk one in ``cache_dir/<name>`` (``name`` must be set)."""
        self.cache_dir = None if cache_dir is None else Path(cache_dir) / re.sub(r"[^A-Za-z0-9._-]", "_", self.name)
        self._memory: dict[tuple[Feature, str, str], np.ndarray] = {}

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    # ------------------------------------------------------------ candidates
    def embed_candidates(self, candidates: Sequence[Candidate]) -> np.ndarray:
        """``(K, d)`` float32 L2-normalized vectors of ``candidates`` (any list of them, e.g. a
        whole knowledge base), in order; only features not cached yet are encoded, images
        and texts each in batched forwards. Shares the caches of :meth:`candidate_embeddings`.

        Raises:
            ValueError: naming the candidate, if it lacks a feature ``candidate_features`` needs.
            DataError: naming the candidate, if its image cannot be read.
        """
        return self._embed_candidates(tuple(candidates), None)

    def candidate_embeddings(self, pool: QueryPool) -> np.ndarray:
        """``(K, d)`` vectors of the pool's candidates (:meth:`embed_candidates`); errors name
        the pool's query and record (file, line, field) too."""
        return self._embed_candidates(pool.candidates, pool)

    def _embed_candidates(self, candidates: Sequence[Candidate], pool: QueryPool | None) -> np.ndarray:
        plans = self._plans(candidates, pool)
        found: dict[tuple[Feature, str, str], np.ndarray] = {}
        missing: dict[tuple[Feature, str, str], tuple[int, Candidate]] = {}
        for index, (candidate, kinds) in enumerate(plans):
            for key in (self._key(candidate, kind) for kind in kinds):
                if key in found or key in missing:
                    continue
                vector = self._memory.get(key)
                if vector is not None:
                    self.stats.cache_hits += 1
                elif (vector := self._load_disk(key)) is not None:
                    self.stats.disk_hits += 1
                    self._memory[key] = vector
                if vector is None:
                    missing[key] = (index, candidate)
                else:
                    found[key] = vector
        for key, vector in self._encode_features(missing, pool).items():
            self._memory[key] = found[key] = vector
            self._save_disk(key, vector)
        return self._assemble(plans, found)

    def score(self, views: Sequence[Image.Image], pool: QueryPool) -> np.ndarray:
        """``(n, K)`` float32 cosine similarities; the ``n`` views share batched forwards.

        Batch-invariant: a view's row is the same (to 1e-6 at most; in fact bitwise)
        whatever other views are scored with it (see ``batch_invariant``).
        """
        candidates = self.candidate_embeddings(pool)  # first: a bad pool fails before any view forward
        return cosine_scores(self.embed_images(views), candidates)

    def score_uncached(self, views: Sequence[Image.Image], pool: QueryPool) -> np.ndarray:
        """Like :meth:`score`, but re-encodes every candidate on every call.

        Baseline for benchmarks only: this is what the public Region-R1 reward does, with
        its forwards batched freely (``batch_size`` rows, no padding: the baseline at its
        fastest). It neither reads nor fills the caches.
        """
        with self._batched_freely():
            plans = self._plans(pool.candidates, pool)
            needed = {self._key(c, kind): (i, c) for i, (c, kinds) in enumerate(plans) for kind in kinds}
            candidates = self._assemble(plans, self._encode_features(needed, pool))
            return cosine_scores(self.embed_images(views), candidates)

    @contextlib.contextmanager
    def _batched_freely(self) -> Iterator[None]:
        """Within: forwards of up to ``batch_size`` rows, unpadded (scorers with ``forward_rows``)."""
        if not hasattr(self, "forward_rows"):
            yield
            return
        rows, self.forward_rows = self.forward_rows, None
        try:
            yield
        finally:
            self.forward_rows = rows

    def _plans(self, candidates: Sequence[Candidate], pool: QueryPool | None) -> list[tuple[Candidate, tuple[Feature, ...]]]:
        query_id = None if pool is None else pool.query_id
        return [(c, candidate_feature_kinds(c, self.candidate_features, query_id)) for c in candidates]

    @staticmethod
    def _key(candidate: Candidate, kind: Feature) -> tuple[Feature, str, str]:
        source = str(candidate.image) if kind == "image" else str(candidate.text)
        return kind, candidate.id, source

    def _assemble(self, plans, vectors: dict[tuple[Feature, str, str], np.ndarray]) -> np.ndarray:
        rows = [combine_features([vectors[self._key(c, kind)] for kind in kinds]) for c, kinds in plans]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, self.dim), dtype=np.float32)

    def _encode_features(self, wanted: dict[tuple[Feature, str, str], tuple[int, Candidate]], pool: QueryPool | None) -> dict:
        """Encode the given candidate features (key -> (index, candidate)), images and texts
        each in batched forwards."""
        image_keys = [key for key in wanted if key[0] == "image"]
        text_keys = [key for key in wanted if key[0] == "text"]
        vectors: dict[tuple[Feature, str, str], np.ndarray] = {}
        for keys in _chunks(image_keys, self.batch_size):
            images = [_candidate_image(*wanted[key], pool) for key in keys]
            vectors.update(zip(keys, self.embed_images(images)))
        for keys in _chunks(text_keys, self.batch_size):
            vectors.update(zip(keys, self.embed_texts([key[2] for key in keys])))
        return vectors

    # ------------------------------------------------------------ disk cache
    def _disk_path(self, key: tuple[Feature, str, str]) -> Path | None:
        if self.cache_dir is None:
            return None
        # hashed names: candidate ids and sources may hold any character
        return self.cache_dir / f"{key[0]}-{hashlib.sha256(chr(0).join(key).encode()).hexdigest()[:32]}.npy"

    def _load_disk(self, key: tuple[Feature, str, str]) -> np.ndarray | None:
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return None
        try:
            vector = np.load(path)
        except (OSError, ValueError, EOFError):
            return None  # not a whole .npy (written outside this module): recompute and rewrite it
        return vector if vector.shape == (self.dim,) else None

    def _save_disk(self, key: tuple[Feature, str, str], vector: np.ndarray) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        # write-then-rename so concurrent workers never read a half-written file
        with atomic_open(path, "wb") as f:
            np.save(f, vector.astype(np.float32))


class OpenClipScorer(CachedScorer):
    """A frozen open_clip model as a :class:`Scorer`, with cached candidate embeddings.

    Args:
        model: an open_clip model name (``open_clip.list_models()``), including configs
            in ``envs/assets/model_configs/`` or added with ``open_clip.add_model_config``.
        pretrained: a zoo tag (needs the model hub), a local checkpoint file (``.pt``,
            ``.bin``, ``.safetensors``, ...), or ``None`` for random weights.
        device: torch device for the model and its inputs.
        candidate_features: how a candidate becomes a vector: ``"image"``, ``"text"``,
            ``"image+text"`` (sum of the normalized embeddings, re-normalized, as in
            Region-R1) or ``"auto"`` (image+text when a candidate has both, else the one
            it has).
        cache_dir: folder for the on-disk candidate cache (one ``.npy`` per candidate
            feature in a per-:attr:`name` subfolder), or ``None`` for memory only.
        batch_size: images or texts per forward pass (with ``invariance="padded"``:
            exactly this many rows, shorter chunks padded with blank inputs).
        batch_invariant: keep every forward's shape fixed. A float32 forward's rounding
            depends on the batch shape (the kernels pick their blocking and summation
            order by it), so with free batching an image's embedding differs by ~1e-7
            with the number of images encoded with it, and a view would score
            differently alone (``step``) than in a group (``score_actions``). With a
            fixed shape an item's embedding is the same whatever else is in the batch
            or was cached before (bound: 1e-6 per component; measured: bitwise
            identical, and the scores too, which are one float64 matrix-vector product
            per view). ``False`` batches freely (``batch_size`` rows per forward).
        invariance: which fixed shape keeps ``batch_invariant``: ``"rows"`` forwards
            every item alone (one row: nothing else can enter its arithmetic, and a
            single view, an env step, costs one image, not ``batch_size``);
            ``"padded"`` pads every forward to ``batch_size`` rows (a group costs one
            forward, which pays where batching is nearly free: a GPU); ``"auto"`` is
            ``"rows"`` on CPU and ``"padded"`` on any other device.

    Cached candidate features are keyed by candidate id together with the image path
    or text they came from, so two datasets reusing an id do not share a vector. The
    in-memory cache lives as long as the scorer and is not bounded.
    """

    def __init__(
        self,
        model: str,
        pretrained: str | os.PathLike | None = None,
        *,
        device: str = "cpu",
        candidate_features: CandidateFeatures = "auto",
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 8,
        batch_invariant: bool = True,
        invariance: Invariance = "auto",
    ) -> None:
        if invariance not in get_args(Invariance):
            raise ValueError(f"invariance={invariance!r}; expected one of {get_args(Invariance)}")
        if candidate_features not in get_args(CandidateFeatures):
            raise ValueError(f"candidate_features={candidate_features!r}; expected one of {get_args(CandidateFeatures)}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected >= 1")
        model_config = open_clip.get_model_config(model)
        if model_config is None:
            raise ValueError(
                f"unknown open_clip model {model!r}: see open_clip.list_models() for known names, "
                f"or add a config JSON to {MODEL_CONFIG_DIR}"
            )
        weights, kind = _resolve_pretrained(model, pretrained)
        try:
            # pretrained_text=False: random weights must never fetch a text tower from the hub
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model, pretrained=weights, device=device, pretrained_text=False
            )
        except RuntimeError as exc:
            if kind == "tag":
                raise RuntimeError(
                    f"could not load open_clip weights {model!r}/{weights!r}: zoo tags are downloaded from the "
                    f"model hub; where it is unreachable, pass a local checkpoint file as pretrained=. ({exc})"
                ) from exc
            if kind == "file":
                raise RuntimeError(f"checkpoint {weights} does not fit open_clip model {model!r}: {exc}") from exc
            raise
        self.model.eval().requires_grad_(False)
        self.tokenizer = _tokenizer(model, json.dumps(model_config.get("text_cfg"), sort_keys=True))
        self.device = torch.device(device)
        self.candidate_features: CandidateFeatures = candidate_features
        self.batch_size = batch_size
        self.batch_invariant = batch_invariant
        self.invariance: Invariance = invariance
        self.forward_rows = forward_rows(batch_size, batch_invariant, invariance, self.device)
        """rows of every forward, ``None`` for free batching (:func:`forward_rows`)"""
        self.dim = int(model_config["embed_dim"])
        self.stats = ScorerStats()

        if kind == "random":  # random weights differ per instance; name them by their values
            label, weight_id = "random", state_dict_digest(self.model)
        elif kind == "file":
            label, weight_id = Path(weights).name, file_digest(Path(weights))
        else:
            label, weight_id = weights, weights
        digest = hashlib.sha256((json.dumps(model_config, sort_keys=True) + "\0" + weight_id).encode()).hexdigest()
        self.name = f"{model}@{label}:{digest[:12]}"
        self._init_cache(cache_dir)

    def __deepcopy__(self, memo: dict) -> "OpenClipScorer":
        # A frozen model is shared, never copied: gymnasium deep-copies an env's spec
        # kwargs (``wrapped.spec``, ``gym.make(spec)``), which would duplicate the weights.
        return self

    def __repr__(self) -> str:
        return f"OpenClipScorer(name={self.name!r}, candidate_features={self.candidate_features!r}, device={str(self.device)!r})"

    # ------------------------------------------------------------ embeddings
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(n, d)`` float32 L2-normalized embeddings in forwards of :attr:`forward_rows`
        rows (one per image on CPU); batch-invariant (see ``batch_invariant``)."""
        return self._encode(images, self._image_batch, self.model.encode_image, "image")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, d)`` float32 L2-normalized embeddings in forwards of :attr:`forward_rows`
        rows (one per text on CPU); batch-invariant (see ``batch_invariant``)."""
        return self._encode(texts, self.tokenizer, self.model.encode_text, "text")

    def _image_batch(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess(image) for image in images])

    def _encode(self, items: Sequence, to_tensor: Callable, encode: Callable, kind: Feature,
                rows: int | None = ...) -> np.ndarray:
        """Embeddings of ``items`` in forwards of ``rows`` rows (default :attr:`forward_rows`;
        ``None``: free batches of ``batch_size``)."""
        rows = self.forward_rows if rows is ... else rows
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        for batch in _chunks(list(items), rows or self.batch_size):
            inputs = to_tensor(batch)
            if rows is not None and len(batch) < rows:
                # Blank rows keep the forward's shape fixed; each row's result depends
                # only on that row, so the padding never reaches the real items.
                padding = inputs.new_zeros((rows - len(batch), *inputs.shape[1:]))
                inputs = torch.cat([inputs, padding])
            with torch.inference_mode():
                features = encode(inputs.to(self.device), normalize=True)[: len(batch)]
            out.append(features.float().cpu().numpy())
            self.stats.count_forward(kind, len(batch), len(inputs))
        return l2_normalize(np.concatenate(out))
