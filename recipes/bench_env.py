"""Environment speed, measured side by side in one run (ratios, not absolute timings).

Three comparisons on the same queries and boxes, interleaved so machine noise hits
both sides alike:

1. **Candidate cache vs naive.** A REGION step of the env (candidate embeddings cached
   per pool, the FULL baseline computed once at reset) against what the public
   Region-R1 reward function does per call: encode the full image, the crop and all K
   candidates, then rank both.
2. **Env step vs a bare scorer forward** on the same crop: the env's own overhead
   (cropping, ranking, reward, observation).
3. **A group of n boxes scored batched** (``env.score_actions``: one forward, the pool
   and the FULL baseline already at hand) against the same n boxes as n one-step
   episodes of that query (``reset`` + ``step`` each: what a GRPO group costs through
   the plain Gymnasium API), and, stricter, against n single-action ``score_actions``
   calls (forward batching alone).

    python recipes/bench_env.py                 # embedded default (test split, rr-tiny scorer)
    python recipes/bench_env.py --queries 50 --group-size 8
    python recipes/bench_env.py --scorer.model examples.custom_scorer:HistogramScorer   # any scorer

Comparison 1 needs a scorer that can re-encode a pool uncached (``score_uncached``: the built-in
open_clip and transformers scorers); for others its row says n/a.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro

from envs.boxes import crop, view_box_to_image
from envs.actions import REGION
from envs.region_rerank import RegionRerankEnv
from envs.factory import make_env, make_scorer
from envs.settings import ScorerSettings, upgrade_legacy_flags
from rewards import ranking_stats, region_reward


@dataclass
class Args:
    queries: int = 40
    """number of queries timed (each is one measurement of every mode)"""
    group_size: int = 8
    """boxes per group for the batched-vs-sequential comparison"""
    data: Path | None = None
    """query-pool JSONL; default: the embedded benchmark's test split"""
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    """the re-ranker (--scorer.model: module:attr of your own, a transformers folder, or an open_clip name); default: the embedded rr-tiny scorer"""
    threads: int = 2
    """torch intra-op threads (the build machines have 2 cores)"""
    seed: int = 0
    """seed of the query order and the random boxes"""


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` random 0-1 boxes covering 20-80% of each side of the view."""
    size = rng.uniform(0.2, 0.8, size=(n, 2))
    corner = rng.uniform(0.0, 1.0 - size)
    return np.concatenate([corner, corner + size], axis=1)


def naive_region_reward(env: RegionRerankEnv, box: np.ndarray) -> float:
    """One REGION reward the way the public Region-R1 reward function computes it:
    nothing cached, the full image, the crop and every candidate encoded per call."""
    scorer, pool, image = env.scorer, env.pool, env.image
    both = scorer.score_uncached([image, crop(image, view_box_to_image(box, env.view_box))], pool)
    old, new = ranking_stats(both[0], pool.positives), ranking_stats(both[1], pool.positives)
    return float(region_reward(old, new, env.reward_config).reward)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    env = make_env(args.data, make_scorer(args.scorer))
    rng = np.random.default_rng(args.seed)
    n_queries = min(args.queries, len(env.pools))
    order = rng.permutation(len(env.pools))[:n_queries]

    # Warm-up: first forwards allocate; every pool's candidates get cached like in training.
    for index in order:
        env.reset(options={"query_index": int(index)})
    naive = hasattr(env.scorer, "score_uncached")
    times: dict[str, list[float]] = {k: [] for k in ("naive", "step", "forward", "batched", "episodes", "singles")}
    for index in order:
        box = random_boxes(rng, 1)[0]
        group = [{"decision": REGION, "box": b} for b in random_boxes(rng, args.group_size)]
        action = {"decision": REGION, "box": box}

        env.reset(options={"query_index": int(index)})
        view = crop(env.image, view_box_to_image(box, env.view_box))
        times["naive"].append(timed(lambda: naive_region_reward(env, box)) if naive else float("nan"))
        times["step"].append(timed(lambda: env.step(action)))
        times["forward"].append(timed(lambda: env.scorer.embed_images([view])))
        env.reset(options={"query_index": int(index)})
        times["batched"].append(timed(lambda: env.score_actions(group)))
        times["singles"].append(timed(lambda: [env.score_actions([a]) for a in group]))
        times["episodes"].append(
            timed(lambda: [(env.reset(options={"query_index": int(index)}), env.step(a)) for a in group])
        )

    median = {k: float(np.median(v)) * 1e3 for k, v in times.items()}
    pool_size = len(env.pools[int(order[0])].candidates)
    rows = [
        ("cached step vs naive (re-encode query + K candidates)", median["naive"] / median["step"], ">= 15x faster"),
        ("env step / bare scorer forward on one view", median["step"] / median["forward"], "<= 1.25x"),
        (f"group of {args.group_size}: one-step episodes / batched", median["episodes"] / median["batched"], ">= 3x faster"),
        (f"group of {args.group_size}: single-action calls / batched", median["singles"] / median["batched"], "(forward batching alone)"),
    ]
    print(f"scorer {env.scorer.name}, K={pool_size}, {n_queries} queries, {args.threads} threads")
    print("median ms per call: " + ", ".join(f"{k} {v:.2f}" for k, v in median.items()))
    print(f"{'comparison':60s} {'ratio':>7s}  target")
    for name, ratio, target in rows:
        shown = f"{ratio:7.2f}" if np.isfinite(ratio) else f"{'n/a':>7s}"
        print(f"{name:60s} {shown}  {target}")


if __name__ == "__main__":
    main(tyro.cli(Args, args=upgrade_legacy_flags(sys.argv[1:])))
