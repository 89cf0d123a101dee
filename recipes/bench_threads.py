"""Torch intra-op threads: one vs two (or any counts) for the env, evaluation and the CPU
trainer, measured side by side in one run.

Each measurement is a fresh process (``--threads N``, as a recipe sets it once per process);
only the workload is timed, after imports and a warm-up. Thread counts alternate within
each round, so machine load hits every count alike. The table gives the median seconds per
count and each count's time relative to the first:

- ``env``: ``--env-steps`` one-step episodes (``reset`` + a REGION ``step`` of a random box);
- ``evaluate``: ``recipes/evaluate.py --test-queries <eval-queries>`` (every baseline);
- ``trainer``: ``--train-iterations`` iterations of ``train_rgrpo.py local``
  (no warm start, no validation).

    python recipes/bench_threads.py                     # 1 vs 2 threads, one round
    python recipes/bench_threads.py --rounds 3 --workloads env trainer
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import tyro

from envs.threads import set_threads

Workload = Literal["env", "evaluate", "trainer"]
RECIPES = Path(__file__).parent


@dataclass
class Args:
    counts: tuple[int, ...] = (1, 2)
    """torch intra-op thread counts compared (the first is the reference of the ratios)"""
    workloads: tuple[Workload, ...] = ("env", "evaluate", "trainer")
    """what is timed"""
    rounds: int = 1
    """measurements per workload and count (the table shows medians)"""
    env_steps: int = 40
    """one-step episodes of the env workload"""
    eval_queries: int = 20
    """test queries of the evaluate workload (recipes/evaluate.py --test-queries)"""
    train_iterations: int = 2
    """iterations of the trainer workload"""
    timeout_s: float = 900.0
    """give up on one measurement after this many seconds (its cell shows '>timeout')"""
    measure: Workload | None = None
    """internal: time this workload in this process with --threads and print the seconds"""
    threads: int = 1
    """internal: the torch threads of a --measure process"""


def time_env(args: Args) -> float:
    from envs.actions import REGION
    from envs.factory import make_env

    env = make_env()
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    env.step({"decision": REGION, "box": np.array([0.2, 0.2, 0.8, 0.8], np.float32)})  # warm-up
    start = time.perf_counter()
    for _ in range(args.env_steps):
        env.reset()
        size = rng.uniform(0.2, 0.8, 2)
        corner = rng.uniform(0.0, 1.0 - size)
        env.step({"decision": REGION, "box": np.concatenate([corner, corner + size]).astype(np.float32)})
    return time.perf_counter() - start


def recipe_module(name: str):
    """A recipe file imported as a module (recipes/ is no package)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", RECIPES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def time_evaluate(args: Args) -> float:
    evaluate = recipe_module("evaluate")
    with tempfile.TemporaryDirectory() as out:
        config = evaluate.Args(test_queries=args.eval_queries, out=Path(out), threads=args.threads)
        evaluate.make_env(None)  # warm-up: the dataset is materialized and the scorer loaded once
        start = time.perf_counter()
        evaluate.main(config)
        return time.perf_counter() - start


def time_trainer(args: Args) -> float:
    from agents.local.trainer import LocalTrainConfig, train
    from envs.factory import make_scorer

    scorer = make_scorer()
    with tempfile.TemporaryDirectory() as out:
        config = LocalTrainConfig(iterations=args.train_iterations, warm_start_steps=0, eval_every=0, progress=False,
                                  out=Path(out), threads=args.threads)
        start = time.perf_counter()
        train(config, scorer)
        return time.perf_counter() - start


def measure(args: Args, workload: Workload, threads: int) -> float | None:
    """Seconds of ``workload`` in a fresh process with ``threads`` torch threads (``None``: timed out)."""
    command = [sys.executable, __file__, "--measure", workload, "--threads", str(threads), "--env-steps",
               str(args.env_steps), "--eval-queries", str(args.eval_queries), "--train-iterations",
               str(args.train_iterations)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        raise RuntimeError(f"{workload} with {threads} threads failed:\n{done.stderr[-2000:]}")
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def table(times: dict[tuple[str, int], list[float | None]], args: Args) -> str:
    """Markdown table: median seconds per count, and each count's time over the first count's."""
    head = ["workload"] + [f"{n} thread{'s' * (n > 1)} (s)" for n in args.counts]
    head += [f"{n} / {args.counts[0]}" for n in args.counts[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload in args.workloads:
        medians = []
        for n in args.counts:
            values = times[(workload, n)]
            medians.append(None if None in values else float(np.median(values)))
        cells = [workload] + [">timeout" if m is None else f"{m:.2f}" for m in medians]
        cells += ["n/a" if None in (m, medians[0]) else f"{m / medians[0]:.2f}" for m in medians[1:]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args: Args) -> None:
    if args.measure is not None:
        set_threads(args.threads)
        seconds = {"env": time_env, "evaluate": time_evaluate, "trainer": time_trainer}[args.measure](args)
        print(json.dumps({"seconds": seconds}))
        return
    times: dict[tuple[str, int], list[float | None]] = {(w, n): [] for w in args.workloads for n in args.counts}
    for round_ in range(args.rounds):
        for workload in args.workloads:
            # alternate the order every round, so neither count always runs first
            for n in args.counts if round_ % 2 == 0 else tuple(reversed(args.counts)):
                times[(workload, n)].append(measure(args, workload, n))
                print(f"round {round_ + 1}: {workload} with {n} threads: {times[(workload, n)][-1]}", flush=True)
    settings = dataclasses.replace(args, measure=None)
    print(f"\nenv steps {settings.env_steps}, evaluate queries {settings.eval_queries}, trainer iterations "
          f"{settings.train_iterations}, {settings.rounds} round(s); median seconds of the workload alone\n")
    print(table(times, args))


if __name__ == "__main__":
    main(tyro.cli(Args))
