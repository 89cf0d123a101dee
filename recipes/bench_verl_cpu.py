"""Measure ``train_rgrpo.py verl-cpu``: per-phase step times, wall time and peak memory (PSS),
for the rollout as shipped and, side by side in the same run, as it was before batching.

    python recipes/bench_verl_cpu.py                                   # both variants, 20 steps each
    python recipes/bench_verl_cpu.py --variants batched -- --total-training-steps 50

Each variant is one ``recipes/train_rgrpo.py verl-cpu`` run in a subprocess (the
arguments after ``--`` go to every run), one after the other on the same machine:

- ``batched``: the default: the rollout server generates concurrent requests in one batch
  (:mod:`agents.verl.generation`) and verl's replay buffer polls every 50 ms
  (:mod:`agents.verl.sampler`);
- ``sequential``: one request at a time (``rollout.max_num_seqs=1``) and verl's built-in
  replay buffer, which polls every 2 s.

The bench samples the proportional set size (PSS) of each run's process tree every
second (PSS counts the torch libraries every process maps once, split among them) and
prints, per variant, the median seconds of each phase over the steps (from the run's
``summary.json``) and the ratio sequential / batched.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import tyro

from agents.verl.launch import PHASES, SUMMARY_FILE
from envs.atomic import atomic_write_json

VARIANTS: dict[str, tuple[str, ...]] = {
    "sequential": (
        "actor_rollout_ref.rollout.max_num_seqs=1",
        "trainer.v1.sampler.custom_sampler.path=null",
        "trainer.v1.sampler.custom_sampler.name=null",
    ),
    "batched": (),
}
"""Hydra overrides of each variant (the default run is ``batched``)."""
DEFAULT_RUN = ("--total-training-steps", "20", "--test-freq", "-1", "--save-freq", "-1",
               "--test-queries", "0")
"""A short run of the default configuration: 20 steps, no validation, checkpoint or test table."""


@dataclass
class Args:
    train_args: tyro.conf.Positional[tuple[str, ...]] = ()
    """arguments passed on to every recipes/train_rgrpo.py verl-cpu run (after the bench's defaults)"""
    variants: tuple[str, ...] = ("sequential", "batched")
    """which variants to run, in order"""
    out: Path = Path("runs/bench-verl-cpu")
    """one run folder per variant"""
    interval_s: float = 1.0
    """seconds between memory samples"""


def tree_pss(root: psutil.Process) -> tuple[int, int, int]:
    """Summed PSS and RSS (bytes) of ``root`` and its descendants, and how many processes."""
    pss = rss = count = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            info = process.memory_full_info()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pss, rss, count = pss + info.pss, rss + info.rss, count + 1
    return pss, rss, count


def run_variant(args: Args, name: str) -> dict:
    """One run of ``name``: its exit code, wall seconds, peak PSS and per-phase medians."""
    recipe = Path(__file__).resolve().parent / "train_rgrpo.py"
    out = args.out / name
    command = [sys.executable, str(recipe), "verl-cpu", *DEFAULT_RUN, *args.train_args,
               "--out", str(out), *VARIANTS[name]]
    start = time.perf_counter()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak = (0, 0, 0)
    while child.poll() is None:
        sample = tree_pss(root)
        if sample[0] > peak[0]:
            peak = sample
        time.sleep(args.interval_s)
    result = {"exit": child.returncode, "wall_s": time.perf_counter() - start, "peak_pss": peak[0], "processes": peak[2]}
    if child.returncode == 0:
        steps = json.loads((out / SUMMARY_FILE).read_text())["steps"]
        result["medians"] = {
            phase: statistics.median(v for v in (s["phase_s"][phase] for s in steps) if v is not None)
            for phase in PHASES if any(s["phase_s"][phase] is not None for s in steps)
        }
    return result


def main(args: Args) -> dict:
    unknown = [name for name in args.variants if name not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    results = {name: run_variant(args, name) for name in args.variants}
    gib = 1 << 30
    phases = [p for p in PHASES if any(p in r.get("medians", {}) for r in results.values())]
    print("\n| variant | exit | wall s | peak PSS GiB | " + " | ".join(f"{p} s" for p in phases) + " |")
    print("|---" * (4 + len(phases)) + "|")
    for name, r in results.items():
        cells = [f"{r['medians'][p]:.2f}" if p in r.get("medians", {}) else "-" for p in phases]
        print(f"| {name} | {r['exit']} | {r['wall_s']:.0f} | {r['peak_pss'] / gib:.1f} | " + " | ".join(cells) + " |")
    if all(r.get("medians") for r in results.values()) and {"sequential", "batched"} <= set(results):
        ratios = [results["sequential"]["medians"][p] / max(results["batched"]["medians"][p], 1e-9) for p in phases]
        print("| sequential / batched | | | | " + " | ".join(f"{x:.2f}x" for x in ratios) + " |")
    atomic_write_json(args.out / "bench.json", results, indent=1)
    return results


if __name__ == "__main__":
    sys.exit(0 if all(r["exit"] == 0 for r in main(tyro.cli(Args)).values()) else 1)
