"""Retriever output: the ranked Wikipedia entities per query (EchoSight, OMGM and our own files).

The per-query files are one JSON object keyed by query id: InfoSeek's ``data_id``, or
``E-VQA_<i>`` where ``i`` counts the E-VQA rows the retriever kept (every question type
except ``2_hop``, see :mod:`envs.data.adapters.evqa`).

EchoSight (``test/test_reranker.py --save_result``; also what ``recipes/retrieve.py`` writes)::

    {"E-VQA_0": {"retrieved_entries": [url, ...], "retrieval_similarities": [...],
                 "reranked_entries": [url, ...], "reranked_sections": [...]}}

OMGM (``step1_img2sum.py`` / ``step2b_IT2IT_rerank.py``)::

    {"E-VQA_0": {"retrieved_entities": [{"url": ..., "title": ...}, ...],
                 "retrieval_similarities": [...]}}

EchoSight's published training-side file, ``E_VQA_Hard_Neg.json`` (EVA-CLIP top entries
for each E-VQA training image), is keyed by the **query image** instead: the image file's
name up to its first dot, as EchoSight's ``dataset/dataset.py`` looks it up
(``question_image_path.split("/")[-1].split(".")[0]``: the GLDv2 id, or for iNaturalist
the file name ``train_id2name.json`` gives)::

    {"abc123def4567890": [{"entry": url, "similarity": 0.83}, ...], ...}

Its entries are ranked by ``similarity``, highest first (ties keep file order). Every
question about that image gets the same ranking.

Only the ranked entity list decides a pool; the similarities are the retriever's, not
the scorer's.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

from envs.data.pools import DataError

RetrievalFormat = Literal["auto", "echosight", "omgm", "echosight_hard_neg"]
RESULT_FORMATS: tuple[str, ...] = ("auto", "echosight", "omgm", "echosight_hard_neg")


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
    keyed_by: Literal["query", "image"] = "query"
    """``"query"``: keys are query ids; ``"image"``: keys are query-image names (``E_VQA_Hard_Neg.json``)."""


def _detect_format(data: dict, source: Path) -> str:
    for value in data.values():
        if isinstance(value, dict) and "retrieved_entities" in value:
            return "omgm"
        if isinstance(value, dict) and "retrieved_entries" in value:
            return "echosight"
        if isinstance(value, list) and value and isinstance(value[0], dict) and "entry" in value[0]:
            return "echosight_hard_neg"
    raise DataError(
        f"{source}: cannot tell the retrieval format: no entry has 'retrieved_entries' (EchoSight), "
        "'retrieved_entities' (OMGM) or is a list of {'entry', 'similarity'} (EchoSight's E_VQA_Hard_Neg.json)"
    )


def _hard_neg_ranking(value: Any, where: str) -> tuple[RetrievedEntity, ...]:
    if not isinstance(value, list):
        raise DataError(f"{where}: must be a list of {{'entry', 'similarity'}} objects, got {type(value).__name__}")
    scored = []
    for i, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("entry"), str) or not item["entry"].strip():
            raise DataError(f"{where}: field '[{i}].entry' must be a URL string, got {item!r:.80}")
        similarity = item.get("similarity")
        if isinstance(similarity, bool) or not isinstance(similarity, (int, float)) or not math.isfinite(similarity):
            raise DataError(f"{where}: field '[{i}].similarity' must be a finite number, got {similarity!r:.40}")
        scored.append((-float(similarity), i, item["entry"].strip()))
    return tuple(RetrievedEntity(url=url) for _, _, url in sorted(scored))


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
        format: ``"echosight"``, ``"omgm"``, ``"echosight_hard_neg"`` (``E_VQA_Hard_Neg.json``,
            keyed by query image) or ``"auto"`` (decided from the entries' shape).
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
    if resolved == "echosight_hard_neg":
        for image_key, value in data.items():
            rankings[image_key] = _hard_neg_ranking(value, f"{source}: entry {image_key!r}")
        return RetrievalResults(source=str(source), rankings=rankings, keyed_by="image")
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
            raise ValueError(f"format must be one of {', '.join(RESULT_FORMATS)}, got {format!r}")
    return RetrievalResults(source=str(source), rankings=rankings)
