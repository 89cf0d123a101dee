"""Build (or read back) the knowledge-base index the env's SEARCH action queries.

Embeds every KB entity with the scorer, with the scorer's candidate features (so an
entity's vector IS its candidate embedding: a re-retrieved pool needs no scorer call),
into the resumable on-disk cache of envs/data/kb_index.py. A second run over the same KB and
scorer reads it back without a forward; an env built with search=True then finds it.

    python recipes/build_index.py embedded                       # the embedded benchmark's 400 entities
    python recipes/build_index.py file --kb-file data/kb.jsonl   # a KB file (what a pool's "kb" names)
    python recipes/build_index.py wiki --kb evqa/encyclopedic_kb_wiki.json --kb-image-root kb_images \\
        --write-kb data/evqa_kb.jsonl --scorer.model EVA02-L-14 --scorer.pretrained eva.pt

The wiki source reads a KB JSON as recipes/retrieve.py and recipes/prepare_data.py read it
(first local image, title + lead section) and, with --write-kb, writes it as the KB file
query pools name in their "kb" field.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal, Sequence, Union

import tyro

from envs.threads import DEFAULT_THREADS, set_threads
from envs.data.adapters import knowledge_base_items
from envs.data.adapters.cli import KbImageArgs
from envs.data.pools import DataError
from envs.data.default import cache_root, default_dataset
from envs.factory import make_scorer
from envs.data.kb_index import KbItem, KnowledgeBaseIndex, index_features, load_kb_file, write_kb_file
from envs.settings import ScorerSettings


@dataclass(kw_only=True)
class IndexArgs:
    """Options of every source: scorer, features, cache, sizes."""

    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    """the scorer whose env will search (default: the embedded rr-tiny scorer); its name keys the cache"""
    features: Literal["auto", "image", "text", "image+text"] = "auto"
    """what an entity is embedded from; auto: the scorer's candidate features, so index vectors equal candidate embeddings (what SEARCH needs)"""
    cache_dir: Path | None = field(default_factory=lambda: cache_root() / "kb_index")
    """on-disk index cache (resumable; the env's default); None: memory only (nothing is kept)"""
    batch_size: int = 32
    """entities embedded together"""
    workers: int = 1
    """threads decoding images ahead of the model"""
    threads: int = DEFAULT_THREADS
    """torch intra-op threads"""
    progress: bool = True
    """show a progress bar"""


@dataclass(kw_only=True)
class EmbeddedArgs(IndexArgs):
    """The embedded benchmark's knowledge base (400 entities, shared by its splits)."""

    split: Literal["train", "val", "test"] = "test"
    """the split whose materialized folder holds the KB file (all splits share the entities)"""


@dataclass(kw_only=True)
class FileArgs(IndexArgs):
    """A KB file: JSONL {"id", "image"?, "text"?} per entity, what a query pool's "kb" names."""

    kb_file: Path
    """the KB file"""


@dataclass(kw_only=True)
class WikiArgs(IndexArgs, KbImageArgs):
    """A KB JSON {wikipedia_url: entry} (E-VQA's encyclopedic_kb_wiki.json, EchoSight's InfoSeek KB), read as retrieve.py reads it."""

    kb: Path
    """the KB JSON"""
    max_text_chars: int = 1000
    """cut entity text at a word boundary to this length (as prepare_data.py cuts candidate text)"""
    write_kb: Path | None = None
    """also write the entities as a KB file here (for the "kb" field of query pools)"""


Source = Union[
    Annotated[EmbeddedArgs, tyro.conf.subcommand("embedded")],
    Annotated[FileArgs, tyro.conf.subcommand("file")],
    Annotated[WikiArgs, tyro.conf.subcommand("wiki")],
]


def read_items(args: EmbeddedArgs | FileArgs | WikiArgs, features: str) -> tuple[list[KbItem], str]:
    """The entities ``args`` name and a label for them."""
    if isinstance(args, EmbeddedArgs):
        kb_file = default_dataset(args.split).pools[0].kb  # materializes the split (and its KB file) once
        return load_kb_file(kb_file), str(kb_file)
    if isinstance(args, FileArgs):
        return load_kb_file(args.kb_file), str(args.kb_file)
    kb_images = args.kb_images() if features != "text" else None
    items, _ = knowledge_base_items(args.kb, features, kb_images, max_text_chars=args.max_text_chars,
                                    progress=args.progress)
    if args.write_kb is not None:
        print(f"wrote the KB file {write_kb_file(items, args.write_kb)}")
    return items, str(args.kb)


def build(args: EmbeddedArgs | FileArgs | WikiArgs) -> KnowledgeBaseIndex:
    """Build or read back the index ``args`` describe, and print what it holds."""
    set_threads(args.threads)
    scorer = make_scorer(args.scorer)
    features = index_features(scorer) if args.features == "auto" else args.features
    items, source = read_items(args, features)
    index = KnowledgeBaseIndex.build(items, scorer, features, cache_dir=args.cache_dir, batch_size=args.batch_size,
                                     num_workers=args.workers, progress=args.progress)
    print(f"{source}: {index!r}")
    print(index.stats.report("KB entities"))
    print(f"cached in {index.folder}" if index.folder else "not cached (--cache-dir None)")
    return index


def main(argv: Sequence[str] | None = None) -> int:
    args = tyro.cli(Source, description=__doc__, args=None if argv is None else list(argv))
    try:
        build(args)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
