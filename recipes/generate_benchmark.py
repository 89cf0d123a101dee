"""Write the synthetic benchmark (the embedded default data) to a folder.

    python recipes/generate_benchmark.py --out data/synthetic                 # every split
    python recipes/generate_benchmark.py --out data/synthetic --split test --seed 3 --test-queries 500

Each split goes to ``<out>/<split>/``: ``pools.jsonl`` (query-pool records, see
``envs/data/pools.py``), ``images/`` (query scenes) and ``kb/`` (the knowledge-base images).
Hard negatives are mined with the FULL-image similarity of a scorer: the embedded
default, an open_clip model and checkpoint (``--scorer.model`` and ``--scorer.pretrained``),
a transformers CLIP / SigLIP folder (``--scorer.model /path/to/folder``), or any scorer of
your own (``--scorer.model examples.custom_scorer:HistogramScorer --scorer.options bins 6``). ``gym.make("RegionRerank-v0", data=<out>/test/pools.jsonl)``
then serves the files.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default scorer is local; never ask the hub

import tyro

from envs.data.pools import load_query_pools
from envs.data.default import DEFAULT_CONFIG, write_split
from envs.factory import make_scorer
from envs.settings import ScorerSettings
from envs.data.synthetic import SPLITS, BenchmarkConfig


@dataclass
class Args:
    out: Path
    """output folder (one subfolder per split)"""
    split: Literal["train", "val", "test", "all"] = "all"
    """train, val, test or all"""
    seed: int = DEFAULT_CONFIG.seed
    """root seed of the benchmark (scenes and knowledge base)"""
    train_queries: int = DEFAULT_CONFIG.train_queries
    """queries in the train split"""
    val_queries: int = DEFAULT_CONFIG.val_queries
    """queries in the val split"""
    test_queries: int = DEFAULT_CONFIG.test_queries
    """queries in the test split"""
    pool_size: int = DEFAULT_CONFIG.pool_size
    """K, candidates per pool"""
    missing_positive_fraction: float = DEFAULT_CONFIG.missing_positive_fraction
    """fraction of pools without the positive"""
    image_size: int = DEFAULT_CONFIG.scene.image_size
    """side of the query images in pixels"""
    clutter: float = DEFAULT_CONFIG.scene.clutter
    """background clutter level in [0, 1]"""
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    """the re-ranker (--scorer.model: module:attr of your own, a transformers folder, or an open_clip name); default: the embedded rr-tiny scorer"""


def benchmark_config(args: Args) -> BenchmarkConfig:
    """The :class:`BenchmarkConfig` the arguments describe (defaults elsewhere)."""
    return dataclasses.replace(
        DEFAULT_CONFIG,
        seed=args.seed,
        train_queries=args.train_queries,
        val_queries=args.val_queries,
        test_queries=args.test_queries,
        pool_size=args.pool_size,
        missing_positive_fraction=args.missing_positive_fraction,
        scene=dataclasses.replace(DEFAULT_CONFIG.scene, image_size=args.image_size, clutter=args.clutter),
    )


def main(args: Args) -> None:
    config = benchmark_config(args)
    scorer = make_scorer(args.scorer)
    print(f"benchmark {config}\nhard negatives mined with {scorer.name}")
    for split in SPLITS if args.split == "all" else (args.split,):
        start = time.perf_counter()
        path = write_split(Path(args.out) / split, split, config, scorer)
        pools = load_query_pools(path)
        without = sum(not p.has_positive for p in pools)
        print(f"{split}: {len(pools)} queries ({without} without the positive) -> {path} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main(tyro.cli(Args, args=sys.argv[1:], description=__doc__.split("\n\n")[0]))
