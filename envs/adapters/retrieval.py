"""Retriever output: the ranked Wikipedia entities per query (EchoSight and OMGM files).

Both are one JSON object keyed by query id: InfoSeek's ``data_id``, or ``E-VQA_<i>``
where ``i`` counts the E-VQA rows the retriever kept (every question type except
``2_hop``, see :mod:`envs.adapters.evqa`).

EchoSight (``test_reranker.py --save_result``)::

    {"E-VQA_0": {"retrieved_entries": [url, ...], "retrieval_similarities": [...],
                 "reranked_entries": [url, ...], "reranked_sections": [...]}}

OMGM (``step1_img2sum.py`` / ``step2b_IT2IT_rerank.py``)::

    {"E-VQA_0": {"retrieved_entities": [{"url": ..., "title": ...}, ...],
                 "retrieval_similarities": [...]}}

Only the ranked entity list is read; the similarities are the retriever's, not the
scorer's, and play no part in a query pool.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from envs.data import DataError

RetrievalFormat = Literal["auto", "echosight", "omgm"]


@dataclass(frozen=True)
class RetrievedEntity:
    """One ranked entity: its Wikipedia URL and, when the retriever gives it, the title."""

    url: str
    title: str | None = None


@dataclass(frozen=True)
class RetrievalResults:
    """Ranked entities per query id, and the file they came from (for messages)."""

    source: str
    rankings: Mapping[str, tuple[RetrievedEntity, ...]]


def _detect_format(data: dict, source: Path) -> str:
    for value in data.values():
        if isinstance(value, dict) and "retrieved_entities" in value:
            return "omgm"
        if isinstance(value, dict) and "retrieved_entries" in value:
            return "echosight"
    raise DataError(
        f"{source}: cannot tell the retrieval format: no entry has 'retrieved_entries' (EchoSight) "
        "or 'retrieved_entities' (OMGM)"
    )


def _echosight_ranking(value: dict, field_name: str, where: str) -> tuple[RetrievedEntity, ...]:
    if field_name not in value:
        raise DataError(f"{where}: missing field {field_name!r}")
    urls = value[field_name]
    if not isinstance(urls, list) or not all(isinstance(u, str) and u.strip() for u in urls):
        raise DataError(f"{where}: field {field_name!r} must be a list of URL strings, got {type(urls).__name__}")
    return tuple(RetrievedEntity(url=u.strip()) for u in urls)


def _omgm_ranking(value: dict, where: str) -> tuple[RetrievedEntity, ...]:
    entities = value.get("retrieved_entities")
    if not isinstance(entities, list):
        raise DataError(f"{where}: field 'retrieved_entities' must be a list, got {type(entities).__name__}")
    ranking = []
    for i, entity in enumerate(entities):
        if not isinstance(entity, dict) or not isinstance(entity.get("url"), str) or not entity["url"].strip():
            raise DataError(f"{where}: field 'retrieved_entities[{i}].url' must be a URL string, got {entity!r:.80}")
        title = entity.get("title")
        ranking.append(RetrievedEntity(url=entity["url"].strip(), title=title if isinstance(title, str) else None))
    return tuple(ranking)


def load_retrieval_results(
    path: str | os.PathLike,
    format: RetrievalFormat = "auto",
    *,
    use_reranked: bool = False,
) -> RetrievalResults:
    """Read an EchoSight or OMGM result file.

    Args:
        path: the result JSON.
        format: ``"echosight"``, ``"omgm"`` or ``"auto"`` (decided from the entries' keys).
        use_reranked: EchoSight only: rank by ``reranked_entries`` (its Q-Former
            re-ranking) instead of the retriever's ``retrieved_entries``.

    Raises:
        DataError: naming the file, the query id and the field for malformed entries.
    """
    source = Path(path)
    try:
        data: Any = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{source}: retrieval result file not found") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{source}: retrieval results must be a JSON object keyed by query id")
    resolved = _detect_format(data, source) if format == "auto" else format
    if use_reranked and resolved != "echosight":
        raise DataError(f"{source}: use_reranked needs EchoSight results (with 'reranked_entries'), this file is {resolved}")
    rankings: dict[str, tuple[RetrievedEntity, ...]] = {}
    for query_id, value in data.items():
        where = f"{source}: entry {query_id!r}"
        if not isinstance(value, dict):
            raise DataError(f"{where}: must be an object, got {type(value).__name__}")
        if resolved == "echosight":
            field_name = "reranked_entries" if use_reranked else "retrieved_entries"
            rankings[query_id] = _echosight_ranking(value, field_name, where)
        elif resolved == "omgm":
            rankings[query_id] = _omgm_ranking(value, where)
        else:
            raise ValueError(f"format must be 'auto', 'echosight' or 'omgm', got {format!r}")
    return RetrievalResults(source=str(source), rankings=rankings)
