"""r-GRPO vs GRPO on verl's own trainer (``train_rgrpo.py verl-cpu``), several paired seeds.

Each (estimator, seed) cell is one ``python recipes/train_rgrpo.py verl-cpu`` run
in its own process (Ray and every worker end with it): the learner warm-started with the
seed, verl RL with the estimator, then the test table of the warm start and the trained
policy (greedy, the training prompt and parser). GRPO runs with plain on-policy groups
(decision-balanced groups are part of r-GRPO). The estimators share each seed's warm
start, data order and rollout seeds, so the comparison is paired.

A cell whose folder already holds a finished run of the same command is reused (its
``cell.json`` records the command), so an interrupted comparison goes on where it
stopped and ``--seeds`` / ``--estimators`` can add cells to an existing one; a cell whose
command changed is trained again.

Writes to ``--out``: ``results.md`` (mean ± std over seeds of the test metrics of the
warm start and of each estimator, the paired differences trained - warm start and
estimator - first estimator with 95% intervals), ``results.json``, ``curves.png`` (greedy
validation MRR and crop rate by FULL rank over steps, every run) and ``dashboard.png``
(the sampled crop rates over training); ``results.md`` also says where each run's greedy
policy ends: cropping every query, none (tool use collapsed), or selectively.

    python recipes/compare_verl.py                                  # rgrpo and grpo, seeds 0 1 2
    python recipes/compare_verl.py --seeds 0 --estimators rgrpo     # one run
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import tyro

from agents.evaluation.dashboard import plot_decision_dashboard, plot_validation_curves
from agents.evaluation.experiments import paired_differences, paired_table, variants_table
from envs.atomic import atomic_write_json, atomic_write_text

METRICS = ("MRR", "R@1", "CondR@1", "RC", "RC[1]", "RC[11-K]")
WARM_START = "warm start"


@dataclass
class Args:
    estimators: tuple[str, ...] = ("rgrpo", "grpo")
    """verl advantage estimators to compare (the first is the reference of the paired table)"""
    seeds: tuple[int, ...] = (0, 1, 2)
    """seeds (each seeds the warm start, the data order and the rollout sampling; shared by the estimators)"""
    out: Path = Path("runs/compare-verl")
    """output folder: results.md, results.json, curves.png, dashboard.png and one folder per run"""
    test_queries: int | None = None
    """evaluate on the first N test queries only (default: all)"""
    train_args: tyro.conf.Positional[tuple[str, ...]] = ()
    """further arguments for every run of recipes/train_rgrpo.py (e.g. --total-training-steps 50)"""


def run_dir(out: Path, estimator: str, seed: int) -> Path:
    return out / f"{estimator}-seed{seed}"


def run_command(args: Args, estimator: str, seed: int) -> list[str]:
    """The ``train_rgrpo.py`` command of one cell."""
    recipe = Path(__file__).resolve().parent / "train_rgrpo.py"
    command = [sys.executable, str(recipe), "verl-cpu", "--seed", str(seed),
               "--out", str(run_dir(args.out, estimator, seed)), *args.train_args]
    if args.test_queries is not None:
        command += ["--test-queries", str(args.test_queries)]
    if estimator != "rgrpo":
        command.append("--no-balance-groups")
    return command + [f"algorithm.adv_estimator={estimator}"]


CELL_FILE = "cell.json"
"""Written into a cell's folder when its run finished: the command that made it."""


def finished(folder: Path, command: list[str]) -> bool:
    """Whether ``folder`` holds a finished run of ``command`` (the interpreter path aside)."""
    record = folder / CELL_FILE
    if not record.is_file() or not (folder / "test" / "results.json").is_file():
        return False
    return json.loads(record.read_text()).get("command") == command[1:]


def greedy_decisions(summary: dict) -> str:
    """Where a run's greedy policy ends, from its last validation: crops every query, none,
    or selectively (its crop rate where FULL ranks the positive first and 11th or worse)."""
    points = [p for p in summary["validation"] if "mrr" in p]
    if not points:
        return "not validated"
    last = points[-1]
    if last["crop_rate"] >= 0.95:
        return "crops every query"
    if last["crop_rate"] <= 0.05:
        return "never crops"
    rc = last["rc"]
    return f"selective (crop rate {rc['1']:.2f} at FULL rank 1, {rc['11-K']:.2f} at 11-K)"


def training_history(summary: dict) -> list[dict]:
    """A verl run's steps in the decision dashboard's keys (:mod:`agents.evaluation.dashboard`)."""
    history = []
    for step in summary["steps"]:
        row = {"reward": step["reward"], "rc_rate": step["crop_rate"], "balance_balanced": step["balanced"] or 0.0}
        row.update({f"rc_rate[{name}]": rate for name, rate in step["rc"].items() if rate is not None})
        history.append(row)
    return history


def main(args: Args) -> dict:
    args.out.mkdir(parents=True, exist_ok=True)
    runs, curves, dashboard = [], {}, []
    cells = [(seed, estimator) for seed in args.seeds for estimator in args.estimators]
    for i, (seed, estimator) in enumerate(cells):
        folder = run_dir(args.out, estimator, seed)
        command = run_command(args, estimator, seed)
        if finished(folder, command):
            print(f"[{i + 1}/{len(cells)}] {estimator}, seed {seed}: reusing the finished run in {folder}", flush=True)
        else:
            print(f"[{i + 1}/{len(cells)}] {estimator}, seed {seed} -> {folder}", flush=True)
            subprocess.run(command, check=True)
            atomic_write_json(folder / CELL_FILE, {"command": command[1:]})
        test = json.loads((folder / "test" / "results.json").read_text())["summaries"]
        summary = json.loads((folder / "summary.json").read_text())
        if not any(r["variant"] == WARM_START and r["seed"] == seed for r in runs):
            runs.append({"variant": WARM_START, "seed": seed, "test": test[WARM_START]})
        runs.append({"variant": estimator, "seed": seed, "test": test["trained"]})
        curves[f"{estimator} seed {seed}"] = summary
        dashboard.append({"variant": estimator, "seed": seed, "history": training_history(summary)})
    summary = {
        name: {m: _mean_std([r["test"][m] for r in runs if r["variant"] == name]) for m in METRICS}
        for name in dict.fromkeys(r["variant"] for r in runs)
    }
    table = variants_table(summary, len(args.seeds))
    table += "\n\n" + paired_table(paired_differences(runs, WARM_START, METRICS), WARM_START)
    if len(args.estimators) > 1:
        table += "\n\n" + paired_table(paired_differences([r for r in runs if r["variant"] != WARM_START],
                                                           args.estimators[0], METRICS), args.estimators[0])
    states = {label: greedy_decisions(summary) for label, summary in curves.items()}
    table += "\n\nwhere each run's greedy policy ends (last validation): " + "; ".join(f"{k}: {v}" for k, v in states.items())
    atomic_write_text(args.out / "results.md", table + "\n")
    atomic_write_json(args.out / "results.json", {"runs": runs, "summary": summary, "states": states}, indent=1)
    plot_validation_curves(curves, args.out / "curves.png")
    plot_decision_dashboard(dashboard, args.out / "dashboard.png")
    print(table)
    return {"runs": runs, "summary": summary}


def _mean_std(values: list[float]) -> tuple[float, float]:
    import numpy as np

    return float(np.mean(values)), float(np.std(values))


if __name__ == "__main__":
    main(tyro.cli(Args))
