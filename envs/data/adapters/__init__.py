"""Adapters from the public E-VQA / InfoSeek downloads to query-pool files.

A pool is a query (question + image) with the top-K entities a retriever (EchoSight,
OMGM) returned for it, each turned into a candidate from the Wikipedia knowledge base,
positive when it is the annotated entity. ``recipes/prepare_data.py`` is the command
line; in Python::

    from envs.data.adapters import (KbImages, PoolOptions, QueryImageRoots, build_evqa_pools,
                               load_retrieval_results)
    from envs.data.pools import write_query_pools

    pools, summary = build_evqa_pools(
        "test.csv", load_retrieval_results("echosight_test.json"), "encyclopedic_kb_wiki.json",
        images=QueryImageRoots(landmarks=Path("gldv2"), inaturalist=Path("inat")),
        kb_images=KbImages(root=Path("kb_images")), options=PoolOptions(purpose="eval"))
    write_query_pools(pools, "data/evqa/eval.jsonl", "data/evqa")
    print(summary.report())
"""

from envs.data.adapters.evqa import build_evqa_pools, read_evqa_queries
from envs.data.adapters.images import QueryImageRoots, load_id2image, load_inat_id2name, oven_shard
from envs.data.adapters.infoseek import (
    KbLink,
    build_infoseek_pools,
    load_wiki6m_titles,
    read_infoseek_queries,
    read_withkb,
)
from envs.data.adapters.kb import (
    KbEntry,
    KbImages,
    entity_key,
    iter_json_object,
    iter_knowledge_base,
    knowledge_base_items,
    load_kb_image_map,
    load_knowledge_base,
    normalize_title,
    scan_knowledge_base,
)
from envs.data.adapters.pools import AdapterSummary, AnnotatedQuery, PoolOptions, build_pools, ranking_for
from envs.data.adapters.retrieval import RetrievalResults, RetrievedEntity, load_retrieval_results

__all__ = [
    "AdapterSummary",
    "AnnotatedQuery",
    "KbEntry",
    "KbImages",
    "KbLink",
    "PoolOptions",
    "QueryImageRoots",
    "RetrievalResults",
    "RetrievedEntity",
    "build_evqa_pools",
    "build_infoseek_pools",
    "build_pools",
    "entity_key",
    "iter_json_object",
    "iter_knowledge_base",
    "knowledge_base_items",
    "load_id2image",
    "load_inat_id2name",
    "load_kb_image_map",
    "load_knowledge_base",
    "load_retrieval_results",
    "load_wiki6m_titles",
    "normalize_title",
    "oven_shard",
    "ranking_for",
    "read_evqa_queries",
    "read_infoseek_queries",
    "read_withkb",
    "scan_knowledge_base",
]
