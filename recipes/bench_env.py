"""Environment speed, measured side by side in one run (ratios, not absolute timings).

Three comparisons on the same queries and boxes, interleaved so machine noise hits
both sides alike:

1. **Candidate cache vs naive.** A REGION step of the env (candidate embeddings cached
   per pool, the FULL baseline computed once at reset) against what the public
   Region-R1 reward function does per call: encode the full image, the crop and all K
   candidates (in freely batched forwards: the baseline at its fastest), then rank both.
2. **Env step vs a bare scorer forward** on the same crop: the env's own overhead
   (cropping, ranking, reward, observation). The bare forward is the model's unpadded
   1-row forward (``encode_image`` on one preprocessed crop, outside the scorer), so a step
   that paid a padded batch would show here; the padded ``batch_size``-row forward that
   steps cost before one-row forwards is timed beside it.
3. **A group of n boxes scored batched** (``env.score_actions``: one scorer call, the pool
   and the FULL baseline already at hand) against the same n boxes as n one-step
   episodes of that query (``reset`` + ``step`` each: what a GRPO group costs through
   the plain Gymnasium API), and, stricter, against n single-action ``score_actions``
   calls (forward batching alone).

    python recipes/bench_env.py                 # embedded default (test split, rr-tiny scorer)
    python recipes/bench_env.py --queries 50 --group-size 8
    python recipes/bench_env.py --scorer.model examples.custom_scorer:HistogramScorer   # any scorer
    python recipes/bench_env.py --scorer.model ViT-B-32 --queries 5   # real size, random weights

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

from envs.threads import DEFAULT_THREADS, set_threads
from envs.boxes import crop, view_box_to_image
from envs.actions import REGION
from envs.region_rerank import RegionRerankEnv
from envs.factory import make_env, make_scorer
from envs.settings import ScorerSettings
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
    threads: int = DEFAULT_THREADS
    """torch intra-op threads"""
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
    return float(region_reward(old, new, env.settings.reward).reward)


def bare_forward(scorer, view) -> None:
    """The model's own unpadded 1-row image forward (open_clip scorers), else one
    ``embed_images`` call: what one view costs at least."""
    if not hasattr(scorer, "model") or not hasattr(scorer, "preprocess"):
        scorer.embed_images([view])
        return
    with torch.inference_mode():
        scorer.model.encode_image(scorer.preprocess(view)[None].to(scorer.device), normalize=True)


def padded_forward(scorer, view) -> None:
    """One forward of ``batch_size`` rows, the view padded with blanks: what a step cost when
    every forward was padded (open_clip scorers; NaN row otherwise)."""
    inputs = scorer.preprocess(view)[None]
    inputs = torch.cat([inputs, inputs.new_zeros((scorer.batch_size - 1, *inputs.shape[1:]))])
    with torch.inference_mode():
        scorer.model.encode_image(inputs.to(scorer.device), normalize=True)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(args: Args) -> None:
    set_threads(args.threads)
    env = make_env(args.data, make_scorer(args.scorer))
    rng = np.random.default_rng(args.seed)
    n_queries = min(args.queries, len(env.pools))
    order = rng.permutation(len(env.pools))[:n_queries]

    # Warm-up: first forwards allocate; every pool's candidates get cached like in training.
    for index in order:
        env.reset(options={"query_index": int(index)})
    naive = hasattr(env.scorer, "score_uncached")
    padded = hasattr(env.scorer, "model") and hasattr(env.scorer, "preprocess") and hasattr(env.scorer, "batch_size")
    keys = ("naive", "step", "forward", "padded", "batched", "episodes", "singles")
    times: dict[str, list[float]] = {k: [] for k in keys}
    for index in order:
        box = random_boxes(rng, 1)[0]
        group = [{"decision": REGION, "box": b} for b in random_boxes(rng, args.group_size)]
        action = {"decision": REGION, "box": box}

        env.reset(options={"query_index": int(index)})
        view = crop(env.image, view_box_to_image(box, env.view_box))
        times["naive"].append(timed(lambda: naive_region_reward(env, box)) if naive else float("nan"))
        times["step"].append(timed(lambda: env.step(action)))
        times["forward"].append(timed(lambda: bare_forward(env.scorer, view)))
        times["padded"].append(timed(lambda: padded_forward(env.scorer, view)) if padded else float("nan"))
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
        ("env step / bare unpadded 1-row forward on one view", median["step"] / median["forward"], "<= 1.1x"),
        (f"padded {getattr(env.scorer, 'batch_size', '?')}-row forward / 1-row forward (old step cost)",
         median["padded"] / median["forward"], "(what one row per view saves)"),
        (f"group of {args.group_size}: one-step episodes / batched", median["episodes"] / median["batched"], ">= 3x faster"),
        (f"group of {args.group_size}: single-action calls / batched", median["singles"] / median["batched"], "(forward batching alone)"),
    ]
    forward_rows = getattr(env.scorer, "forward_rows", "?")
    print(f"scorer {env.scorer.name}, K={pool_size}, {n_queries} queries, {args.threads} threads, "
          f"{forward_rows} row(s) per forward")
    print("median ms per call: " + ", ".join(f"{k} {v:.2f}" for k, v in median.items()))
    print(f"{'comparison':60s} {'ratio':>7s}  target")
    for name, ratio, target in rows:
        shown = f"{ratio:7.2f}" if np.isfinite(ratio) else f"{'n/a':>7s}"
        print(f"{name:60s} {shown}  {target}")


if __name__ == "__main__":
    main(tyro.cli(Args, args=sys.argv[1:]))
