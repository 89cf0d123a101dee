"""Measure a ``--backend verl-cpu`` run: wall time, peak memory (PSS) and the step breakdown.

    python recipes/bench_verl_cpu.py                                  # the default run
    python recipes/bench_verl_cpu.py -- --verl-cpu.total-training-steps 2

Runs ``recipes/train_rgrpo.py --backend verl-cpu`` (plus any arguments after ``--``) in a
subprocess, samples the proportional set size (PSS) of its whole process tree (driver,
Ray, TransferQueue, workers) every second, and prints the peak with the run's own
per-step table. PSS counts shared pages (the torch libraries every process maps) once,
split among the processes sharing them; summing each process's RSS would count them once
per process.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import tyro


@dataclass
class Args:
    train_args: tyro.conf.Positional[tuple[str, ...]] = ()
    """arguments passed on to recipes/train_rgrpo.py --backend verl-cpu"""
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


def main(args: Args) -> None:
    recipe = Path(__file__).resolve().parent / "train_rgrpo.py"
    command = [sys.executable, str(recipe), "--backend", "verl-cpu", *args.train_args]
    start = time.perf_counter()
    child = subprocess.Popen(command)
    root = psutil.Process(child.pid)
    peak = (0, 0, 0)
    while child.poll() is None:
        sample = tree_pss(root)
        if sample[0] > peak[0]:
            peak = sample
        time.sleep(args.interval_s)
    wall = time.perf_counter() - start
    gib = 1 << 30
    print(
        f"exit {child.returncode}; wall {wall:.0f} s; peak PSS {peak[0] / gib:.1f} GiB over {peak[2]} processes "
        f"(summed RSS at that moment {peak[1] / gib:.1f} GiB)"
    )
    sys.exit(child.returncode)


if __name__ == "__main__":
    main(tyro.cli(Args))
