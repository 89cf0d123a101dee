"""The paper's reward ablation on the embedded benchmark: dMRR; +dNDCG; +dRank; +dMargin.

Each row trains the CPU r-GRPO backend with one more reward term switched on at its
default weight (``RewardConfig.ablation``), same budget and seeds; every policy is then
evaluated greedily on the test split under the same yardstick.

    python recipes/reward_ablation.py
    python recipes/reward_ablation.py --seeds 0 --iterations 100
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from agents.experiments import ablation_rewards, plot_learning_curves, run_variants, variants_table
from agents.local_trainer import LocalTrainConfig


@dataclass
class Args:
    seeds: tuple[int, ...] = (0, 1)
    """training seeds per reward configuration"""
    iterations: int | None = None
    """training iterations per run (the shared budget); an alias of --train.iterations, which it overrides when given"""
    test_queries: int | None = None
    """evaluate on the first N test queries only (default: all)"""
    out: Path = Path("runs/ablation")
    """output folder: results.md, results.json, curves_*.png and one folder per run, whose test/ holds that policy's per_query.jsonl and gallery.png"""
    train: LocalTrainConfig = field(default_factory=lambda: LocalTrainConfig(eval_every=0))
    """every other training setting, shared by all reward configurations"""


def main(args: Args) -> dict:
    torch.set_num_threads(args.train.threads)
    base = args.train if args.iterations is None else dataclasses.replace(args.train, iterations=args.iterations)
    variants = {name: dataclasses.replace(base, reward=reward) for name, reward in ablation_rewards().items()}
    results = run_variants(variants, args.seeds, args.out, test_queries=args.test_queries)
    table = variants_table(results["summary"], len(args.seeds))
    (args.out / "results.md").write_text(table + "\n")
    plot_learning_curves(results["runs"], args.out)
    print(table)
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
