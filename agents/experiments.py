"""Train several variants of the CPU backend over several seeds and compare them on a split.

The algorithm comparison (r-GRPO vs GRPO vs RLOO vs REINFORCE++) and the reward
ablation (dMRR; +dNDCG; +dRank; +dMargin) are both "same budget, different config":
:func:`run_variants` trains each named :class:`agents.local_trainer.LocalTrainConfig`
with every seed, evaluates each trained policy greedily on the same test queries, and
returns the mean and spread of the metrics plus every learning curve. Each run's
``test/`` folder holds what :func:`agents.evaluation.evaluate_and_report` writes
(``results.md``, ``per_query.jsonl``, ``gallery.png``, ...).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np

from agents.baselines import OraclePolicy
from agents.evaluation import evaluate_and_report, trace_policy
from agents.local_policy import load_policy
from agents.local_trainer import LocalTrainConfig, train
from envs.factory import make_env, make_scorer
from rewards import RewardConfig

METRICS = ("MRR", "R@1", "CondR@1", "RC", "RC[1]", "RC[11-K]")


def run_variants(
    variants: dict[str, LocalTrainConfig],
    seeds: tuple[int, ...],
    out: Path,
    test_split: str = "test",
    test_data: Path | None = None,
    test_queries: int | None = None,
) -> dict:
    """Train ``variants x seeds``; evaluate each policy on the test queries under the
    default reward (so every variant is judged by the same yardstick); save and return
    ``{"runs": [...], "summary": {variant: {metric: (mean, std)}}}``."""
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(variants.values()))
    scorer = make_scorer(first.scorer)
    # Default reward for every variant (one yardstick); the observation is the policies' own.
    test_env = make_env(test_data, scorer, split=test_split, purpose="eval", obs_size=first.env.obs_size)
    indices = range(len(test_env.pools) if test_queries is None else min(test_queries, len(test_env.pools)))
    source = str(test_data) if test_data else f"embedded benchmark, {test_split} split"
    # The oracle, once: every run's gallery draws its box, and the oracle costs ~6x a
    # trained policy's evaluation, so playing it per run would dwarf the drawing.
    oracle = trace_policy(test_env, OraclePolicy(), indices, name="oracle", progress=first.progress)
    runs = []
    for i, ((name, config), seed) in enumerate(itertools.product(variants.items(), seeds)):
        run_dir = out / f"{name.replace('+', '_')}-seed{seed}"
        if config.progress:
            print(f"[{i + 1}/{len(variants) * len(seeds)}] {name}, seed {seed} -> {run_dir}", flush=True)
        result = train(dataclasses.replace(config, seed=seed, out=run_dir), scorer)
        policies = {name: load_policy(result.checkpoint)}
        summary = evaluate_and_report(
            test_env, policies, indices, run_dir / "test", source, oracle=oracle, progress=config.progress
        )[name]
        runs.append({"variant": name, "seed": seed, "seconds": result.seconds, "test": summary, "history": result.history})
    summary = {
        name: {
            m: (float(np.mean(v)), float(np.std(v)))
            for m in METRICS
            for v in [[r["test"][m] for r in runs if r["variant"] == name]]
        }
        for name in variants
    }
    (out / "results.json").write_text(json.dumps({"runs": runs, "summary": summary}, indent=1, default=str))
    return {"runs": runs, "summary": summary}


def variants_table(summary: dict[str, dict[str, tuple[float, float]]], n_seeds: int) -> str:
    """Markdown: one row per variant, ``mean ± std`` over seeds for each metric (the mean
    alone for one seed, whose spread says nothing)."""
    seeds = f"{n_seeds} seed" + ("s" if n_seeds != 1 else "")
    lines = [f"| variant ({seeds}) | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, metrics in summary.items():
        cells = (f"{m:.3f}" if n_seeds == 1 else f"{m:.3f} ± {s:.3f}" for m, s in metrics.values())
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_learning_curves(runs: list[dict], out: Path, key: str = "reward", title: str = "training reward") -> Path:
    """Mean (line) and min-max over seeds (band) of a training metric, per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name in dict.fromkeys(r["variant"] for r in runs):
        curves = [[h[key] for h in r["history"]] for r in runs if r["variant"] == name]
        length = min(len(c) for c in curves)
        values = np.array([c[:length] for c in curves])
        window = max(1, length // 15)
        smooth = np.array([np.convolve(v, np.ones(window) / window, mode="valid") for v in values])
        x = np.arange(window, length + 1)
        ax.plot(x, smooth.mean(0), label=name)
        ax.fill_between(x, smooth.min(0), smooth.max(0), alpha=0.2)
    ax.set(xlabel="iteration", ylabel=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / f"curves_{key}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


ABLATIONS = ("mrr", "mrr+ndcg", "mrr+ndcg+rank", "full")
"""The paper's reward ablation, in order: each row adds one term (see RewardConfig.ablation)."""


def ablation_rewards() -> dict[str, RewardConfig]:
    return {name: RewardConfig.ablation(name) for name in ABLATIONS}
