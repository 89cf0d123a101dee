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

from envs.adapters.images import QueryImageRoots
from envs.adapters.kb import KbEntry, KbImages, candidate_text, entity_key, load_knowledge_base, title_from_url
from envs.adapters.retrieval import RetrievalResults, RetrievedEntity
from envs.data import Candidate, DataError, Purpose, QueryPool, read_image_size

CandidateFeatures = Literal["image", "text", "both"]
MISSING_EXAMPLES = 5
"""How many missing query images the summary names."""

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolOptions:
    """How pools are cut and what a candidate carries."""

    top_k: int = 20
    """Pool size: the first ``top_k`` distinct retrieved entities (the paper's K=20)."""
    features: CandidateFeatures = "image"
    """``"image"``: the entity's first KB image (its text when it has no local image);
    ``"text"``: title + lead section; ``"both"``: image and text (Region-R1 sums them)."""
    max_text_chars: int = 1000
    """Candidate text is cut at a word boundary to this length (CLIP reads ~77 tokens)."""
    purpose: Purpose = "eval"
    """``"train"`` drops queries without a positive in the top-K; ``"eval"`` keeps them."""

    def __post_init__(self) -> None:
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.features not in ("image", "text", "both"):
            raise ValueError(f"features must be 'image', 'text' or 'both', got {self.features!r}")
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
    """:func:`~envs.adapters.kb.entity_key` of every identifier of the answer entity."""


@dataclass
class AdapterSummary:
    """What an adapter read, kept and dropped (``queries_read == queries_kept + sum(dropped)``)."""

    source: str
    purpose: Purpose
    top_k: int
    queries_read: int = 0
    queries_kept: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    """Queries dropped, by reason (e.g. ``question_type=2_hop``, ``query_image_missing``,
    ``no_retrieval_result``, ``no_positive_in_top_k``)."""
    without_positive: int = 0
    """Queries whose top-K holds no positive (kept for evaluation, dropped for training)."""
    query_images_missing: list[str] = field(default_factory=list)
    """The first few query images that were missing or unreadable."""
    kb_images_missing: int = 0
    """Candidates with no readable local KB image (they carry text instead)."""
    entities_missing_from_kb: int = 0
    """Candidates whose entity is not in the knowledge base (text from the URL/title)."""
    gold_entities_unmapped: int = 0
    """Queries whose gold entity id had no URL in the entity map (InfoSeek)."""

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def note_missing_image(self, image_ref: str) -> None:
        if len(self.query_images_missing) < MISSING_EXAMPLES:
            self.query_images_missing.append(image_ref)

    def report(self) -> str:
        """A few human-readable lines for the end of a run."""
        lines = [f"{self.source}: read {self.queries_read} queries, kept {self.queries_kept} (purpose={self.purpose})"]
        for reason, count in sorted(self.dropped.items(), key=lambda item: (-item[1], item[0])):
            lines.append(f"  dropped {count}: {reason}")
        fate = "dropped" if self.purpose == "train" else "kept, for CondR@1"
        lines.append(f"  without a positive in the top-{self.top_k}: {self.without_positive} ({fate})")
        missing_queries = self.dropped.get("query_image_missing", 0) + self.dropped.get("query_image_unreadable", 0)
        examples = f" e.g. {', '.join(self.query_images_missing)}" if self.query_images_missing else ""
        lines.append(
            f"  images missing: {missing_queries} query images{examples}; "
            f"{self.kb_images_missing} candidates without a readable KB image (text used instead)"
        )
        lines.append(f"  candidate entities missing from the knowledge base: {self.entities_missing_from_kb}")
        if self.gold_entities_unmapped:
            lines.append(f"  gold entity ids with no URL in the entity map: {self.gold_entities_unmapped}")
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


def _candidate(
    entity: RetrievedEntity,
    gold: frozenset[str],
    kb: dict[str, KbEntry],
    kb_images: KbImages | None,
    options: PoolOptions,
    summary: AdapterSummary,
) -> Candidate:
    key = entity_key(entity.url)
    entry = kb.get(key)
    if entry is None:
        summary.entities_missing_from_kb += 1
    title = entry.title if entry is not None else entity.title or title_from_url(entity.url)
    image = None
    if options.features != "text":
        image = kb_images.first_image(entity.url, entry, title) if kb_images is not None else None
        if image is None:
            summary.kb_images_missing += 1
    # Without a local image the entity is still ranked, through its text.
    wants_text = options.features != "image" or image is None
    text = candidate_text(title, entry.lead if entry else "", options.max_text_chars) if wants_text else None
    return Candidate(id=entity.url, positive=key in gold, image=image, text=text)


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
        DataError: when no query id is found in the retrieval results at all (a
            numbering mismatch, e.g. results for another split or with ``2_hop`` rows).
    """
    if options.features != "text" and kb_images is None:
        raise ValueError("features 'image'/'both' need kb_images (a KB-image root or map)")
    selected: list[tuple[AnnotatedQuery, list[RetrievedEntity]]] = []
    unmatched = 0
    for query in queries:
        ranking = retrieval.rankings.get(query.query_id)
        if ranking is None:
            unmatched += 1
            summary.drop("no_retrieval_result")
        elif not ranking:
            summary.drop("empty_retrieval_result")
        else:
            selected.append((query, top_k_entities(ranking, options.top_k)))
    if queries and unmatched == len(queries):
        example_keys = ", ".join(repr(k) for k in list(retrieval.rankings)[:3])
        raise DataError(
            f"{retrieval.source}: none of the {len(queries)} query ids (e.g. {queries[0].query_id!r}) has a "
            f"retrieval result (its keys look like {example_keys}); are the annotations and results the same split?"
        )
    needed = {entity_key(e.url) for _, entities in selected for e in entities}
    logger.info("%s: reading the %d entities of %d pools", knowledge_base, len(needed), len(selected))
    kb = load_knowledge_base(knowledge_base, keep=needed)
    pools = []
    for query, entities in selected:
        candidates = tuple(_candidate(e, query.gold, kb, kb_images, options, summary) for e in entities)
        pool = QueryPool(query_id=query.query_id, question=query.question, image=query.image, candidates=candidates)
        if not pool.has_positive:
            summary.without_positive += 1
            if options.purpose == "train":
                summary.drop("no_positive_in_top_k")
                continue
        pools.append(pool)
    summary.queries_kept = len(pools)
    return pools


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
