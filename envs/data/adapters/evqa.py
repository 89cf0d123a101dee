"""Encyclopedic-VQA annotations (CSV) to query pools.

E-VQA's ``train.csv`` / ``val.csv`` / ``test.csv`` hold one row per textual question
with ``question``, ``answer``, ``dataset_image_ids`` (up to 5 ids, ``|``-separated),
``dataset_name`` (``inaturalist`` or ``landmarks``), ``question_type`` (``templated``,
``automatic``, ``multi_answer`` or ``2_hop``), ``wikipedia_url`` (two ``|``-separated
URLs for ``2_hop``), ``wikipedia_title``, ``encyclopedic_vqa_split``, ...
EchoSight and OMGM ship InfoSeek converted to the same CSV format, with
``dataset_name == "infoseek"``, ``question_type == "infoseek"`` and a ``data_id`` column.

Query ids follow EchoSight and OMGM, so their result files line up: InfoSeek rows use
``data_id``; E-VQA rows are numbered ``E-VQA_<i>`` over the rows those retrievers keep,
i.e. after removing ``2_hop`` questions (whose second hop is not in the image). Like
them, a query uses the first of its image ids (the image the retriever saw) and the
first Wikipedia URL is the gold entity.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from envs.data.adapters.images import QueryImageRoots
from envs.data.adapters.kb import KbImages, entity_key
from envs.data.adapters.pools import AdapterSummary, AnnotatedQuery, PoolOptions, build_pools, find_query_image, image_keys
from envs.data.adapters.retrieval import RetrievalResults
from envs.data.pools import DataError, QueryPool

RETRIEVED_QUESTION_TYPES: tuple[str, ...] = ("automatic", "templated", "multi_answer", "infoseek")
"""The question types EchoSight and OMGM retrieve for (and number); ``2_hop`` is not one."""
REQUIRED_COLUMNS: tuple[str, ...] = ("question", "dataset_image_ids", "dataset_name", "question_type", "wikipedia_url")


def _field(row: dict, name: str, where: str) -> str:
    value = row.get(name)
    if value is None or not value.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return value.strip()


def _first_of(value: str, name: str, where: str) -> str:
    first = value.split("|")[0].strip()
    if not first:
        raise DataError(f"{where}: field {name!r} starts with an empty entry: {value!r:.80}")
    return first


def read_evqa_queries(path: str | os.PathLike, images: QueryImageRoots, summary: AdapterSummary) -> list[AnnotatedQuery]:
    """Annotated queries from an E-VQA-format CSV; drops are counted in ``summary``.

    Raises:
        DataError: naming the file, the 1-based line and the field of a malformed row.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: annotation file not found")
    queries: list[AnnotatedQuery] = []
    first_line: dict[str, int] = {}
    retrieved_index = 0
    with source.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DataError(f"{source}:1: missing column(s) {', '.join(missing)}; an E-VQA CSV needs {', '.join(REQUIRED_COLUMNS)}")
        line = reader.line_num + 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise DataError(f"{source}:{reader.line_num}: malformed CSV: {exc}") from exc
            row_line, line = line, reader.line_num + 1  # quoted fields may span several lines
            where = f"{source}:{row_line}"
            summary.queries_read += 1
            question_type = (row.get("question_type") or "").strip()
            if question_type not in RETRIEVED_QUESTION_TYPES:
                summary.drop(f"question_type={question_type or '<empty>'}")
                continue
            query_id = f"E-VQA_{retrieved_index}"
            retrieved_index += 1
            dataset_name = _field(row, "dataset_name", where)
            if dataset_name == "infoseek":
                query_id = _field(row, "data_id", where)
            if query_id in first_line:
                raise DataError(f"{where}: field 'data_id': duplicate query id {query_id!r} (first at line {first_line[query_id]})")
            first_line[query_id] = row_line
            question = _field(row, "question", where)
            image_id = _first_of(_field(row, "dataset_image_ids", where), "dataset_image_ids", where)
            gold = entity_key(_first_of(_field(row, "wikipedia_url", where), "wikipedia_url", where))
            image = find_query_image(images, dataset_name, image_id, where, summary)
            if image is not None:
                queries.append(AnnotatedQuery(query_id=query_id, question=question, image=image, gold=frozenset({gold}),
                                              image_keys=image_keys(image, image_id)))
    return queries


def build_evqa_pools(
    annotations: str | os.PathLike,
    retrieval: RetrievalResults,
    knowledge_base: str | os.PathLike,
    *,
    images: QueryImageRoots,
    kb_images: KbImages | None = None,
    options: PoolOptions = PoolOptions(),
) -> tuple[list[QueryPool], AdapterSummary]:
    """Query pools from an E-VQA-format CSV and a retriever's results.

    Args:
        annotations: ``train.csv`` / ``val.csv`` / ``test.csv`` (or EchoSight's InfoSeek CSV).
        retrieval: the retriever's ranking, from :func:`~envs.data.adapters.retrieval.load_retrieval_results`.
        knowledge_base: the KB JSON (streamed; only the top-K entities are kept).
        images: where the query images are.
        kb_images: where the KB images are; required unless ``options.features == "text"``.
        options: pool size, candidate features and purpose.

    Returns:
        The pools and an :class:`AdapterSummary` of what was read, kept and dropped.
    """
    summary = AdapterSummary(source=str(annotations), purpose=options.purpose, top_k=options.top_k)
    queries = read_evqa_queries(annotations, images, summary)
    return build_pools(queries, retrieval, Path(knowledge_base), kb_images, options, summary), summary
