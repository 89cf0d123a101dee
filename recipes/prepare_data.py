"""Build query-pool JSONL files from the public E-VQA / InfoSeek downloads.

Each query keeps its question and image; its pool is the top-K Wikipedia entities a
retriever (EchoSight or OMGM result file) returned, turned into candidates from the
knowledge base, positive where they match the annotated entity. Training files keep
only queries with a positive in the pool; evaluation files keep every query.

E-VQA (or EchoSight's InfoSeek CSV, which is in E-VQA format):

    python recipes/prepare_data.py evqa --annotations evqa/test.csv \\
        --retrieval echosight/evqa_test.json --kb evqa/encyclopedic_kb_wiki.json \\
        --landmarks-root gldv2/train --inaturalist-root inat21 --inat-id2name inat21/val_id2name.json \\
        --kb-image-root kb_images --purpose eval --out data/evqa/eval.jsonl

InfoSeek (original JSONL with the gold entity id):

    python recipes/prepare_data.py infoseek --annotations infoseek_val_withkb.jsonl \\
        --entity-map qid2url.json --retrieval echosight/infoseek_val.json --kb infoseek_kb_100k.json \\
        --infoseek-root infoseek_images/val --kb-image-root kb_images --purpose eval --out data/infoseek/eval.jsonl

A summary (queries read, kept, dropped by reason, images missing) is printed at the end.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Sequence

from envs.adapters import (
    AdapterSummary,
    KbImages,
    PoolOptions,
    QueryImageRoots,
    build_evqa_pools,
    build_infoseek_pools,
    load_entity_map,
    load_id2image,
    load_inat_id2name,
    load_kb_image_map,
    load_retrieval_results,
)
from envs.data import DataError, QueryPool, write_query_pools


def build_parser() -> argparse.ArgumentParser:
    shared = argparse.ArgumentParser(add_help=False)
    retriever = shared.add_argument_group("retriever and knowledge base")
    retriever.add_argument("--retrieval", type=Path, required=True,
                           help="retriever result JSON keyed by query id (EchoSight or OMGM)")
    retriever.add_argument("--retrieval-format", choices=("auto", "echosight", "omgm"), default="auto",
                           help="format of --retrieval; 'auto' tells EchoSight ('retrieved_entries') from "
                                "OMGM ('retrieved_entities') (default: %(default)s)")
    retriever.add_argument("--use-reranked", action="store_true",
                           help="EchoSight only: take the pool from 'reranked_entries' instead of 'retrieved_entries'")
    retriever.add_argument("--kb", type=Path, required=True,
                           help="knowledge-base JSON {wikipedia_url: entry} (E-VQA's encyclopedic_kb_wiki.json or "
                                "EchoSight's InfoSeek KB); streamed, only pool entities are kept")

    pools = shared.add_argument_group("candidates")
    pools.add_argument("--top-k", type=int, default=20,
                       help="pool size: the first K distinct retrieved entities (default: %(default)s)")
    pools.add_argument("--features", choices=("image", "text", "both"), default="image",
                       help="what a candidate carries: its first KB image (text when it has none locally), "
                            "title + lead section, or both (default: %(default)s)")
    pools.add_argument("--max-text-chars", type=int, default=1000,
                       help="cut candidate text at a word boundary to this length (default: %(default)s)")
    pools.add_argument("--kb-image-root", type=Path,
                       help="folder of downloaded KB images; mapped paths are relative to it, and an image URL's "
                            "file name is looked up directly in it")
    pools.add_argument("--kb-image-map", type=Path, action="append", default=[],
                       help="KB-image mapping, repeatable: a JSON {image URL, article URL or title: path or [paths]} "
                            "or OMGM's wiki_image_url_part_*_processed.csv")

    images = shared.add_argument_group("query images")
    images.add_argument("--inaturalist-root", type=Path, help="iNaturalist 2021 image folder (E-VQA)")
    images.add_argument("--inat-id2name", type=Path,
                        help="EchoSight's {image_id: file name} JSON for iNaturalist; without it images are "
                             "looked up flat as <root>/<image_id>.jpg")
    images.add_argument("--landmarks-root", type=Path, help="Google Landmarks v2 image folder (E-VQA)")
    images.add_argument("--landmarks-layout", choices=("nested", "flat"), default="nested",
                        help="'nested': <root>/a/b/c/abc123.jpg (the GLDv2 download); 'flat': <root>/abc123.jpg "
                             "(default: %(default)s)")
    images.add_argument("--infoseek-root", type=Path,
                        help="InfoSeek/OVEN image folder: <root>/<image_id>.jpg or .JPEG, or the base of "
                             "--infoseek-id2image paths")
    images.add_argument("--infoseek-id2image", type=Path,
                        help="InfoSeek id2image JSONL ({'image_id', 'image_path'} per line) or JSON object")

    output = shared.add_argument_group("output")
    output.add_argument("--purpose", choices=("train", "eval"), required=True,
                        help="'train' drops queries without a positive in the top-K (as the paper does); "
                             "'eval' keeps every query so CondR@1 can be reported")
    output.add_argument("--out", type=Path, required=True, help="query-pool JSONL to write")
    output.add_argument("--root", type=Path,
                        help="data root the written paths are relative to (default: the folder of --out); "
                             "paths outside it are written absolute")

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = parser.add_subparsers(dest="source", required=True, metavar="{evqa,infoseek}")
    evqa = sources.add_parser("evqa", parents=[shared], help="E-VQA-format CSV (E-VQA, or EchoSight's InfoSeek CSV)",
                              description="Query pools from an E-VQA-format CSV; 2_hop questions are skipped and "
                                          "E-VQA queries numbered E-VQA_<i> as EchoSight and OMGM do.")
    evqa.add_argument("--annotations", type=Path, required=True, help="E-VQA train.csv / val.csv / test.csv")
    infoseek = sources.add_parser("infoseek", parents=[shared], help="InfoSeek JSONL annotations",
                                  description="Query pools from InfoSeek's *_withkb.jsonl annotations.")
    infoseek.add_argument("--annotations", type=Path, required=True, help="infoseek_{train,val}_withkb.jsonl")
    infoseek.add_argument("--entity-map", type=Path,
                          help="gold entity id -> Wikipedia URL: JSON object, or JSONL with entity_id/wikidata_id "
                               "and wikipedia_url/url; needed when the retriever ranks Wikipedia URLs")
    infoseek.add_argument("--entity-field", default="entity_id",
                          help="annotation field holding the gold entity id (default: %(default)s)")
    return parser


def merged_image_maps(paths: Sequence[Path]) -> dict[str, list[str]]:
    """All ``--kb-image-map`` files as one mapping; earlier files come first per key."""
    merged: dict[str, list[str]] = {}
    for path in paths:
        for key, values in load_kb_image_map(path).items():
            merged.setdefault(key, []).extend(values)
    return merged


def prepare(args: argparse.Namespace) -> tuple[list[QueryPool], AdapterSummary]:
    """Run the adapter ``args`` name and return its pools and summary."""
    options = PoolOptions(top_k=args.top_k, features=args.features, max_text_chars=args.max_text_chars,
                          purpose=args.purpose)
    images = QueryImageRoots(
        inaturalist=args.inaturalist_root,
        landmarks=args.landmarks_root,
        infoseek=args.infoseek_root,
        landmarks_layout=args.landmarks_layout,
        inat_id2name=load_inat_id2name(args.inat_id2name) if args.inat_id2name else None,
        infoseek_id2image=load_id2image(args.infoseek_id2image) if args.infoseek_id2image else None,
    )
    kb_images = None
    if args.features != "text":
        kb_images = KbImages(root=args.kb_image_root, mapping=merged_image_maps(args.kb_image_map))
    retrieval = load_retrieval_results(args.retrieval, args.retrieval_format, use_reranked=args.use_reranked)
    if args.source == "evqa":
        return build_evqa_pools(args.annotations, retrieval, args.kb, images=images, kb_images=kb_images,
                                options=options)
    entity_urls = load_entity_map(args.entity_map) if args.entity_map else None
    return build_infoseek_pools(args.annotations, retrieval, args.kb, images=images, kb_images=kb_images,
                                entity_urls=entity_urls, entity_field=args.entity_field, options=options)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.features != "text" and args.kb_image_root is None and not args.kb_image_map:
        parser.error(f"--features {args.features} needs --kb-image-root and/or --kb-image-map")
    if args.top_k < 1 or args.max_text_chars < 1:
        parser.error("--top-k and --max-text-chars must be positive")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        pools, summary = prepare(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(summary.report())
    if not pools:
        print(f"error: no query kept, {args.out} not written", file=sys.stderr)
        return 1
    write_query_pools(pools, args.out, args.root)
    print(f"wrote {len(pools)} query pools to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
