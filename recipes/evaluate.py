"""Evaluate cropping policies on a split: the paper's metrics for every baseline.

Baselines: FULL (the scorer alone), center crop, random crop, the annotated box, and
the oracle (best of FULL and a grid of boxes by the reward: the upper bound any cropping
policy reaches with this scorer). With the env's SEARCH on (--env.search) also
search-full, search-annotated and oracle-search (best of the grid, each box with and
without search); with --env.max-regions 2 the multi-region oracle oracle-2box (best of
FULL, every grid box and every pair of grid boxes). The table then adds pool coverage
before/after, the search rate and the KB recall@K. Add a trained policy with ``--checkpoint`` (a policy
saved by ``recipes/train_rgrpo.py local``), any callable with ``--policy module:attr``, or
Qwen-VL checkpoints with ``--vlm [NAME=]PATH ...`` (a zero-shot Qwen2.5-VL, or a policy trained with
verl: greedy, with the training prompt and parser).

Writes ``results.md`` (the table), ``results.json`` (summaries and per-episode
records), ``per_query.jsonl`` (one row per policy and query: decisions, boxes, ranks,
reward terms), ``rc_by_bucket.png`` / ``rank_before_after.png`` and ``gallery.png`` (single
queries with the policy's, the annotated and the oracle's boxes; see
:mod:`agents.evaluation.gallery`) to ``--out``.

    python recipes/evaluate.py                              # embedded default, test split
    python recipes/evaluate.py --gallery.policies oracle --gallery.gains 8   # what to draw
    python recipes/evaluate.py --data pools.jsonl --scorer.model EVA02-B-16 --scorer.pretrained eva.pt
    python recipes/evaluate.py --scorer.model /models/siglip-base-patch16-224     # a transformers folder
    python recipes/evaluate.py --scorer.model examples.custom_scorer:HistogramScorer --scorer.options bins 6
    python recipes/evaluate.py --env.search --env.max-regions 2 \
        --baselines full annotated oracle search-full search-annotated oracle-search oracle-2box

``--scorer.model module:attr`` imports your factory or class (from the installed packages or
the current directory) and calls it with ``--scorer.options`` as keywords; see the README's
"Bring your own re-ranker".
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from agents.evaluation.baselines import baseline_policies
from agents.evaluation.runner import evaluate_and_report
from agents.evaluation.gallery import GalleryConfig
from envs.threads import DEFAULT_THREADS, set_threads
from envs.data.pools import DataError
from envs.factory import import_object, make_env, make_scorer
from envs.settings import EnvSettings, ImageSettings, ScorerSettings


@dataclass
class Args:
    split: str = "test"
    """embedded-benchmark split, used when --data is not given"""
    data: Path | None = None
    """query-pool JSONL (all queries are kept, for CondR@1); default: the embedded benchmark"""
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    """the re-ranker (--scorer.model: module:attr of your own, a transformers folder, or an open_clip name such as EVA02-B-16); default: the embedded rr-tiny scorer"""
    baselines: tuple[str, ...] = ("full", "center", "random", "annotated", "oracle")
    """baselines to run, from: full, center, random, annotated, oracle; with --env.search also search-full, search-annotated, oracle-search; with --env.max-regions 2 also oracle-2box"""
    center_scale: float = 0.5
    """side of the center crop as a fraction of the image side"""
    annotated_margin: float = 0.0
    """context kept around the annotated box, as a fraction of its size"""
    checkpoint: Path | None = None
    """a trained policy checkpoint (from recipes/train_rgrpo.py local)"""
    policy: str | None = None
    """any policy callable as 'module:attribute' (called as policy(obs, info, env))"""
    vlm: tuple[str, ...] = ()
    """Qwen-VL checkpoints to evaluate greedy with the training prompt and parser, each
    PATH or NAME=PATH (e.g. "warm start=runs/ws" "trained=runs/verl-cpu/checkpoints/.../huggingface")"""
    images: ImageSettings = field(default_factory=ImageSettings)
    """how the --vlm policies see an image (match the training run's --images.*)"""
    test_queries: int | None = None
    """evaluate only the first N queries of the split (quick checks; the same flag as the training recipes')"""
    out: Path = Path("runs/eval")
    """output folder for results.md, results.json and the plots"""
    seed: int = 0
    """seed of the random-crop baseline"""
    threads: int = DEFAULT_THREADS
    """torch intra-op threads"""
    env: EnvSettings = field(default_factory=EnvSettings)
    """the episode: REGION steps (1 is the paper's setting), reward weights and penalties (the mean reward column uses them)"""
    gallery: GalleryConfig = field(default_factory=GalleryConfig)
    """which queries gallery.png shows, and for which policies"""


def build_policies(args: Args) -> dict[str, object]:
    try:
        policies = baseline_policies(
            args.baselines, center_scale=args.center_scale, annotated_margin=args.annotated_margin, seed=args.seed
        )
    except ValueError as err:
        raise SystemExit(str(err)) from err
    if args.checkpoint is not None:
        from agents.local.policy import load_policy

        policies["trained"] = load_policy(args.checkpoint)
    if args.policy is not None:
        try:
            policies[args.policy] = import_object(args.policy, what="--policy")
        except ValueError as err:
            raise SystemExit(str(err)) from None
    if args.vlm:
        from agents.qwen.policy import vlm_policies

        try:
            policies.update(vlm_policies(args.vlm, args.images))
        except ValueError as err:
            raise SystemExit(f"--vlm: {err}") from None
    return policies


def main(args: Args) -> dict[str, dict]:
    set_threads(args.threads)
    env = make_env(args.data, make_scorer(args.scorer), split=args.split, purpose="eval", settings=args.env)
    n = len(env.pools) if args.test_queries is None else min(args.test_queries, len(env.pools))
    source = str(args.data) if args.data else f"embedded benchmark, {args.split} split"
    summaries = evaluate_and_report(env, build_policies(args), range(n), args.out, source, args.gallery)
    return summaries


if __name__ == "__main__":
    try:
        main(tyro.cli(Args, args=sys.argv[1:]))
    except DataError as err:  # bad input data: say which file/line/field, no traceback
        raise SystemExit(f"error: {err}") from None
