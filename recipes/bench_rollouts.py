"""One training step's rollouts through the real verl agent loop: env and scoring time,
today's per-episode path against the batched scorer service, side by side in one run.

A step is ``queries x rollouts`` episodes of :class:`agents.verl.agent_loop.RegionRerankAgentLoop`
run concurrently, as one verl agent-loop worker runs them. Everything is the training
code (the agent loop, verl's Continuous Token builder, the processor, the parser, the env,
the scorer, the reward) except the policy server: a stand-in answers instantly with a
REGION tool call whose box is drawn at random per rollout (no two rollouts share a box,
so no crop cache can flatter the figures). Two paths, interleaved step by step:

- ``per-episode`` (``train_rgrpo.py verl --scoring.no-enabled``, the path before the service): every
  episode builds its env, whose ``reset`` encodes the FULL image, and scores its crop in
  its own forward, behind a process-wide lock;
- ``service`` (the default): one :class:`agents.verl.scoring.ScoringService` batches the
  crops of all episodes (``max_batch`` / ``max_wait_ms``) and computes each query's FULL
  and candidates once for all its rollouts.

Candidate embeddings are cached before timing for both (training caches them after the
first epoch), so the figures are the per-step query-view work. Printed per scorer:

- env+scoring CPU seconds per step: the CPU time of every env call (pool lookup, reset,
  step: image decode, crops, the in-process forwards of the per-episode path, the reward),
  each measured on the thread that ran it, plus the CPU time of the service's threads
  (batching, forwards, image decodes). A wall-clock union of "some episode is in the env"
  would not measure this: with 128 episodes in flight on a GIL some episode is always in
  the env, so the union is close to the whole step for either path. Torch runs with one
  intra-op thread (``--threads 1``) so that a forward's CPU is on the thread that asked
  for it; the two cores still run two threads at once;
- the whole step's wall time (prompt building included, the same work for both paths);
- image forwards per rollout, images encoded per rollout and mean images per forward.
  These three do not depend on the machine: they carry to a GPU.

    python recipes/bench_rollouts.py                               # rr-tiny and ViT-B-16 (random weights)
    python recipes/bench_rollouts.py --queries 16 --rollouts 8 --steps 2 --scorers rr-tiny
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import tyro

from agents.verl.settings import LoopSettings, ScoringServiceSettings
from envs.threads import DEFAULT_THREADS, set_threads
from envs.actions import REGION
from envs.data.pools import QueryPool
from envs.settings import ImageSettings, ScorerSettings



def scorer_settings(name: str, device: str) -> ScorerSettings:
    """``rr-tiny``: the embedded default; any other name: that open_clip model with random weights."""
    return ScorerSettings(device=device) if name == "rr-tiny" else ScorerSettings(model=name, device=device)


@dataclass
class Args:
    queries: int = 16
    """queries per step (verl's train_batch_size)"""
    rollouts: int = 8
    """rollouts per query (GRPO's n)"""
    steps: int = 2
    """timed steps per path (distinct queries each, interleaved per path)"""
    scorers: tuple[str, ...] = ("rr-tiny", "ViT-B-16")
    """scorers to measure: rr-tiny (the embedded default) and/or open_clip models with random weights"""
    device: str = "cpu"
    """torch device of the scorers (cuda on a GPU machine)"""
    scoring: ScoringServiceSettings = field(default_factory=ScoringServiceSettings)
    """the service's settings (its path; the per-episode path ignores them)"""
    max_pixels: int = 64 * 28 * 28
    """pixel limit of the images shown to the (stand-in) policy: only prompt building uses them"""
    threads: int = DEFAULT_THREADS
    """torch intra-op threads; with 1 a forward's CPU time is on the thread that ran it, which the
    CPU attribution needs (with more, torch's worker threads' share is not counted)"""
    seed: int = 0


class InstantPolicy:
    """Stand-in for verl's server manager: a REGION tool call with a fresh random box per call,
    in pixels of the image the policy was shown, answered at once."""

    def __init__(self, tokenizer, seed: int) -> None:
        self.tokenizer, self.rng, self.calls = tokenizer, np.random.default_rng(seed), 0

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kwargs):
        from envs.text_actions import format_action_text
        from verl.workers.rollout.replica import TokenOutput

        self.calls += 1
        size = self.rng.uniform(0.2, 0.8, size=2)
        corner = self.rng.uniform(0.0, 1.0 - size)
        box = np.concatenate([corner, corner + size])
        text = format_action_text(REGION, box, frame="resized", resized_size=image_data[-1].size)
        ids = self.tokenizer.encode(text, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids))


def timed_loop_class():
    """The agent loop, recording the CPU time of every env call on the thread that runs it."""
    from agents.verl.agent_loop import RegionRerankAgentLoop

    class TimedLoop(RegionRerankAgentLoop):
        cpu_seconds: list[float] = []

        async def _env_call(self, episode_metrics, fn, *args, **kwargs):
            def timed(*a, **k):
                start = time.thread_time()
                try:
                    return fn(*a, **k)
                finally:
                    TimedLoop.cpu_seconds.append(time.thread_time() - start)  # list.append is atomic

            return await super()._env_call(episode_metrics, timed, *args, **kwargs)

    return TimedLoop


def service_cpu_seconds() -> float:
    """CPU seconds so far of this process's scoring-service threads (its event loop, the
    scorer thread and its image decoders)."""
    total = 0.0
    for thread in threading.enumerate():
        if thread.name.startswith(("scoring-service", "scorer")) and thread.ident is not None:
            try:
                total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
            except (OSError, ProcessLookupError):  # the thread ended meanwhile
                pass
    return total


def trainer_config():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import verl

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        return compose(
            config_name="ppo_trainer",
            overrides=["actor_rollout_ref.rollout.name=vllm", "data.max_prompt_length=4096", "data.max_response_length=512"],
        )


def scorer_counters(settings: LoopSettings):
    """The work counters of the scorer that path uses (in-process, or the service's)."""
    from agents.verl import agent_loop
    from agents.verl.scoring import scoring_host

    if settings.scoring.enabled:
        return scoring_host(settings.scorer, settings.scoring, use_ray=False).service.scorer
    return agent_loop.shared_scorer(settings.scorer)


def run_step(loop_cls, config, processor, policy, settings: LoopSettings, rows: list[dict]) -> tuple[float, float]:
    """One step's episodes, concurrently; returns (env+scoring CPU s, step wall s)."""
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap
    from verl.utils.dataset.rl_dataset import RLHFDataset

    kwargs = {k: v for k, v in vars(settings).items()}

    async def episode(row):
        loop = loop_cls(
            trainer_config=DictConfigWrap(config), server_manager=policy, tokenizer=processor.tokenizer,
            processor=processor, dataset_cls=RLHFDataset, data_config=DictConfigWrap(config.data),
            hf_model_type="qwen2_5_vl", **kwargs,
        )
        return await loop.run({"temperature": 1.0, "top_p": 1.0}, extra_info=row, raw_prompt=[], uid=row["uid"])

    async def step():
        return await asyncio.gather(*(episode(row) for row in rows))

    loop_cls.cpu_seconds.clear()
    service_before = service_cpu_seconds()
    start = time.perf_counter()
    outputs = asyncio.run(step())
    wall = time.perf_counter() - start
    cpu = sum(loop_cls.cpu_seconds) + service_cpu_seconds() - service_before
    failed = [o.extra_fields.get("scoring_error") for o in outputs if o.extra_fields.get("scoring_failed")]
    if failed:
        raise RuntimeError(f"{len(failed)} episodes failed: {failed[:3]}")
    return cpu, wall


@dataclass
class Bench:
    """What every measured step shares: the queries (``steps + 1`` batches: the timed ones
    and the warm-up), their pool file, verl's trainer config, the processor and the timed
    agent loop."""

    args: Args
    pools: list[QueryPool]
    pool_file: Path
    config: Any
    processor: Any
    loop_cls: type

    def rows(self, step: int) -> list[dict]:
        """The agent-loop rows of ``step``: each of its queries ``rollouts`` times."""
        chosen = self.pools[step * self.args.queries : (step + 1) * self.args.queries]
        return [{"pool_file": str(self.pool_file), "query_id": p.query_id, "uid": f"s{step}-{p.query_id}"}
                for p in chosen for _ in range(self.args.rollouts)]


@dataclass(frozen=True)
class PathFigures:
    """One path's figures: per step, env+scoring CPU and wall seconds; per rollout, image
    forwards and images encoded; and images per forward."""

    env_seconds: float
    wall_seconds: float
    forwards_per_rollout: float
    images_per_rollout: float
    images_per_forward: float


def main(args: Args) -> None:
    set_threads(args.threads)
    bench = prepare_bench(args)
    n = args.rollouts
    print(f"{args.queries} queries x {n} rollouts per step, {args.steps} timed steps per path, {args.threads} threads; "
          f"service max_batch {args.scoring.max_batch}, max_wait_ms {args.scoring.max_wait_ms:g}")
    header = f"{'scorer':9s} {'path':12s} {'env+scoring CPU s/step':>23s} {'step wall s':>12s} {'forwards/rollout':>17s} {'images/rollout':>15s} {'images/forward':>15s}"
    results = {}
    for name in args.scorers:
        results.update({(name, path): figures for path, figures in measure_scorer(bench, name).items()})
        print_rows(header if name == args.scorers[0] else None, results, name)
    print(f"bound for the service: <= 1 + 1/n = {1 + 1 / n:.3f} images per rollout")


def prepare_bench(args: Args) -> Bench:
    """``(steps + 1) x queries`` queries of the embedded train split drawn with ``args.seed``,
    written to a pool file, and the verl pieces the agent loop needs."""
    from transformers import AutoProcessor

    from agents.qwen.tiny import cached_tiny_qwen
    from envs.data.pools import write_query_pools
    from envs.factory import resolve_dataset

    pools = list(resolve_dataset(None, split="train", purpose="train"))
    need = args.queries * (args.steps + 1)
    if len(pools) < need:
        raise SystemExit(f"the embedded train split has {len(pools)} queries; {need} needed (lower --steps or --queries)")
    rng = np.random.default_rng(args.seed)
    pools = [pools[i] for i in rng.permutation(len(pools))[:need]]
    work = Path(tempfile.mkdtemp(prefix="bench-rollouts-"))
    pool_file = write_query_pools(pools, work / "pools.jsonl")
    processor = AutoProcessor.from_pretrained(cached_tiny_qwen(Path(tempfile.gettempdir()) / "region-rerank-bench"))
    return Bench(args, pools, pool_file, trainer_config(), processor, timed_loop_class())


def measure_scorer(bench: Bench, name: str) -> dict[str, PathFigures]:
    """Both paths' figures for scorer ``name``: each warmed up, then their steps timed in turn."""
    args = bench.args
    # No decision balancing: it would force a FULL into every all-REGION group, and each
    # rollout is to score one crop here.
    common = dict(scorer=scorer_settings(name, args.device), images=ImageSettings(max_pixels=args.max_pixels), balance_groups=False)
    paths = {
        "per-episode": LoopSettings(**common, scoring=ScoringServiceSettings(enabled=False)),
        "service": LoopSettings(**common, scoring=args.scoring),
    }
    counters = {path: warmed_up_scorer(bench, settings) for path, settings in paths.items()}
    totals = {path: {"env": 0.0, "wall": 0.0, "forwards": 0, "images": 0} for path in paths}
    for step in range(args.steps):
        for path, settings in paths.items():
            add_timed_step(bench, settings, counters[path], step, totals[path])
    rollouts = args.steps * args.queries * args.rollouts
    return {
        path: PathFigures(t["env"] / args.steps, t["wall"] / args.steps, t["forwards"] / rollouts,
                          t["images"] / rollouts, t["images"] / max(1, t["forwards"]))
        for path, t in totals.items()
    }


def warmed_up_scorer(bench: Bench, settings: LoopSettings):
    """The scorer of ``settings``' path with every candidate cached and its first forward
    done (one query of the warm-up batch); its counters measure the timed steps."""
    scorer = scorer_counters(settings)
    for pool in bench.pools:
        scorer.candidate_embeddings(pool)
    policy = InstantPolicy(bench.processor.tokenizer, bench.args.seed)
    run_step(bench.loop_cls, bench.config, bench.processor, policy, settings, bench.rows(bench.args.steps)[: bench.args.rollouts])
    return scorer


def add_timed_step(bench: Bench, settings: LoopSettings, scorer, step: int, total: dict) -> None:
    """Run ``step``'s episodes on ``settings``' path; add its CPU and wall seconds and the
    scorer's image forwards and images encoded to ``total``."""
    stats = scorer.stats
    before = (stats.image_forwards, stats.images_encoded)
    policy = InstantPolicy(bench.processor.tokenizer, bench.args.seed + 1000 * step)
    env_s, wall = run_step(bench.loop_cls, bench.config, bench.processor, policy, settings, bench.rows(step))
    total["env"] += env_s
    total["wall"] += wall
    total["forwards"] += stats.image_forwards - before[0]
    total["images"] += stats.images_encoded - before[1]


def print_rows(header: str | None, results: dict[tuple[str, str], PathFigures], name: str) -> None:
    """The table rows of one scorer (printed as soon as it is measured)."""
    if header:
        print(header)
    for path in ("per-episode", "service"):
        f = results[(name, path)]
        print(f"{name:9s} {path:12s} {f.env_seconds:23.2f} {f.wall_seconds:12.2f} {f.forwards_per_rollout:17.3f} "
              f"{f.images_per_rollout:15.3f} {f.images_per_forward:15.2f}")
    old, new = results[(name, "per-episode")], results[(name, "service")]
    print(f"{name:9s} {'ratio':12s} {old.env_seconds / new.env_seconds:22.2f}x {old.wall_seconds / new.wall_seconds:11.2f}x "
          f"{old.forwards_per_rollout / max(new.forwards_per_rollout, 1e-9):16.2f}x "
          f"{old.images_per_rollout / new.images_per_rollout:14.2f}x", flush=True)


if __name__ == "__main__":
    main(tyro.cli(Args, args=sys.argv[1:]))
