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

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Sequence, Union

import tyro

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


@dataclass(kw_only=True)
class SharedArgs:
    """Options of both subcommands: retriever and knowledge base, candidates, query images, output."""

    # Retriever and knowledge base.
    retrieval: Path
    """retriever result JSON keyed by query id (EchoSight or OMGM)"""
    retrieval_format: Literal["auto", "echosight", "omgm"] = "auto"
    """format of --retrieval; 'auto' tells EchoSight ('retrieved_entries') from OMGM ('retrieved_entities')"""
    use_reranked: bool = False
    """EchoSight only: take the pool from 'reranked_entries' instead of 'retrieved_entries'"""
    kb: Path
    """knowledge-base JSON {wikipedia_url: entry} (E-VQA's encyclopedic_kb_wiki.json or EchoSight's InfoSeek KB); streamed, only pool entities are kept"""

    # Candidates.
    top_k: int = 20
    """pool size: the first K distinct retrieved entities"""
    features: Literal["image", "text", "both"] = "image"
    """what a candidate carries: its first KB image (text when it has none locally), title + lead section, or both"""
    max_text_chars: int = 1000
    """cut candidate text at a word boundary to this length"""
    kb_image_root: Path | None = None
    """folder of downloaded KB images; mapped paths are relative to it, and an image URL's file name is looked up directly in it"""
    kb_image_map: tyro.conf.UseAppendAction[list[Path]] = field(default_factory=list)
    """KB-image mapping (give the flag once per file): a JSON {image URL, article URL or title: path or [paths]} or OMGM's wiki_image_url_part_*_processed.csv"""

    # Query images.
    inaturalist_root: Path | None = None
    """iNaturalist 2021 image folder (E-VQA)"""
    inat_id2name: Path | None = None
    """EchoSight's {image_id: file name} JSON for iNaturalist; without it images are looked up flat as <root>/<image_id>.jpg"""
    landmarks_root: Path | None = None
    """Google Landmarks v2 image folder (E-VQA)"""
    landmarks_layout: Literal["nested", "flat"] = "nested"
    """'nested': <root>/a/b/c/abc123.jpg (the GLDv2 download); 'flat': <root>/abc123.jpg"""
    infoseek_root: Path | None = None
    """InfoSeek/OVEN image folder: <root>/<image_id>.jpg or .JPEG, or the base of --infoseek-id2image paths"""
    infoseek_id2image: Path | None = None
    """InfoSeek id2image JSONL ({'image_id', 'image_path'} per line) or JSON object"""

    # Output.
    purpose: Literal["train", "eval"]
    """'train' drops queries without a positive in the top-K (as the paper does); 'eval' keeps every query so CondR@1 can be reported"""
    out: Path
    """query-pool JSONL to write"""
    root: Path | None = None
    """data root the written paths are relative to (default: the folder of --out); paths outside it are written absolute"""

    def __post_init__(self) -> None:
        # A ValueError here is reported by tyro as a command-line error.
        if self.features != "text" and self.kb_image_root is None and not self.kb_image_map:
            raise ValueError(f"--features {self.features} needs --kb-image-root and/or --kb-image-map")
        if self.top_k < 1 or self.max_text_chars < 1:
            raise ValueError("--top-k and --max-text-chars must be positive")


@dataclass(kw_only=True)
class EvqaArgs(SharedArgs):
    """Query pools from an E-VQA-format CSV (E-VQA, or EchoSight's InfoSeek CSV); 2_hop questions are skipped and
    E-VQA queries numbered E-VQA_<i> as EchoSight and OMGM do."""

    annotations: Path
    """E-VQA train.csv / val.csv / test.csv"""


@dataclass(kw_only=True)
class InfoseekArgs(SharedArgs):
    """Query pools from InfoSeek's JSONL annotations (*_withkb.jsonl)."""

    annotations: Path
    """infoseek_{train,val}_withkb.jsonl"""
    entity_map: Path | None = None
    """gold entity id -> Wikipedia URL: JSON object, or JSONL with entity_id/wikidata_id and wikipedia_url/url; needed when the retriever ranks Wikipedia URLs"""
    entity_field: str = "entity_id"
    """annotation field holding the gold entity id"""


Source = Union[
    Annotated[EvqaArgs, tyro.conf.subcommand("evqa")],
    Annotated[InfoseekArgs, tyro.conf.subcommand("infoseek")],
]
"""The command line: one subcommand per annotation source, each with its own and the shared options."""


def parse_args(argv: Sequence[str] | None = None) -> EvqaArgs | InfoseekArgs:
    """The arguments of ``argv`` (default: the command line), exiting with a message when they are invalid."""
    return tyro.cli(Source, description=__doc__, args=argv)


def merged_image_maps(paths: Sequence[Path]) -> dict[str, list[str]]:
    """All ``--kb-image-map`` files as one mapping; earlier files come first per key."""
    merged: dict[str, list[str]] = {}
    for path in paths:
        for key, values in load_kb_image_map(path).items():
            merged.setdefault(key, []).extend(values)
    return merged


def prepare(args: EvqaArgs | InfoseekArgs) -> tuple[list[QueryPool], AdapterSummary]:
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
    if isinstance(args, EvqaArgs):
        return build_evqa_pools(args.annotations, retrieval, args.kb, images=images, kb_images=kb_images,
                                options=options)
    entity_urls = load_entity_map(args.entity_map) if args.entity_map else None
    return build_infoseek_pools(args.annotations, retrieval, args.kb, images=images, kb_images=kb_images,
                                entity_urls=entity_urls, entity_field=args.entity_field, options=options)


def main(args: EvqaArgs | InfoseekArgs) -> int:
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
    sys.exit(main(parse_args()))
