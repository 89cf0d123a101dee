"""The paper's reward ablation on the embedded benchmark: dMRR; +dNDCG; +dRank; +dMargin.

Each row trains the CPU r-GRPO backend with one more reward term switched on at its
default weight (``RewardConfig.ablation``), same budget and seeds; every policy is then
evaluated greedily on the test split under the same yardstick. The second table gives
each reward's paired difference to the full reward (resolved where its 95% interval
excludes 0); ``dashboard.png`` the crop rates by baseline rank over training.

    python recipes/reward_ablation.py
    python recipes/reward_ablation.py --seeds 0 --train.iterations 100

Killed or stopped (Ctrl-C), the same command resumes: finished (reward, seed) cells are
reused, the unfinished one continues from its last checkpoint, a cell whose config
changed is retrained (docs/resume.md).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from envs.threads import set_threads

from agents.evaluation.experiments import (
    ablation_rewards,
    paired_differences,
    paired_table,
    plot_learning_curves,
    run_variants,
    variants_table,
)
from agents.local.trainer import LocalTrainConfig
from envs.atomic import atomic_write_text


@dataclass
class Args:
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    """training seeds per reward configuration (the same for each: the comparison is paired)"""
    test_queries: int | None = None
    """evaluate on the first N test queries only (default: all)"""
    out: Path = Path("runs/ablation")
    """output folder: results.md, results.json, curves_*.png and one folder per run, whose test/ holds that policy's per_query.jsonl and gallery.png"""
    train: LocalTrainConfig = field(default_factory=lambda: LocalTrainConfig(eval_every=0))
    """every other training setting, shared by all reward configurations"""


def main(args: Args) -> dict:
    set_threads(args.train.threads)
    base = args.train
    variants = {name: dataclasses.replace(base, env=dataclasses.replace(base.env, reward=reward)) for name, reward in ablation_rewards(base.env.reward).items()}
    results = run_variants(variants, args.seeds, args.out, test_queries=args.test_queries)
    table = variants_table(results["summary"], len(args.seeds))
    table += "\n\n" + paired_table(paired_differences(results["runs"], "full"), "full")
    atomic_write_text(args.out / "results.md", table + "\n")
    plot_learning_curves(results["runs"], args.out)
    print(table)
    return results


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except KeyboardInterrupt:  # the grid said what is kept and how to resume
        raise SystemExit(130) from None
