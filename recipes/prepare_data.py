"""Build query-pool JSONL files from the public E-VQA / InfoSeek downloads.

Each query keeps its question and image; its pool is the top-K Wikipedia entities a
retriever returned for it (EchoSight's or OMGM's result file, EchoSight's
E_VQA_Hard_Neg.json, or the file recipes/retrieve.py writes), turned into candidates from
the knowledge base, positive where they match the annotated entity. Training files keep
only queries with a positive in the pool; evaluation files keep every query.

E-VQA (or EchoSight's InfoSeek CSV, which is in E-VQA format):

    python recipes/prepare_data.py evqa --annotations evqa/test.csv \\
        --retrieval retrieval/evqa_test.json --kb evqa/encyclopedic_kb_wiki.json \\
        --landmarks-root gldv2/train --inaturalist-root inat21 --inat-id2name inat21/val_id2name.json \\
        --kb-image-root kb_images --purpose eval --out data/evqa/eval.jsonl

InfoSeek (the question file joined with its withkb file on data_id):

    python recipes/prepare_data.py infoseek --annotations infoseek/infoseek_val.jsonl \\
        --withkb infoseek/infoseek_val_withkb.jsonl --wiki6m infoseek/Wiki6M_ver_1_0_title_only.jsonl \\
        --retrieval retrieval/infoseek_val.json --kb infoseek/infoseek_100k_wiki.json \\
        --infoseek-root oven_images --kb-image-root kb_images --purpose eval --out data/infoseek/eval.jsonl

A summary (queries read, kept, dropped by reason, images missing, input mismatches) is
printed at the end; its counts are those of the file written.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, Sequence, Union

import tyro

from envs.data.adapters import (
    AdapterSummary,
    PoolOptions,
    build_evqa_pools,
    build_infoseek_pools,
    load_retrieval_results,
)
from envs.data.adapters.cli import KbImageArgs, QueryImageArgs
from envs.data.pools import DataError, QueryPool, write_query_pools


@dataclass(kw_only=True)
class SharedArgs(QueryImageArgs, KbImageArgs):
    """Options of both subcommands: retriever and knowledge base, candidates, query images, output."""

    # Retriever and knowledge base.
    retrieval: Path
    """retriever result JSON: keyed by query id (EchoSight's --save_result file, OMGM's result.json, recipes/retrieve.py's output) or by query image (EchoSight's E_VQA_Hard_Neg.json)"""
    retrieval_format: Literal["auto", "echosight", "omgm", "echosight_hard_neg"] = "auto"
    """format of --retrieval; 'auto' tells them apart by their entries ('retrieved_entries', 'retrieved_entities', or lists of {'entry', 'similarity'})"""
    use_reranked: bool = False
    """EchoSight only: take the pool from 'reranked_entries' instead of 'retrieved_entries'"""
    kb: Path
    """knowledge-base JSON {wikipedia_url: entry} (E-VQA's encyclopedic_kb_wiki.json, or the JSON in EchoSight's infoseek_100k_wiki.zip); streamed, only pool entities are kept"""

    # Candidates.
    top_k: int = 20
    """pool size: the first K distinct retrieved entities"""
    features: Literal["image", "text", "image+text", "both"] = "image"
    """what a candidate carries: its first KB image (text when it has none locally), title + lead section, or both ('image+text', also spelled 'both')"""
    max_text_chars: int = 1000
    """cut candidate text at a word boundary to this length"""

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
    """E-VQA train.csv / val.csv / test.csv (EchoSight's train.csv is train_full_image_cleaned.csv), or EchoSight's infoseek_{train,test}_filtered.csv"""


@dataclass(kw_only=True)
class InfoseekArgs(SharedArgs):
    """Query pools from InfoSeek's published annotations: the question file joined with its withkb file on data_id."""

    annotations: Path
    """question file infoseek_{train,val}.jsonl (data_id, image_id, question, answer, ...)"""
    withkb: Path
    """KB mapping infoseek_{train,val}_withkb.jsonl (data_id, entity_id, entity_text)"""
    wiki6m: Path | None = None
    """Wiki6M_ver_1_0_title_only.jsonl (wikidata_id -> wikipedia_title); without it the withkb entity_text is the title matched to KB entries"""


Source = Union[
    Annotated[EvqaArgs, tyro.conf.subcommand("evqa")],
    Annotated[InfoseekArgs, tyro.conf.subcommand("infoseek")],
]
"""The command line: one subcommand per annotation source, each with its own and the shared options."""


def parse_args(argv: Sequence[str] | None = None) -> EvqaArgs | InfoseekArgs:
    """The arguments of ``argv`` (default: the command line), exiting with a message when they are invalid."""
    return tyro.cli(Source, description=__doc__, args=argv)


def prepare(args: EvqaArgs | InfoseekArgs) -> tuple[list[QueryPool], AdapterSummary]:
    """Run the adapter ``args`` name and return its pools and summary."""
    options = PoolOptions(top_k=args.top_k, features=args.features, max_text_chars=args.max_text_chars,
                          purpose=args.purpose)
    images = args.query_image_roots()
    kb_images = args.kb_images() if args.features != "text" else None
    retrieval = load_retrieval_results(args.retrieval, args.retrieval_format, use_reranked=args.use_reranked)
    if isinstance(args, EvqaArgs):
        return build_evqa_pools(args.annotations, retrieval, args.kb, images=images, kb_images=kb_images,
                                options=options)
    return build_infoseek_pools(args.annotations, args.withkb, retrieval, args.kb, images=images,
                                kb_images=kb_images, wiki6m=args.wiki6m, options=options)


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
