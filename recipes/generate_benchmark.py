"""Write the synthetic benchmark (the embedded default data) to a folder.

    python recipes/generate_benchmark.py --out data/synthetic                 # every split
    python recipes/generate_benchmark.py --out data/synthetic --split test --seed 3 --test-queries 500

Each split goes to ``<out>/<split>/``: ``pools.jsonl`` (query-pool records, see
``envs/data.py``), ``images/`` (query scenes) and ``kb/`` (the knowledge-base images).
Hard negatives are mined with the FULL-image similarity of a scorer: the embedded
default, or any open_clip model and checkpoint given with ``--scorer-model`` and
``--scorer-pretrained``. ``gym.make("RegionRerank-v0", data=<out>/test/pools.jsonl)``
then serves the files.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the default scorer is local; never ask the hub

from envs.data import load_query_pools
from envs.default import DEFAULT_CONFIG, default_scorer, write_split
from envs.scorer import OpenClipScorer
from envs.synthetic import SPLITS, BenchmarkConfig


@dataclass
class Args:
    out: str = field(default=MISSING, metadata={"help": "output folder (one subfolder per split)"})
    split: str = field(default="all", metadata={"help": "train, val, test or all"})
    seed: int = field(default=DEFAULT_CONFIG.seed, metadata={"help": "root seed of the benchmark (scenes and knowledge base)"})
    train_queries: int = field(default=DEFAULT_CONFIG.train_queries, metadata={"help": "queries in the train split"})
    val_queries: int = field(default=DEFAULT_CONFIG.val_queries, metadata={"help": "queries in the val split"})
    test_queries: int = field(default=DEFAULT_CONFIG.test_queries, metadata={"help": "queries in the test split"})
    pool_size: int = field(default=DEFAULT_CONFIG.pool_size, metadata={"help": "K, candidates per pool"})
    missing_positive_fraction: float = field(default=DEFAULT_CONFIG.missing_positive_fraction, metadata={"help": "fraction of pools without the positive"})
    image_size: int = field(default=DEFAULT_CONFIG.scene.image_size, metadata={"help": "side of the query images in pixels"})
    clutter: float = field(default=DEFAULT_CONFIG.scene.clutter, metadata={"help": "background clutter level in [0, 1]"})
    scorer_model: str = field(default="", metadata={"help": "open_clip model that mines hard negatives (empty: the embedded default)"})
    scorer_pretrained: str = field(default="", metadata={"help": "its checkpoint file or zoo tag"})


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    for f in fields(Args):
        required = f.default is MISSING
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            type=str if required else type(f.default),
            required=required,
            default=None if required else f.default,
            help=f.metadata["help"],
        )
    args = Args(**vars(parser.parse_args()))
    if args.split not in (*SPLITS, "all"):
        parser.error(f"--split must be one of {SPLITS} or 'all', got {args.split!r}")
    return args


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


def main() -> None:
    args = parse_args()
    config = benchmark_config(args)
    scorer = OpenClipScorer(args.scorer_model, args.scorer_pretrained or None) if args.scorer_model else default_scorer()
    print(f"benchmark {config}\nhard negatives mined with {scorer.name}")
    for split in SPLITS if args.split == "all" else (args.split,):
        start = time.perf_counter()
        path = write_split(Path(args.out) / split, split, config, scorer)
        pools = load_query_pools(path)
        without = sum(not p.has_positive for p in pools)
        print(f"{split}: {len(pools)} queries ({without} without the positive) -> {path} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
