"""One batched scorer service for all verl rollouts of a run (issue 11).

Without it every rollout builds its own env, whose ``reset`` encodes the FULL image again
(a group of ``n`` rollouts encodes the same image ``n`` times) and whose ``step`` encodes
its one crop in its own forward, behind a process-wide lock. With it:

- :class:`DynamicBatcher` (pure asyncio) collects the image requests of concurrent
  episodes and encodes them together: a batch closes when it holds ``max_batch`` images
  or its oldest request has waited ``max_wait_ms``. One thread owns the scorer, so the
  scorer's caches need no lock and nothing on the hot path takes one;
- :class:`ScoringService` adds the per-query cache: the FULL baseline embedding and the
  candidate embeddings of a query are computed once (concurrent rollouts of the query
  await the same computation) and shared by all its rollouts;
- :func:`service_actor` hosts the service as one named Ray actor per run (created by the
  first agent-loop worker that needs it, found by the others, as verl's reward-loop
  workers are named actors found by name), with a fractional GPU inside the trainer's
  GPU placement group when the run has GPUs (the scorer then runs on ``cuda``), on CPU
  otherwise. Outside Ray (tests, the benchmark) :class:`LocalHost` runs the same
  service on its own event-loop thread;
- :class:`EpisodeScorer` is the client the env holds: the :class:`envs.scorers.openclip.Scorer`
  interface for one query (``reset`` finds its FULL and candidates already fetched by
  :meth:`EpisodeScorer.prepare`, ``step`` sends its crop to the service and blocks its env
  thread, never the event loop).

Equality with the in-process env: the service calls the same scorer (same settings) and a
batch-invariant scorer (:class:`envs.scorers.openclip.OpenClipScorer` pads every forward to its
``batch_size``) embeds an image the same whatever it is batched with, so rewards, ranks
and scores equal the in-process env's exactly (tested bitwise with 64+ concurrent
episodes). ``forward_rows`` changes the scorer's fixed forward shape: faster batches on a
GPU, but embeddings then differ from the in-process env by float32 rounding (<= 1e-6).

Failure is loud: every request is bounded by ``timeout_s``; a dead service, a timeout or a
bad request raises :class:`ScoringError` naming the query, which the agent loop turns
into a failed episode (masked out of training, counted in the step's metrics).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from envs.data.pools import QueryPool, load_image
from envs.scorers.openclip import Scorer
from agents.verl.settings import ScoringServiceSettings
from envs.settings import ScorerSettings, settings_to_dict

ACTOR_NAME_PREFIX = "region_rerank_scoring_"


class ScoringError(RuntimeError):
    """A scoring request failed (service dead, timed out, or the request was bad)."""

    def __init__(self, query_id: str, message: str) -> None:
        super().__init__(f"scoring service: query {query_id!r}: {message}")
        self.query_id = query_id


def image_digest(image: Image.Image) -> str:
    """Content fingerprint of an image (mode, size, pixels)."""
    digest = hashlib.blake2b(f"{image.mode}{image.size}".encode(), digest_size=16)
    digest.update(image.tobytes())
    return digest.hexdigest()


def check_images(query_id: str, images: Any) -> list[Image.Image]:
    """``images`` as a list of non-empty PIL images, else :class:`ScoringError` naming the query."""
    if isinstance(images, Image.Image) or not isinstance(images, (list, tuple)):
        raise ScoringError(query_id, f"bad request: expected a list of PIL images, got {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ScoringError(query_id, f"bad request: item {i} is a {type(image).__name__}, not a PIL image")
        if image.width < 1 or image.height < 1:
            raise ScoringError(query_id, f"bad request: item {i} is an empty {image.size} image")
    return list(images)


# --------------------------------------------------------------------------- the batcher
@dataclass
class _Request:
    query_id: str
    images: list[Image.Image]
    future: asyncio.Future
    arrived: float


class DynamicBatcher:
    """Encodes the images of concurrent requests together (pure asyncio, no Ray).

    ``encode`` (e.g. a scorer's ``embed_images``) runs on ``executor`` (one thread that owns
    the scorer), one batch at a time; requests arriving meanwhile form the next batch.
    """

    def __init__(self, encode, executor: concurrent.futures.Executor, max_batch: int, max_wait_s: float) -> None:
        self._encode = encode
        self._executor = executor
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: list[_Request] = []
        self._arrival: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.batch_images: list[int] = []

    async def embed(self, query_id: str, images: Sequence[Image.Image]) -> np.ndarray:
        """``(n, d)`` embeddings of ``images``, encoded in a batch with other requests."""
        images = check_images(query_id, images)
        loop = asyncio.get_running_loop()
        if not images:
            return np.zeros((0, 0), np.float32)
        if self._worker is None or self._worker.done():
            self._arrival = asyncio.Event()
            self._worker = loop.create_task(self._run())
        request = _Request(query_id, images, loop.create_future(), loop.time())
        self._queue.append(request)
        self._arrival.set()
        return await request.future

    async def aclose(self) -> None:
        """Stop batching; queued requests fail at once."""
        for request in self._queue:
            if not request.future.done():
                request.future.set_exception(ScoringError(request.query_id, "the scoring service shut down"))
        self._queue.clear()
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass

    def _queued(self) -> int:
        return sum(len(r.images) for r in self._queue)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrival.clear()
                await self._arrival.wait()
            deadline = self._queue[0].arrived + self.max_wait_s
            while self._queued() < self.max_batch and (left := deadline - loop.time()) > 0:
                self._arrival.clear()
                try:
                    await asyncio.wait_for(self._arrival.wait(), left)
                except asyncio.TimeoutError:
                    break
            batch, size = [], 0
            while self._queue and (not batch or size + len(self._queue[0].images) <= self.max_batch):
                request = self._queue.pop(0)
                batch.append(request)
                size += len(request.images)
            images = [image for request in batch for image in request.images]
            try:
                vectors = await loop.run_in_executor(self._executor, self._encode, images)
                if len(vectors) != len(images):
                    raise ValueError(f"the scorer returned {len(vectors)} embeddings for {len(images)} images")
            except Exception as exc:  # every request of the batch fails, each naming its query
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(ScoringError(request.query_id, f"{type(exc).__name__}: {exc}"))
                continue
            self.batches += 1
            self.batch_images.append(len(images))
            start = 0
            for request in batch:
                if not request.future.done():
                    request.future.set_result(np.asarray(vectors[start : start + len(request.images)], np.float32))
                start += len(request.images)


# --------------------------------------------------------------------------- the service
@dataclass(frozen=True)
class FullView:
    """What every rollout of a query shares: its candidates' and its FULL view's embeddings."""

    candidates: np.ndarray
    """``(K, d)`` candidate embeddings"""
    embedding: np.ndarray
    """``(d,)`` embedding of the whole query image"""
    size: tuple[int, int]
    """the query image's (width, height): only a view of this size can be the FULL view"""
    digest: str
    """:func:`image_digest` of the query image"""


class ScoringService:
    """A scorer behind a :class:`DynamicBatcher`, with each query's FULL and candidates cached.

    All scorer calls run on one thread; the public methods are coroutines of one event loop.
    """

    def __init__(self, scorer: Scorer, settings: ScoringServiceSettings | None = None) -> None:
        self.settings = settings or ScoringServiceSettings()
        if self.settings.forward_rows is not None and hasattr(scorer, "batch_size"):
            scorer.batch_size = self.settings.forward_rows
        self.scorer = scorer
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="scorer")
        self._io = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="scorer-io")  # image decodes
        self.batcher = DynamicBatcher(
            scorer.embed_images, self._thread, self.settings.max_batch, self.settings.max_wait_ms / 1e3
        )
        self._queries: OrderedDict[tuple, asyncio.Future] = OrderedDict()
        self.prepared = 0
        """queries whose FULL and candidates were computed (the rest of ``prepare`` calls were shared)"""
        self.prepare_calls = 0

    @property
    def name(self) -> str:
        return self.scorer.name

    async def prepare(self, pool: QueryPool) -> FullView:
        """The candidates and FULL view of ``pool`` (:class:`FullView`), computed once per
        query and shared by every rollout of it."""
        self.prepare_calls += 1
        if not isinstance(pool, QueryPool):
            raise ScoringError(str(getattr(pool, "query_id", "?")), f"bad request: expected a QueryPool, got {type(pool).__name__}")
        key = (pool.query_id, str(pool.image), tuple(c.id for c in pool.candidates))
        entry = self._queries.get(key)
        if entry is None or (entry.done() and entry.exception() is not None):
            entry = asyncio.get_running_loop().create_task(self._prepare(pool))
            self._queries[key] = entry
            while len(self._queries) > self.settings.cached_queries:
                self._queries.popitem(last=False)
        self._queries.move_to_end(key)
        return await asyncio.shield(entry)

    async def _prepare(self, pool: QueryPool) -> FullView:
        loop = asyncio.get_running_loop()
        try:
            candidates = await loop.run_in_executor(self._thread, self.scorer.candidate_embeddings, pool)
            image = await loop.run_in_executor(self._io, load_image, pool.image)
        except Exception as exc:
            raise ScoringError(pool.query_id, f"{type(exc).__name__}: {exc}") from exc
        full = await self.batcher.embed(pool.query_id, [image])
        self.prepared += 1
        return FullView(np.asarray(candidates, np.float32), full[0], image.size, image_digest(image))

    async def embed(self, query_id: str, images: Sequence[Image.Image]) -> np.ndarray:
        """``(n, d)`` embeddings of a query's views, batched with every other request."""
        return await self.batcher.embed(query_id, images)

    def stats(self) -> dict[str, Any]:
        """Work counters: the scorer's, the batches and the per-query sharing."""
        counters = getattr(self.scorer, "stats", None)
        out = {key: int(value) for key, value in vars(counters).items()} if counters is not None else {}
        out.update(
            batches=self.batcher.batches,
            batch_images=list(self.batcher.batch_images),
            prepare_calls=self.prepare_calls,
            queries_prepared=self.prepared,
        )
        return out

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
        self._io.shutdown(wait=False, cancel_futures=True)


# --------------------------------------------------------------------------- hosts
class LocalHost:
    """A :class:`ScoringService` on its own event-loop thread in this process (no Ray).

    Calls return ``concurrent.futures.Future`` s, so any thread or event loop can wait on them.
    """

    def __init__(self, scorer: Scorer, settings: ScoringServiceSettings | None = None) -> None:
        self.settings = settings or ScoringServiceSettings()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="scoring-service", daemon=True)
        self._thread.start()
        self.service = ScoringService(scorer, self.settings)
        self.name = self.service.name

    def call(self, method: str, *args: Any) -> concurrent.futures.Future:
        if self._loop.is_closed() or not self._thread.is_alive():
            future: concurrent.futures.Future = concurrent.futures.Future()
            future.set_exception(RuntimeError("the scoring service has been shut down"))
            return future
        if method == "stats":
            return asyncio.run_coroutine_threadsafe(_value(self.service.stats()), self._loop)
        return asyncio.run_coroutine_threadsafe(getattr(self.service, method)(*args), self._loop)

    def shutdown(self) -> None:
        """Stop the service; later and pending requests fail (never hang)."""
        if not self._thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self.service.batcher.aclose(), self._loop).result(10)
        finally:
            self.service.close()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


async def _value(value: Any) -> Any:
    return value


class RayHost:
    """A :class:`ScoringService` Ray actor, as a host of :class:`EpisodeScorer` s."""

    def __init__(self, handle: Any, name: str, settings: ScoringServiceSettings) -> None:
        self.handle, self.name, self.settings = handle, name, settings

    def call(self, method: str, *args: Any) -> concurrent.futures.Future:
        return getattr(self.handle, method).remote(*args).future()


def _actor_class():
    import ray

    class ScoringServiceActor:
        """Thin Ray host of a :class:`ScoringService` (an async actor: one event loop, many requests)."""

        def __init__(self, scorer: dict, settings: dict, device: str | None) -> None:
            from envs.factory import make_scorer
            from envs.settings import settings_from_dict

            scorer_settings = settings_from_dict(ScorerSettings, scorer, "scorer settings")
            if device is not None:
                scorer_settings = dataclasses.replace(scorer_settings, device=device)
            self.service = ScoringService(make_scorer(scorer_settings), settings_from_dict(ScoringServiceSettings, settings, "scoring"))

        async def name(self) -> str:
            return self.service.name

        async def prepare(self, pool: QueryPool):
            return await self.service.prepare(pool)

        async def embed(self, query_id: str, images: list):
            return await self.service.embed(query_id, images)

        async def stats(self) -> dict:
            return self.service.stats()

    return ray.remote(ScoringServiceActor)


def _gpu_share(settings: ScoringServiceSettings) -> float:
    import ray

    if settings.num_gpus is not None:
        return float(settings.num_gpus)
    if os.environ.get("VERL_PLATFORM") == "cpu" or _verl_device() == "cpu":
        return 0.0  # verl-cpu's Ray GPUs are logical slots, not devices
    return 0.1 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def _verl_device() -> str | None:
    """The device of verl's platform in this process, if verl is loaded."""
    import sys

    if "verl" not in sys.modules:
        return None
    try:
        from verl.plugin.platform import get_platform

        return get_platform().device_name
    except Exception:
        return None


def _gpu_placement():
    """Scheduling into the first GPU placement group (verl's resource pools hold every GPU
    in placement-group bundles, of which verl's workers take ``1 / max_colocate_count``)."""
    import ray
    from ray.util.placement_group import PlacementGroup, placement_group_table
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    for pg_id, entry in placement_group_table().items():
        if entry.get("state") != "CREATED":
            continue
        for index, bundle in entry.get("bundles", {}).items():
            if bundle.get("GPU", 0) > 0:
                pg = PlacementGroup(ray._raylet.PlacementGroupID(bytes.fromhex(pg_id)))
                return PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=int(index))
    return None


def service_actor(scorer: ScorerSettings, settings: ScoringServiceSettings) -> RayHost:
    """The run's scoring-service actor (created by the first caller, found by the others)."""
    import ray

    digest = hashlib.sha256(repr((settings_to_dict(scorer), settings_to_dict(settings))).encode()).hexdigest()[:12]
    name = ACTOR_NAME_PREFIX + digest
    gpus = _gpu_share(settings)
    options: dict[str, Any] = dict(name=name, get_if_exists=True, max_concurrency=4096, num_cpus=0, num_gpus=gpus)
    if gpus > 0:
        strategy = _gpu_placement()
        if strategy is not None:
            options["scheduling_strategy"] = strategy
    handle = _actor_class().options(**options).remote(
        settings_to_dict(scorer), settings_to_dict(settings), "cuda" if gpus > 0 else None
    )
    try:
        scorer_name = ray.get(handle.name.remote(), timeout=settings.timeout_s)
    except Exception as exc:
        raise RuntimeError(
            f"scoring service actor {name!r} failed to start (waited up to {settings.timeout_s:.0f} s) "
            f"(num_gpus={gpus}): {type(exc).__name__}: {exc}"
        ) from exc
    return RayHost(handle, scorer_name, settings)


# --------------------------------------------------------------------------- the client
class EpisodeScorer:
    """The :class:`envs.scorers.openclip.Scorer` of one query's episode, served by a scoring host.

    ``await prepare()`` first (the FULL and candidate embeddings, shared by the query's
    rollouts); then the env's ``reset`` needs no forward and ``step`` sends its crop to the
    service (blocking the env's thread, not the event loop). Every failure raises
    :class:`ScoringError` naming the query.
    """

    def __init__(self, host: Any, pool: QueryPool, timeout_s: float | None = None) -> None:
        self.host, self.pool = host, pool
        self.name = host.name
        self.timeout_s = float(host.settings.timeout_s if timeout_s is None else timeout_s)
        self._full: FullView | None = None
        self.requests = 0
        """service requests this episode made (its ``prepare`` included)"""

    @property
    def query_id(self) -> str:
        return self.pool.query_id

    def _fail(self, exc: BaseException, what: str) -> ScoringError:
        if isinstance(exc, ScoringError):
            return exc
        if isinstance(exc, (concurrent.futures.TimeoutError, asyncio.TimeoutError)):
            return ScoringError(self.query_id, f"{what} timed out after {self.timeout_s:g} s")
        return ScoringError(self.query_id, f"{what} failed: {type(exc).__name__}: {exc}")

    def _submit(self, method: str, *args: Any) -> concurrent.futures.Future:
        self.requests += 1
        try:
            return self.host.call(method, *args)
        except Exception as exc:
            raise self._fail(exc, method) from exc

    async def prepare(self) -> "EpisodeScorer":
        """Fetch the query's candidates and FULL embedding (once per query in the service)."""
        future = self._submit("prepare", self.pool)
        try:
            self._full = await asyncio.wait_for(asyncio.wrap_future(future), self.timeout_s)
        except Exception as exc:
            future.cancel()
            raise self._fail(exc, "prepare") from exc
        return self

    def _wait(self, method: str, *args: Any) -> Any:
        future = self._submit(method, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except Exception as exc:
            future.cancel()
            raise self._fail(exc, method) from exc

    # ------------------------------------------------------------------ Scorer protocol
    def candidate_embeddings(self, pool: QueryPool) -> np.ndarray:
        if pool.query_id != self.query_id:
            raise ScoringError(self.query_id, f"bad request: this episode's scorer got query {pool.query_id!r}")
        if self._full is None:
            self._full = self._wait("prepare", self.pool)
        return self._full.candidates

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        images = check_images(self.query_id, images)
        full = self._full
        # The FULL view is recognised by content; the size test spares hashing every crop.
        rows: list[np.ndarray | None] = [
            full.embedding if full is not None and image.size == full.size and image_digest(image) == full.digest else None
            for image in images
        ]
        wanted = [i for i, row in enumerate(rows) if row is None]
        if wanted:
            vectors = self._wait("embed", self.query_id, [images[i] for i in wanted])
            for i, vector in zip(wanted, vectors):
                rows[i] = vector
        if not rows:
            return np.zeros((0, len(full.embedding) if full is not None else 0), np.float32)
        return np.stack(rows).astype(np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError(
            "EpisodeScorer serves the env's image views and the pool's candidates; text queries are not "
            "part of a RegionRerank episode (use the scorer itself, envs.factory.make_scorer)"
        )

    def score(self, views: Sequence[Image.Image], pool: QueryPool) -> np.ndarray:
        candidates = np.asarray(self.candidate_embeddings(pool), np.float64)
        embeddings = np.asarray(self.embed_images(views), np.float64)
        rows = [candidates @ row for row in embeddings]
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, len(candidates)), np.float32)

    def stats(self) -> dict[str, Any]:
        """The service's work counters (see :meth:`ScoringService.stats`)."""
        return self._wait("stats")


# --------------------------------------------------------------------------- per-process host
_HOSTS: dict[tuple, Any] = {}
_HOSTS_LOCK = threading.Lock()


def scoring_host(scorer: ScorerSettings, settings: ScoringServiceSettings, *, use_ray: bool | None = None):
    """This process's host of the run's service: the Ray actor inside a Ray job (verl's
    agent-loop workers), else a :class:`LocalHost` in this process. Built once per process."""
    if use_ray is None:
        try:
            import ray

            use_ray = ray.is_initialized()
        except ImportError:
            use_ray = False
    key = (scorer, settings, use_ray)
    with _HOSTS_LOCK:
        if key not in _HOSTS:
            if use_ray:
                _HOSTS[key] = service_actor(scorer, settings)
            else:
                from envs.factory import make_scorer

                _HOSTS[key] = LocalHost(make_scorer(scorer), settings)
        return _HOSTS[key]
