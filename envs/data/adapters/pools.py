"""Turning annotated queries plus a retriever's ranking into query pools.

Shared by the E-VQA and InfoSeek adapters: take each query's top-K retrieved entities,
build a candidate per entity from the knowledge base (its first image, its title and
lead section, or both), mark as positive the entities that match the gold entity, and
count everything dropped or missing in an :class:`AdapterSummary`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from envs.data.adapters.images import QueryImageRoots
from envs.data.adapters.kb import KbEntry, KbImages, candidate_text, entity_key, scan_knowledge_base, title_from_url
from envs.data.adapters.retrieval import RetrievalResults, RetrievedEntity
from envs.data.pools import Candidate, DataError, Purpose, QueryPool, read_image_size

PoolFeatures = Literal["image", "text", "both", "image+text"]
"""What a candidate of a built pool carries (the spelling of ``recipes/retrieve.py --features``;
``both`` is ``image+text``); the scorer's choice among them is ``envs.settings.CandidateFeatures``."""
MISSING_EXAMPLES = 5
"""How many missing query images the summary names."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolOptions:
    """How pools are cut and what a candidate carries."""

    top_k: int = 20
    """Pool size: the first ``top_k`` distinct retrieved entities (the paper's K=20)."""
    features: PoolFeatures = "image"
    """``"image"``: the entity's first KB image (its text when it has no local image);
    ``"text"``: title + lead section; ``"image+text"`` (or ``"both"``): image and text
    (Region-R1 sums them; the spelling of ``recipes/retrieve.py --features``)."""
    max_text_chars: int = 1000
    """Candidate text is cut at a word boundary to this length (CLIP reads ~77 tokens)."""
    purpose: Purpose = "eval"
    """``"train"`` drops queries without a positive in the top-K; ``"eval"`` keeps them."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.features not in ("image", "text", "both", "image+text"):
            raise ValueError(f"features must be 'image', 'text' or 'image+text' ('both'), got {self.features!r}")
        if self.features == "image+text":
            object.__setattr__(self, "features", "both")
        if self.purpose not in ("train", "eval"):
            raise ValueError(f"purpose must be 'train' or 'eval', got {self.purpose!r}")
        if self.max_text_chars < 1:
            raise ValueError(f"max_text_chars must be >= 1, got {self.max_text_chars}")


@dataclass(frozen=True)
class AnnotatedQuery:
    """A query read from annotations, before it meets the retriever's ranking."""

    query_id: str
    question: str
    image: Path
    """The query image, found on disk and readable."""
    gold: frozenset[str]
    """:func:`~envs.data.adapters.kb.entity_key` of every identifier of the answer entity."""
    gold_titles: frozenset[str] = frozenset()
    """:func:`~envs.data.adapters.kb.normalize_title` forms of the answer entity's title: every KB
    entry bearing one is a positive too (InfoSeek names its entity by Wikidata id and title)."""
    image_keys: tuple[str, ...] = ()
    """Keys of the query image in image-keyed results (``E_VQA_Hard_Neg.json``), tried in order."""
    gold_unmapped: str | None = None
    """Why the answer entity could not be tied to a KB entry at reading time (e.g.
    ``entity_id_without_title``); ``None`` when nothing is known to be missing."""


@dataclass
class AdapterSummary:
    """What an adapter read, kept and dropped (``queries_read == queries_kept + sum(dropped)``).

    Every count about pools and candidates (``without_positive`` in evaluation,
    ``kb_images_missing``, ``entities_missing_from_kb``, ``gold_unmapped``) is taken over
    the pools that are written, so it can be checked against the output file.
    """

    source: str
    purpose: Purpose
    top_k: int
    queries_read: int = 0
    queries_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    """Queries dropped, by reason (e.g. ``question_type=2_hop``, ``query_image_missing``,
    ``no_retrieval_result``, ``no_positive_in_top_k``, ``duplicate_data_id``)."""
    without_positive: int = 0
    """Written pools whose top-K holds no positive (evaluation; training drops them as
    ``no_positive_in_top_k``)."""
    query_images_missing: list[str] = field(default_factory=list)
    """The first few query images that were missing or unreadable."""
    kb_images_missing: int = 0
    """Written candidates with no readable local KB image (they carry text instead)."""
    entities_missing_from_kb: int = 0
    """Written candidates whose entity is not in the knowledge base (text from the URL/title)."""
    gold_unmapped: dict[str, int] = field(default_factory=dict)
    """Written pools whose answer entity is tied to no KB entry, by reason
    (``entity_id_without_title``, ``title_not_in_kb``)."""
    notes: dict[str, int] = field(default_factory=dict)
    """Mismatches between input files that drop no query, by reason (e.g.
    ``withkb_duplicate_data_id``, ``withkb_without_question``, ``title_from_entity_text``)."""

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def note(self, reason: str, count: int = 1) -> None:
        if count:
            self.notes[reason] = self.notes.get(reason, 0) + count

    def note_missing_image(self, image_ref: str) -> None:
        if len(self.query_images_missing) < MISSING_EXAMPLES:
            self.query_images_missing.append(image_ref)

    def report(self) -> str:
        """A few human-readable lines for the end of a run."""
        lines = [f"{self.source}: read {self.queries_read} queries, kept {self.queries_kept} (purpose={self.purpose})"]
        for reason, count in sorted(self.dropped.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  dropped {count}: {reason}")
        if self.purpose == "train":
            lines.append(f"  without a positive in the top-{self.top_k}: {self.dropped.get('no_positive_in_top_k', 0)} (dropped)")
        else:
            lines.append(f"  without a positive in the top-{self.top_k}: {self.without_positive} (kept, for CondR@1)")
        missing_queries = self.dropped.get("query_image_missing", 0) + self.dropped.get("query_image_unreadable", 0)
        examples = f" e.g. {', '.join(self.query_images_missing)}" if self.query_images_missing else ""
        lines.append(
            f"  images missing: {missing_queries} query images{examples}; "
            f"{self.kb_images_missing} written candidates without a readable KB image (text used instead)"
        )
        lines.append(f"  written candidates whose entity is missing from the knowledge base: {self.entities_missing_from_kb}")
        if self.gold_unmapped:
            reasons = ", ".join(f"{reason} {count}" for reason, count in sorted(self.gold_unmapped.items()))
            lines.append(f"  written queries whose gold entity maps to no KB entry: {sum(self.gold_unmapped.values())} ({reasons})")
        for reason, count in sorted(self.notes.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  note {count}: {reason}")
        return "\n".join(lines)


def top_k_entities(ranking: tuple[RetrievedEntity, ...], k: int) -> list[RetrievedEntity]:
    """The first ``k`` entities of a ranking, counting each article once."""
    seen: set[str] = set()
    kept = []
    for entity in ranking:
        key = entity_key(entity.url)
        if key not in seen:
            seen.add(key)
            kept.append(entity)
            if len(kept) == k:
                break
    return kept


@dataclass
class _PoolCounts:
    kb_images_missing: int = 0
    entities_missing_from_kb: int = 0


def _candidate(
    entity: RetrievedEntity,
    gold: frozenset[str],
    kb: dict[str, KbEntry],
    kb_images: KbImages | None,
    options: PoolOptions,
    counts: _PoolCounts,
) -> Candidate:
    key = entity_key(entity.url)
    entry = kb.get(key)
    if entry is None:
        counts.entities_missing_from_kb += 1
    title = entry.title if entry is not None else entity.title or title_from_url(entity.url)
    image = None
    if options.features != "text":
        image = kb_images.first_image(entity.url, entry, title) if kb_images is not None else None
        if image is None:
            counts.kb_images_missing += 1
    # Without a local image the entity is still ranked, through its text.
    wants_text = options.features != "image" or image is None
    text = candidate_text(title, entry.lead if entry else "", options.max_text_chars) if wants_text else None
    return Candidate(id=entity.url, positive=key in gold, image=image, text=text)


def ranking_for(query: AnnotatedQuery, retrieval: RetrievalResults) -> tuple[RetrievedEntity, ...] | None:
    """The retriever's ranking for ``query`` (by query id, or by its image for image-keyed results)."""
    if retrieval.keyed_by == "image":
        return next((retrieval.rankings[k] for k in query.image_keys if k in retrieval.rankings), None)
    return retrieval.rankings.get(query.query_id)


@dataclass(frozen=True)
class RetrievedQuery:
    """An annotated query and its top-K retrieved entities, in the retriever's order."""

    query: AnnotatedQuery
    entities: list[RetrievedEntity]


def build_pools(
    queries: list[AnnotatedQuery],
    retrieval: RetrievalResults,
    knowledge_base: str | Path,
    kb_images: KbImages | None,
    options: PoolOptions,
    summary: AdapterSummary,
) -> list[QueryPool]:
    """Pools for ``queries`` from their top-K retrieved entities; updates ``summary``.

    Raises:
        DataError: when no query is found in the retrieval results at all (a numbering
            mismatch, e.g. results for another split or with ``2_hop`` rows).
    """
    if options.features != "text" and kb_images is None:
        raise ValueError("features 'image'/'both' need kb_images (a KB-image root or map)")
    selected = retrieved_queries(queries, retrieval, options.top_k, summary)
    needed = {entity_key(e.url) for retrieved in selected for e in retrieved.entities}
    titles = {t for retrieved in selected for t in retrieved.query.gold_titles}
    logger.info("%s: reading the %d entities of %d pools", knowledge_base, len(needed), len(selected))
    kb, title_keys = scan_knowledge_base(knowledge_base, keep=needed, titles=titles)
    pools = []
    for retrieved in selected:
        pool = query_pool(retrieved, kb, title_keys, kb_images, options, summary)
        if pool is not None:
            pools.append(pool)
    summary.queries_kept = len(pools)
    return pools


def retrieved_queries(
    queries: list[AnnotatedQuery], retrieval: RetrievalResults, top_k: int, summary: AdapterSummary
) -> list[RetrievedQuery]:
    """Each query with its ``top_k`` retrieved entities; a query without a result, or with
    an empty one, is dropped and counted in ``summary``.

    Raises:
        DataError: when no query has a result at all (see :func:`build_pools`).
    """
    selected = []
    unmatched = 0
    for query in queries:
        ranking = ranking_for(query, retrieval)
        if ranking is None:
            unmatched += 1
            summary.drop("no_retrieval_result")
        elif not ranking:
            summary.drop("empty_retrieval_result")
        else:
            selected.append(RetrievedQuery(query, top_k_entities(ranking, top_k)))
    if queries and unmatched == len(queries):
        raise _no_retrieval_result(queries, retrieval)
    return selected


def _no_retrieval_result(queries: list[AnnotatedQuery], retrieval: RetrievalResults) -> DataError:
    """The error for results that hold none of ``queries``: what was looked up, and what the
    results' keys look like."""
    example_keys = ", ".join(repr(k) for k in list(retrieval.rankings)[:3])
    if retrieval.keyed_by == "image":
        looked_up = f"query images (e.g. {', '.join(repr(k) for k in queries[0].image_keys)})"
    else:
        looked_up = f"query ids (e.g. {queries[0].query_id!r})"
    return DataError(
        f"{retrieval.source}: none of the {len(queries)} {looked_up} has a retrieval result "
        f"(its keys look like {example_keys}); are the annotations and results the same split?"
    )


def query_pool(
    retrieved: RetrievedQuery,
    kb: dict[str, KbEntry],
    title_keys: dict[str, list[str]],
    kb_images: KbImages | None,
    options: PoolOptions,
    summary: AdapterSummary,
) -> QueryPool | None:
    """The pool of one query's retrieved entities, counted in ``summary``; None when a
    training pool holds no positive (dropped and counted)."""
    query = retrieved.query
    gold = gold_keys(query, title_keys)
    counts = _PoolCounts()
    candidates = tuple(_candidate(e, gold, kb, kb_images, options, counts) for e in retrieved.entities)
    pool = QueryPool(query_id=query.query_id, question=query.question, image=query.image, candidates=candidates)
    if not pool.has_positive:
        if options.purpose == "train":
            summary.drop("no_positive_in_top_k")
            return None
        summary.without_positive += 1
    summary.kb_images_missing += counts.kb_images_missing
    summary.entities_missing_from_kb += counts.entities_missing_from_kb
    unmapped = gold_unmapped(query, title_keys)
    if unmapped is not None:
        summary.gold_unmapped[unmapped] = summary.gold_unmapped.get(unmapped, 0) + 1
    return pool


def gold_keys(query: AnnotatedQuery, title_keys: dict[str, list[str]]) -> frozenset[str]:
    """The KB keys that count as ``query``'s gold entity: its own, and every KB entry's
    that bears one of its titles."""
    gold = set(query.gold)
    for title in query.gold_titles:
        gold.update(title_keys.get(title, ()))
    return frozenset(gold)


def gold_unmapped(query: AnnotatedQuery, title_keys: dict[str, list[str]]) -> str | None:
    """Why ``query``'s gold entity maps to no KB entry: the query's own reason, else
    ``title_not_in_kb`` when it has titles and the KB bears none of them; None when it maps."""
    if query.gold_unmapped is None and query.gold_titles and not any(t in title_keys for t in query.gold_titles):
        return "title_not_in_kb"
    return query.gold_unmapped


def find_query_image(
    roots: QueryImageRoots, dataset_name: str, image_id: str, where: str, summary: AdapterSummary
) -> Path | None:
    """The readable query image for ``image_id``, or ``None`` after counting the drop."""
    path = roots.resolve(dataset_name, image_id, where)
    if path is None:
        summary.drop("query_image_missing")
        summary.note_missing_image(f"{dataset_name}:{image_id}")
        return None
    try:
        read_image_size(path)
    except DataError:
        summary.drop("query_image_unreadable")
        summary.note_missing_image(str(path))
        return None
    return path


def image_keys(image: Path, image_id: str) -> tuple[str, ...]:
    """How image-keyed results name a query image: its file name up to the first dot (what
    EchoSight's ``E_VQA_Hard_Neg.json`` is keyed by), then the annotation's image id."""
    return tuple(dict.fromkeys((image.name.split(".")[0], image_id)))
