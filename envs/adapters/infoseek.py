"""InfoSeek annotations (original JSONL) to query pools.

InfoSeek's ``infoseek_{train,val}.jsonl`` hold one JSON object per line with
``data_id``, ``image_id``, ``question``, ``answer``, ``data_split``, ...; the gold
entity is only in the "with KB" files (``infoseek_{train,val}_withkb.jsonl``), as a
Wikidata id (``entity_id``). Query images are OVEN/InfoSeek images found by
``image_id`` (see :mod:`envs.adapters.images`).

Retrievers rank Wikipedia URLs, so matching the gold entity needs an entity map
(Wikidata id -> Wikipedia URL). Without one, an entity id matches only rankings that
list entity ids themselves. EchoSight's InfoSeek CSV (already in E-VQA format, with
``wikipedia_url``) needs no map: read it with :mod:`envs.adapters.evqa`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from envs.adapters.images import QueryImageRoots
from envs.adapters.kb import KbImages, entity_key
from envs.adapters.pools import AdapterSummary, AnnotatedQuery, PoolOptions, build_pools, find_query_image
from envs.adapters.retrieval import RetrievalResults
from envs.data import DataError, QueryPool, iter_jsonl

ENTITY_ID_FIELDS: tuple[str, ...] = ("entity_id", "wikidata_id", "id")
ENTITY_URL_FIELDS: tuple[str, ...] = ("wikipedia_url", "url")


def _string(record: dict, name: str, where: str, hint: str = "") -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value.strip():
        shown = "missing" if name not in record else f"{type(value).__name__} {value!r:.60}"
        raise DataError(f"{where}: field {name!r} must be a non-empty string, got {shown}{hint}")
    return value.strip()


def _first_present(record: dict, names: tuple[str, ...], where: str) -> str:
    for name in names:
        if name in record:
            return _string(record, name, where)
    raise DataError(f"{where}: missing field: one of {', '.join(names)}")


def load_entity_map(path: str | os.PathLike) -> dict[str, str]:
    """Read a Wikidata-id -> Wikipedia-URL map.

    A ``.json`` file is one object ``{entity_id: url}``; any other file is JSONL with one
    of ``entity_id``/``wikidata_id``/``id`` and one of ``wikipedia_url``/``url`` per line.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: entity map not found")
    if source.suffix == ".json":
        try:
            data: Any = json.loads(source.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
            raise DataError(f"{source}: an entity map must be a JSON object {{entity_id: wikipedia_url}}")
        return dict(data)
    mapping: dict[str, str] = {}
    for _, where, record in iter_jsonl(source):
        if not isinstance(record, dict):
            raise DataError(f"{where}: a record must be a JSON object")
        mapping[_first_present(record, ENTITY_ID_FIELDS, where)] = _first_present(record, ENTITY_URL_FIELDS, where)
    return mapping


def read_infoseek_queries(
    path: str | os.PathLike,
    images: QueryImageRoots,
    summary: AdapterSummary,
    *,
    entity_field: str = "entity_id",
    entity_urls: Mapping[str, str] | None = None,
) -> list[AnnotatedQuery]:
    """Annotated queries from an InfoSeek ``*_withkb.jsonl`` file; drops are counted in ``summary``.

    Raises:
        DataError: naming the file, the 1-based line and the field of a malformed line.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: annotation file not found")
    queries: list[AnnotatedQuery] = []
    first_line: dict[str, int] = {}
    for line_number, where, record in iter_jsonl(source):
        if not isinstance(record, dict):
            raise DataError(f"{where}: a record must be a JSON object")
        summary.queries_read += 1
        query_id = _string(record, "data_id", where)
        if query_id in first_line:
            raise DataError(f"{where}: field 'data_id': duplicate query id {query_id!r} (first at line {first_line[query_id]})")
        first_line[query_id] = line_number
        question = _string(record, "question", where)
        image_id = _string(record, "image_id", where)
        entity_id = _string(record, entity_field, where, " (the gold entity is in the *_withkb.jsonl files)")
        image = find_query_image(images, "infoseek", image_id, where, summary)
        if image is None:
            continue
        gold = {entity_key(entity_id)}
        if entity_urls is not None:
            url = entity_urls.get(entity_id)
            if url is None:
                summary.gold_entities_unmapped += 1
            else:
                gold.add(entity_key(url))
        queries.append(AnnotatedQuery(query_id=query_id, question=question, image=image, gold=frozenset(gold)))
    return queries


def build_infoseek_pools(
    annotations: str | os.PathLike,
    retrieval: RetrievalResults,
    knowledge_base: str | os.PathLike,
    *,
    images: QueryImageRoots,
    kb_images: KbImages | None = None,
    entity_urls: Mapping[str, str] | None = None,
    entity_field: str = "entity_id",
    options: PoolOptions = PoolOptions(),
) -> tuple[list[QueryPool], AdapterSummary]:
    """Query pools from InfoSeek JSONL annotations and a retriever's results.

    Args:
        annotations: ``infoseek_{train,val}_withkb.jsonl``.
        retrieval: the retriever's ranking keyed by ``data_id``.
        knowledge_base: the KB JSON (e.g. EchoSight's 100K InfoSeek KB), streamed.
        images: where the InfoSeek images are (``infoseek`` root and/or ``id2image``).
        kb_images: where the KB images are; required unless ``options.features == "text"``.
        entity_urls: gold entity id -> Wikipedia URL (:func:`load_entity_map`).
        entity_field: the annotation field holding the gold entity id.
        options: pool size, candidate features and purpose.
    """
    summary = AdapterSummary(source=str(annotations), purpose=options.purpose, top_k=options.top_k)
    queries = read_infoseek_queries(annotations, images, summary, entity_field=entity_field, entity_urls=entity_urls)
    return build_pools(queries, retrieval, Path(knowledge_base), kb_images, options, summary), summary
