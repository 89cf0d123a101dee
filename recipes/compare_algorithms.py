"""r-GRPO vs GRPO vs RLOO vs REINFORCE++ on the embedded benchmark, same budget, several seeds.

Every algorithm is ``recipes/train_rgrpo.py local`` (the CPU backend) with one value changed:
the verl advantage estimator (and, for the GRPO-family baselines, plain on-policy
groups instead of decision-balanced ones: balancing is part of r-GRPO). Each trained
policy is evaluated greedily on the test split; the tables give mean ± std over seeds
and each algorithm's paired difference to the first (resolved where its 95% interval
excludes 0); ``dashboard.png`` shows each algorithm's crop rates by baseline rank over
training (the decision-collapse dashboard, :mod:`agents.evaluation.dashboard`).

    python recipes/compare_algorithms.py                       # 4 algorithms x 5 seeds
    python recipes/compare_algorithms.py --seeds 0 1 --train.iterations 100
    python recipes/compare_algorithms.py --without-std rgrpo  # also r-GRPO without std normalization

Killed or stopped (Ctrl-C), the same command resumes: finished (algorithm, seed) cells are
reused, the unfinished one continues from its last checkpoint, a cell whose config
changed is retrained (docs/resume.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from envs.threads import set_threads

from agents.evaluation.experiments import paired_differences, paired_table, plot_learning_curves, run_variants, variants_table
from agents.local.trainer import LocalTrainConfig
from envs.atomic import atomic_write_text


@dataclass
class Args:
    algorithms: tuple[str, ...] = ("rgrpo", "grpo", "rloo", "reinforce_plus_plus")
    """verl advantage-estimator names to compare"""
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """training seeds per algorithm (the same seeds for each: the comparison is paired)"""
    without_std: tuple[str, ...] = ()
    """algorithms to train once more without std normalization of group advantages
    (verl's norm_adv_by_std_in_grpo off; variant ``<algorithm>-no-std``)"""
    test_queries: int | None = None
    """evaluate on the first N test queries only (default: all)"""
    out: Path = Path("runs/compare")
    """output folder: results.md, results.json, curves_*.png and one folder per run, whose test/ holds that policy's per_query.jsonl and gallery.png"""
    train: LocalTrainConfig = field(default_factory=lambda: LocalTrainConfig(eval_every=0))
    """every other training setting, shared by all algorithms"""


def algorithm(base: LocalTrainConfig, name: str, **changes) -> LocalTrainConfig:
    """``base`` trained with verl estimator ``name``; decision-balanced groups are r-GRPO's own."""
    return dataclasses.replace(base, estimator=name, balance_groups=(name == "rgrpo"), **changes)


def main(args: Args) -> dict:
    set_threads(args.train.threads)
    base = args.train
    variants = {name: algorithm(base, name) for name in args.algorithms}
    variants |= {f"{name}-no-std": algorithm(base, name, norm_adv_by_std=False) for name in args.without_std}
    results = run_variants(variants, args.seeds, args.out, test_queries=args.test_queries)
    table = variants_table(results["summary"], len(args.seeds))
    if len(variants) > 1:
        table += "\n\n" + paired_table(paired_differences(results["runs"], next(iter(variants))), next(iter(variants)))
    atomic_write_text(args.out / "results.md", table + "\n")
    plot_learning_curves(results["runs"], args.out)
    plot_learning_curves(results["runs"], args.out, key="rc_rate", title="training RC rate")
    print(table)
    return results


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except KeyboardInterrupt:  # the grid said what is kept and how to resume
        raise SystemExit(130) from None
