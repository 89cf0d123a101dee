"""Our own retriever: top-K knowledge-base entities per query image, in EchoSight's result format.

Embeds every KB entity (its first local image, its title + lead section, or both, as
candidates carry them) and every query image with an open_clip scorer (the paper's:
EVA-CLIP), searches the index of envs/data/kb_index.py (exact NumPy search, or FAISS for
millions of entries), and writes {query_id: {"retrieved_entries": [url, ...],
"retrieval_similarities": [...]}}, the file prepare_data.py --retrieval reads like
EchoSight's. Queries are read and numbered exactly as prepare_data.py reads
them (E-VQA_<i> without the 2_hop rows; InfoSeek's data_id), from the same flags.

Embeddings are cached under --cache-dir by scorer, features and content, written
chunk by chunk: an interrupted run continues where it stopped, and a second run over the
same KB (e.g. for the other split) embeds only its queries.

    python recipes/retrieve.py evqa --annotations evqa/test.csv --kb evqa/encyclopedic_kb_wiki.json \\
        --kb-image-root kb_images --landmarks-root gldv2/train --inaturalist-root inat21 \\
        --inat-id2name inat21/val_id2name.json --scorer.model EVA02-L-14 --scorer.pretrained eva.pt \\
        --out retrieval/evqa_test.json

    python recipes/retrieve.py infoseek --annotations infoseek/infoseek_val.jsonl \\
        --kb infoseek/infoseek_100k_wiki.json --kb-image-root kb_images --infoseek-root oven_images \\
        --scorer.model EVA02-L-14 --scorer.pretrained eva.pt --out retrieval/infoseek_val.json
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Sequence, Union

import tyro

from envs.threads import DEFAULT_THREADS, set_threads
from envs.data.adapters import AdapterSummary, knowledge_base_items, read_evqa_queries, read_infoseek_queries
from envs.data.adapters.cli import KbImageArgs, QueryImageArgs
from envs.data.adapters.pools import AnnotatedQuery
from envs.data.pools import DataError
from envs.data.default import cache_root
from envs.factory import make_scorer
from envs.data.kb_index import Embeddings, KbItem, KnowledgeBaseIndex, embed_items
from envs.settings import ScorerSettings
from envs.atomic import atomic_open, atomic_write_text


@dataclass(kw_only=True)
class RetrieveArgs(QueryImageArgs, KbImageArgs):
    """Options of both subcommands: knowledge base, scorer, search, output."""

    kb: Path
    """knowledge-base JSON {wikipedia_url: entry} (E-VQA's encyclopedic_kb_wiki.json, or the JSON in EchoSight's infoseek_100k_wiki.zip), streamed"""
    features: Literal["image", "text", "image+text"] = "image"
    """what a KB entity is embedded from: its first local KB image (EchoSight's image-to-image retrieval), its title + lead section, or both summed and re-normalized"""
    max_text_chars: int = 1000
    """cut entity text at a word boundary to this length (as prepare_data.py cuts candidate text)"""

    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    """the embedding model (--scorer.model EVA02-L-14 --scorer.pretrained eva.pt, the paper's EVA-CLIP; or any scorer prepare_data's pools will be ranked with); default: the embedded rr-tiny scorer. --features, not --scorer.candidate-features, decides what a KB entity is embedded from"""
    threads: int = DEFAULT_THREADS
    """torch intra-op threads (on 2 shared cores, 2 threads beside the decoding thread ran 15-20x slower than 1)"""

    top_k: int = 20
    """entities written per query (prepare_data.py cuts pools from them)"""
    batch_size: int = 32
    """images or texts loaded and embedded together"""
    chunk_rows: int = 2048
    """embeddings written to the cache at a time (the most an interruption loses)"""
    workers: int = 1
    """threads decoding images ahead of the model (0: none; raise it when the model runs on a GPU)"""
    cache_dir: Path | None = field(default_factory=lambda: cache_root() / "kb_index")
    """on-disk embedding cache (resumable; default: $REGION_RERANK_CACHE or ~/.cache/region-rerank, then kb_index); None: keep embeddings in memory only"""
    backend: Literal["numpy", "faiss"] = "numpy"
    """search backend: exact NumPy inner products, or FAISS (pip install 'region-rerank[faiss]')"""
    faiss_factory: str = "Flat"
    """FAISS index_factory string for --backend faiss ('Flat' is exact; e.g. 'HNSW32' approximates)"""
    progress: bool = True
    """show progress bars"""

    out: Path
    """result JSON to write ({query_id: {retrieved_entries, retrieval_similarities}}); a summary goes to <out>.meta.json"""

    def __post_init__(self) -> None:
        # A ValueError here is reported by tyro as a command-line error.
        if self.features != "text" and self.kb_image_root is None and not self.kb_image_map:
            raise ValueError(f"--features {self.features} needs --kb-image-root and/or --kb-image-map")
        if min(self.top_k, self.batch_size, self.chunk_rows, self.max_text_chars, self.threads) < 1 or self.workers < 0:
            raise ValueError("--top-k, --batch-size, --chunk-rows, --max-text-chars and --threads must be positive, --workers >= 0")


@dataclass(kw_only=True)
class EvqaArgs(RetrieveArgs):
    """Top-K for the queries of an E-VQA-format CSV (E-VQA, or EchoSight's InfoSeek CSV), numbered as prepare_data.py evqa numbers them."""

    annotations: Path
    """E-VQA train.csv / val.csv / test.csv, or EchoSight's infoseek_{train,test}_filtered.csv"""


@dataclass(kw_only=True)
class InfoseekArgs(RetrieveArgs):
    """Top-K for the queries of an InfoSeek question file, keyed by data_id (no withkb file needed)."""

    annotations: Path
    """question file infoseek_{train,val,test}.jsonl"""


Source = Union[
    Annotated[EvqaArgs, tyro.conf.subcommand("evqa")],
    Annotated[InfoseekArgs, tyro.conf.subcommand("infoseek")],
]


def parse_args(argv: Sequence[str] | None = None) -> EvqaArgs | InfoseekArgs:
    """The arguments of ``argv`` (default: the command line), exiting with a message when they are invalid."""
    argv = sys.argv[1:] if argv is None else list(argv)
    return tyro.cli(Source, description=__doc__, args=argv)


def read_queries(args: EvqaArgs | InfoseekArgs) -> tuple[list[AnnotatedQuery], AdapterSummary]:
    """The queries prepare_data.py would read from the same annotations and image flags."""
    summary = AdapterSummary(source=str(args.annotations), purpose="eval", top_k=args.top_k)
    images = args.query_image_roots()
    if isinstance(args, EvqaArgs):
        return read_evqa_queries(args.annotations, images, summary), summary
    return read_infoseek_queries(args.annotations, images, summary), summary


def _write_results(path: Path, rows: Sequence[tuple[str, list[str], list[float]]]) -> None:
    """EchoSight's result layout, streamed to a temporary name and renamed into place."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write("{")
        for n, (query_id, urls, scores) in enumerate(rows):
            entry = {"retrieved_entries": urls, "retrieval_similarities": scores}
            handle.write(("," if n else "") + "\n" + json.dumps(query_id, ensure_ascii=False) + ": "
                         + json.dumps(entry, ensure_ascii=False))
        handle.write("\n}\n")


@dataclass(frozen=True)
class QuerySearch:
    """The search of the queries' images: a result row per query whose image was embedded,
    how many queries were left out because theirs could not be decoded, how many images
    were searched, and the seconds it took."""

    rows: list[tuple[str, list[str], list[float]]]
    undecodable: int
    images_searched: int
    seconds: float


def retrieve(args: EvqaArgs | InfoseekArgs) -> dict:
    """Run the retrieval ``args`` describe; returns the summary written to ``<out>.meta.json``."""
    set_threads(args.threads)
    queries, query_summary = read_queries(args)
    if not queries:
        raise DataError(f"{args.annotations}: no query with a readable image\n{query_summary.report()}")
    scorer = make_scorer(args.scorer)
    kb_images = args.kb_images() if args.features != "text" else None
    items, kb_counts = knowledge_base_items(args.kb, args.features, kb_images, max_text_chars=args.max_text_chars,
                                            progress=args.progress)
    sizes = dict(batch_size=args.batch_size, chunk_rows=args.chunk_rows, num_workers=args.workers, progress=args.progress)
    index = KnowledgeBaseIndex.build(items, scorer, args.features, cache_dir=args.cache_dir, backend=args.backend,
                                     faiss_factory=args.faiss_factory, **sizes)
    if len(index) == 0:
        raise DataError(f"{args.kb}: no KB entity could be embedded with features {args.features!r}\n"
                        f"{index.stats.report('KB entities')}")
    paths = list(dict.fromkeys(q.image for q in queries))  # questions about one image share its embedding
    query_vectors = embed_items([KbItem(id=str(p), image=p) for p in paths], scorer, "image",
                                cache_dir=args.cache_dir, label="queries", **sizes)
    search = search_queries(index, queries, paths, query_vectors, args.top_k)
    for _ in range(search.undecodable):
        query_summary.drop("query_image_undecodable")
    query_summary.queries_kept = len(search.rows)
    _write_results(args.out, search.rows)
    summary = run_summary(args, scorer.name, kb_counts, index, query_summary, len(paths), query_vectors, search)
    meta_path = args.out.with_suffix(".meta.json")
    atomic_write_text(meta_path, json.dumps(summary, indent=1) + "\n")
    print(query_summary.report())
    print(index.stats.report("KB entities"))
    print(query_vectors.stats.report("query images"))
    print(f"searched {search.images_searched} query images in {search.seconds:.2f} s ({args.backend})")
    print(f"wrote the top-{args.top_k} of {len(search.rows)} queries to {args.out} (summary in {meta_path})")
    return summary


def search_queries(
    index: KnowledgeBaseIndex, queries: list[AnnotatedQuery], paths: list[Path], query_vectors: Embeddings, top_k: int
) -> QuerySearch:
    """The ``top_k`` KB entities of each query, searched once per distinct image (``paths``,
    embedded as ``query_vectors``), in query order."""
    started = time.perf_counter()
    searchable = [i for i in range(len(paths)) if query_vectors.valid[i]]
    hits, scores = index.search(query_vectors.vectors[searchable], top_k) if searchable else ([], None)
    found = {paths[i]: (hits[n], scores[n].tolist()) for n, i in enumerate(searchable)}
    rows, undecodable = [], 0
    for query in queries:
        if query.image in found:
            urls, sims = found[query.image]
            rows.append((query.query_id, urls, sims))
        else:
            undecodable += 1
    return QuerySearch(rows, undecodable, len(searchable), time.perf_counter() - started)


def run_summary(
    args: EvqaArgs | InfoseekArgs,
    scorer_name: str,
    kb_counts: dict[str, int],
    index: KnowledgeBaseIndex,
    query_summary: AdapterSummary,
    query_images: int,
    query_vectors: Embeddings,
    search: QuerySearch,
) -> dict:
    """What ``<out>.meta.json`` says of a run: the KB's index, the queries, the timings."""
    return {
        "scorer": scorer_name,
        "features": args.features,
        "knowledge_base": str(args.kb),
        "kb_entries_read": kb_counts["entries"],
        "kb_duplicate_urls": kb_counts["duplicate_urls"],
        "kb_indexed": len(index),
        "kb_left_out": index.stats.left_out,
        "kb_partial": index.stats.partial,
        "kb_embedded": index.stats.embedded,
        "kb_from_cache": index.stats.reused,
        "kb_seconds": round(index.stats.seconds, 2),
        "kb_entries_per_second": round(index.stats.items_per_second, 2),
        "queries_read": query_summary.queries_read,
        "queries_written": len(search.rows),
        "queries_dropped": query_summary.dropped,
        "query_images": query_images,
        "query_images_embedded": query_vectors.stats.embedded,
        "query_seconds": round(query_vectors.stats.seconds, 2),
        "search_seconds": round(search.seconds, 2),
        "top_k": args.top_k,
        "backend": args.backend,
        "index_folder": str(index.folder) if index.folder else None,
    }


def main(args: EvqaArgs | InfoseekArgs) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        retrieve(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        if "faiss" not in str(exc):
            raise
        print(f"error: {exc}", file=sys.stderr)  # --backend faiss without faiss installed
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(parse_args()))
