"""InfoSeek annotations, as published, to query pools.

InfoSeek (open-vision-language/infoseek, README "InfoSeek Annotation") publishes each
split's annotations in two JSONL files:

- ``infoseek_{train,val,test}.jsonl``: the questions, one object per line with
  ``data_id``, ``image_id``, ``question``, ``answer``, ``answer_eval``, ``data_split``;
- ``infoseek_{train,val}_withkb.jsonl`` ("KB mapping"): only ``data_id``, ``entity_id``
  (the Wikidata id of the entity in the image) and ``entity_text`` (its Wikipedia title
  on the 2022-10-01 dump, as OVEN's README describes the field).

They are joined on ``data_id``, as UniIR's ``infoseek_data_preprocessor.py`` does
(``withkb`` read as ``data_id -> entity_id``, questions de-duplicated by ``data_id``,
keeping the first). A repeated ``data_id`` is counted, never fatal.

Retrievers rank Wikipedia URLs (the keys of E-VQA's and EchoSight's KBs), so the gold
entity is tied to KB entries by **title**: the id's ``wikipedia_title`` in Wiki6M's title
file (``Wiki6M_ver_1_0_title_only.jsonl``, ``{"wikidata_id", "wikipedia_title"}`` per
line, published with InfoSeek and OVEN), or else the ``withkb`` line's ``entity_text``,
matched in :func:`~envs.data.adapters.kb.normalize_title` form against each KB entry's
``title`` and its URL. The Wikidata id itself also counts, for rankings that list ids.
Query images are OVEN images found by ``image_id`` (:mod:`envs.data.adapters.images`).

EchoSight's InfoSeek CSV (already in E-VQA format, with ``wikipedia_url``) needs none of
this: read it with :mod:`envs.data.adapters.evqa`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterator, Mapping

from envs.data.adapters.images import QueryImageRoots
from envs.data.adapters.kb import KbImages, entity_key, normalize_title
from envs.data.adapters.pools import (
    AdapterSummary,
    AnnotatedQuery,
    PoolOptions,
    build_pools,
    find_query_image,
    image_keys,
)
from envs.data.adapters.retrieval import RetrievalResults
from envs.data.pools import DataError, QueryPool, iter_jsonl


@dataclass(frozen=True)
class KbLink:
    """One ``withkb`` line: the entity a question is about."""

    entity_id: str
    entity_text: str | None
    where: str


def _string(record: dict, name: str, where: str, hint: str = "") -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        shown = "missing" if name not in record else f"{type(value).__name__} {value!r:.60}"
        raise DataError(f"{where}: field {name!r} must be a non-empty string, got {shown}{hint}")
    return value.strip()


def _optional_string(record: dict, name: str, where: str) -> str | None:
    value = record.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__} {value!r:.60}")
    return value.strip()


def _objects(path: Path) -> Iterator[tuple[int, str, dict]]:
    """``(line, "file:line", object)`` per non-blank line of a JSONL file (``.gz`` too)."""
    for line_number, where, record in iter_jsonl(path):
        if not isinstance(record, dict):
            raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
        yield line_number, where, record


def read_withkb(path: str | os.PathLike, summary: AdapterSummary) -> dict[str, KbLink]:
    """``data_id -> KbLink`` from an ``infoseek_*_withkb.jsonl`` file.

    A repeated ``data_id`` keeps its first line and is counted in ``summary.notes``
    (``withkb_duplicate_data_id``, or ``withkb_conflicting_data_id`` when the entity differs).

    Raises:
        DataError: naming the file, line and field of a malformed line.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: withkb file not found")
    links: dict[str, KbLink] = {}
    for _, where, record in _objects(source):
        data_id = _string(record, "data_id", where)
        entity_id = _string(record, "entity_id", where, " (a withkb line holds data_id, entity_id, entity_text)")
        link = KbLink(entity_id=entity_id, entity_text=_optional_string(record, "entity_text", where), where=where)
        first = links.get(data_id)
        if first is None:
            links[data_id] = link
        elif first.entity_id == entity_id:
            summary.note("withkb_duplicate_data_id")
        else:
            summary.note("withkb_conflicting_data_id")
    return links


def load_wiki6m_titles(path: str | os.PathLike, keep: Collection[str] | None = None) -> dict[str, str]:
    """``wikidata_id -> wikipedia_title`` from Wiki6M (``Wiki6M_ver_1_0_title_only.jsonl``, or
    the full ``Wiki6M_ver_1_0.jsonl[.gz]``, which has the same two fields), streamed.

    Args:
        path: the Wiki6M JSONL (``.gz`` is read as gzip).
        keep: the ids to keep (every line is still validated); ``None`` keeps all 6M.

    Raises:
        DataError: naming the file, line and field of a malformed line.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: Wiki6M title file not found")
    wanted = None if keep is None else set(keep)
    titles: dict[str, str] = {}
    for _, where, record in _objects(source):
        wikidata_id = _string(record, "wikidata_id", where, " (Wiki6M lines hold wikidata_id and wikipedia_title)")
        title = _string(record, "wikipedia_title", where)
        if wanted is None or wikidata_id in wanted:
            titles.setdefault(wikidata_id, title)
    return titles


@dataclass(frozen=True)
class GoldEntity:
    """A query's gold entity as the pool builder matches it: its entity keys, its titles in
    :func:`~envs.data.adapters.kb.normalize_title` form, and why it has no title (None
    when it has one). Empty: a query read without ``withkb``."""

    ids: frozenset[str] = frozenset()
    titles: frozenset[str] = frozenset()
    unmapped: str | None = None


def gold_entity(link: KbLink, titles: Mapping[str, str] | None, summary: AdapterSummary) -> GoldEntity:
    """The gold entity of a ``withkb`` link, titled by Wiki6M's ``titles`` when they hold
    its id (else counted as ``entity_id_not_in_wiki6m``), else by its ``entity_text``."""
    title = titles.get(link.entity_id) if titles is not None else None
    if titles is not None and title is None:
        summary.note("entity_id_not_in_wiki6m")
    title = title or link.entity_text
    ids = frozenset({entity_key(link.entity_id)})
    if title:
        return GoldEntity(ids, frozenset({normalize_title(title)}))
    return GoldEntity(ids, unmapped="entity_id_without_title")


def _withkb_line_hint(record: dict) -> str:
    """What to add to a question file's error when its line is a ``withkb`` line."""
    if "entity_id" in record and "question" not in record:
        return (" (this looks like a withkb line: --annotations takes infoseek_{split}.jsonl, --withkb the "
                "infoseek_{split}_withkb.jsonl)")
    return ""


def read_infoseek_queries(
    path: str | os.PathLike,
    images: QueryImageRoots,
    summary: AdapterSummary,
    *,
    withkb: Mapping[str, KbLink] | None = None,
    titles: Mapping[str, str] | None = None,
) -> list[AnnotatedQuery]:
    """Annotated queries from an ``infoseek_{split}.jsonl`` question file joined with its
    ``withkb`` links; every drop and mismatch is counted in ``summary``.

    Args:
        path: the question file.
        images: where the OVEN images are.
        summary: updated with reads, drops (``duplicate_data_id``, ``no_entity_in_withkb``,
            ``query_image_missing``, ...) and notes (``withkb_without_question``,
            ``entity_id_not_in_wiki6m``).
        withkb: ``data_id -> KbLink`` (:func:`read_withkb`); ``None`` reads queries without
            a gold entity (what ``recipes/retrieve.py`` needs).
        titles: Wiki6M's ``wikidata_id -> wikipedia_title`` (:func:`load_wiki6m_titles`);
            without it (or for an id it lacks) the title is the link's ``entity_text``.

    Raises:
        DataError: naming the file, the 1-based line and the field of a malformed line.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: annotation file not found")
    queries: list[AnnotatedQuery] = []
    seen: set[str] = set()
    for line_number, where, record in _objects(source):
        summary.queries_read += 1
        query_id = _string(record, "data_id", where)
        question = _string(record, "question", where, _withkb_line_hint(record))
        image_id = _string(record, "image_id", where)
        if query_id in seen:
            summary.drop("duplicate_data_id")
            continue
        seen.add(query_id)
        gold = GoldEntity()
        if withkb is not None:
            link = withkb.get(query_id)
            if link is None:
                summary.drop("no_entity_in_withkb")
                continue
            gold = gold_entity(link, titles, summary)
        image = find_query_image(images, "infoseek", image_id, where, summary)
        if image is None:
            continue
        queries.append(AnnotatedQuery(query_id=query_id, question=question, image=image, gold=gold.ids,
                                      gold_titles=gold.titles, image_keys=image_keys(image, image_id),
                                      gold_unmapped=gold.unmapped))
    if withkb is not None:
        summary.note("withkb_without_question", len(set(withkb) - seen))
    return queries


def build_infoseek_pools(
    questions: str | os.PathLike,
    withkb: str | os.PathLike,
    retrieval: RetrievalResults,
    knowledge_base: str | os.PathLike,
    *,
    images: QueryImageRoots,
    kb_images: KbImages | None = None,
    wiki6m: str | os.PathLike | None = None,
    options: PoolOptions = PoolOptions(),
) -> tuple[list[QueryPool], AdapterSummary]:
    """Query pools from InfoSeek's question and ``withkb`` files and a retriever's results.

    Args:
        questions: ``infoseek_{train,val}.jsonl``.
        withkb: ``infoseek_{train,val}_withkb.jsonl``.
        retrieval: the retriever's ranking keyed by ``data_id``.
        knowledge_base: the KB JSON (e.g. EchoSight's 100K InfoSeek KB), streamed.
        images: where the OVEN images are.
        kb_images: where the KB images are; required unless ``options.features == "text"``.
        wiki6m: ``Wiki6M_ver_1_0_title_only.jsonl`` (optional; ``entity_text`` otherwise).
        options: pool size, candidate features and purpose.
    """
    summary = AdapterSummary(source=str(questions), purpose=options.purpose, top_k=options.top_k)
    links = read_withkb(withkb, summary)
    titles = load_wiki6m_titles(wiki6m, keep={link.entity_id for link in links.values()}) if wiki6m else None
    queries = read_infoseek_queries(questions, images, summary, withkb=links, titles=titles)
    return build_pools(queries, retrieval, Path(knowledge_base), kb_images, options, summary), summary
