"""Train several variants of the CPU backend over several seeds and compare them on a split.

The algorithm comparison (r-GRPO vs GRPO vs RLOO vs REINFORCE++) and the reward
ablation (dMRR; +dNDCG; +dRank; +dMargin) are both "same budget, different config":
:func:`run_variants` trains each named :class:`agents.local.trainer.LocalTrainConfig`
with every seed, evaluates each trained policy greedily on the same test queries, and
returns the mean and spread of the metrics plus every learning curve. Each run's
``test/`` folder holds what :func:`agents.evaluation.runner.evaluate_and_report` writes
(``results.md``, ``per_query.jsonl``, ``gallery.png``, ...) and its ``dashboard.png``; the
output folder gets the decision-collapse dashboard of every variant
(:mod:`agents.evaluation.dashboard`: ``dashboard.png``, and TensorBoard means over seeds in ``tb_mean/``), and
:func:`paired_differences` compares variants seed by seed.

A grid resumes: each finished (variant, seed) cell stores its config, test settings and
result in ``<run>/cell.json`` (:data:`CELL_FILE`); run again, the grid reuses every cell
whose stored config is the current one, continues the unfinished cell from its last
checkpoint (:mod:`agents.local.trainer`), and retrains a cell whose config changed,
saying which field did, so old and new cells are never mixed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from pathlib import Path

import numpy as np

from agents.evaluation.baselines import OraclePolicy
from agents.evaluation.dashboard import plot_decision_dashboard, write_tensorboard_means
from agents.evaluation.gallery import EpisodeTrace
from agents.evaluation.runner import evaluate_and_report, trace_policy
from agents.local.policy import load_policy
from agents.local.trainer import (
    LocalTrainConfig,
    config_differences,
    resume_command,
    train,
    unfinished_differences,
    warm_started_policy,
)
from envs.factory import make_env, make_scorer
from envs.region_rerank import RegionRerankEnv
from envs.scorers.openclip import Scorer
from rewards import RewardConfig
from rewards.evaluation import EpisodeRecord
from envs.atomic import atomic_write_json

METRICS = ("MRR", "R@1", "CondR@1", "RC", "RC[1]", "RC[11-K]")
CELL_FILE = "cell.json"
"""A finished cell's config, test settings and result, in its run folder."""

T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086)
"""Student-t 0.975 quantiles for 1..20 degrees of freedom: the half-width of a two-sided 95%
interval of a mean of n paired differences is ``T_975[n - 2] * std / sqrt(n)``."""


@dataclasses.dataclass(frozen=True)
class EvaluationSet:
    """What every cell of a grid is judged on: the test env (default reward), the query
    indices, a line naming the data for the report, the oracle's traces and the test
    settings a finished cell must match to be reused."""

    env: RegionRerankEnv
    indices: range
    source: str
    oracle: tuple[list[EpisodeRecord], list[EpisodeTrace]]
    settings: dict


def run_variants(
    variants: dict[str, LocalTrainConfig],
    seeds: tuple[int, ...],
    out: Path,
    test_split: str = "test",
    test_data: Path | None = None,
    test_queries: int | None = None,
) -> dict:
    """Train ``variants x seeds`` (variants that differ only after the warm start share one
    per seed, :func:`warm_start_key`); evaluate each policy on the test queries under the
    default reward (so every variant is judged by the same yardstick); save and return
    ``{"runs": [...], "summary": {variant: {metric: (mean, std)}}}``."""
    out.mkdir(parents=True, exist_ok=True)
    first = next(iter(variants.values()))
    scorer = make_scorer(first.scorer)
    test = evaluation_set(first, scorer, test_split, test_data, test_queries)
    runs = []
    for i, ((name, config), seed) in enumerate(itertools.product(variants.items(), seeds)):
        run_dir = out / f"{name.replace('+', '_')}-seed{seed}"
        if config.progress:
            print(f"[{i + 1}/{len(variants) * len(seeds)}] {name}, seed {seed} -> {run_dir}", flush=True)
        config = cell_config(config, seed, run_dir, out, scorer)
        runs.append(run_cell(name, config, run_dir, test, scorer, finished_cells=len(runs)))
    summary = variants_summary(runs, variants)
    atomic_write_json(out / "results.json", {"runs": runs, "summary": summary}, indent=1, default=str)
    plot_decision_dashboard(runs, out / "dashboard.png")
    write_tensorboard_means(runs, out / "tb_mean")
    return {"runs": runs, "summary": summary}


def evaluation_set(
    first: LocalTrainConfig, scorer: Scorer, test_split: str, test_data: Path | None, test_queries: int | None
) -> EvaluationSet:
    """The grid's test set, built once for every cell."""
    # Default reward for every variant (one yardstick); the observation is the policies' own.
    env = make_env(test_data, scorer, split=test_split, purpose="eval", obs_size=first.env.obs_size)
    indices = range(len(env.pools) if test_queries is None else min(test_queries, len(env.pools)))
    source = str(test_data) if test_data else f"embedded benchmark, {test_split} split"
    # The oracle, once: every run's gallery draws its box, and the oracle costs ~6x a
    # trained policy's evaluation, so playing it per run would dwarf the drawing.
    oracle = trace_policy(env, OraclePolicy(), indices, name="oracle", progress=first.progress)
    settings = {"split": test_split, "data": str(test_data) if test_data else None, "queries": len(indices)}
    return EvaluationSet(env, indices, source, oracle, settings)


def cell_config(config: LocalTrainConfig, seed: int, run_dir: Path, out: Path, scorer: Scorer) -> LocalTrainConfig:
    """``config`` for one cell: its seed and run folder, and the shared warm start (trained
    here when no cell has written it yet)."""
    config = dataclasses.replace(config, seed=seed, out=run_dir)
    if config.warm_start_steps and config.init_policy is None:
        # Variants that differ only after the warm start (estimator, reward, budget) share
        # it; its file is named by what it depends on, so a resumed grid finds it again.
        key = warm_start_key(config)
        path = out / "warm_starts" / f"seed{seed}-{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
        if not path.is_file():  # written atomically: a file there is whole
            warm_started_policy(config, scorer, path)
        config = dataclasses.replace(config, init_policy=path)
    return config


def run_cell(
    name: str, config: LocalTrainConfig, run_dir: Path, test: EvaluationSet, scorer: Scorer, finished_cells: int
) -> dict:
    """One cell's run record: the stored one when the cell finished with this config, else
    trained (or resumed), evaluated on ``test`` and stored in ``run_dir``."""
    cell = {"config": config.to_dict(), "test": test.settings}
    finished = finished_cell(run_dir, cell)
    if finished is not None:
        print(f"reusing {run_dir}: finished with the same config", flush=True)
        return finished
    try:
        result = train(dataclasses.replace(config, resume=cell_resume(run_dir, config)), scorer)
        policies = {name: load_policy(result.checkpoint)}
        summary = evaluate_and_report(
            test.env, policies, test.indices, run_dir / "test", test.source,
            oracle=test.oracle, progress=config.progress,
        )[name]
    except KeyboardInterrupt:
        print(f"grid interrupted in {name}, seed {config.seed}: {finished_cells} cells finished; run the same command "
              f"again to reuse them and resume this one: {resume_command()}", flush=True)
        raise
    run = {"variant": name, "seed": config.seed, "seconds": result.seconds, "test": summary, "history": result.history}
    atomic_write_json(run_dir / CELL_FILE, {**cell, "run": run}, default=str)
    return run


def variants_summary(runs: list[dict], variants: dict) -> dict[str, dict[str, tuple[float, float]]]:
    """Per variant, ``{metric: (mean, std)}`` of its runs' test metrics over seeds."""
    return {
        name: {
            m: (float(np.mean(v)), float(np.std(v)))
            for m in METRICS
            for v in [[r["test"][m] for r in runs if r["variant"] == name]]
        }
        for name in variants
    }


def finished_cell(run_dir: Path, cell: dict) -> dict | None:
    """The stored run of ``run_dir`` when it finished with ``cell``'s config and test
    settings, else None; a changed cell is removed (said, field by field) so that it is
    retrained and never mixed with the new ones."""
    path = run_dir / CELL_FILE
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    changed = config_differences(stored["config"], cell["config"])
    changed += [f"test {k}: {stored['test'].get(k)!r} -> {v!r}" for k, v in cell["test"].items() if stored["test"].get(k) != v]
    if not changed:
        return stored["run"]
    print(f"retraining {run_dir}: its finished run had another config ({'; '.join(changed)})", flush=True)
    path.unlink()
    return None


def cell_resume(run_dir: Path, config: LocalTrainConfig) -> str:
    """How a cell's training starts: it continues an unfinished run of the same config
    ("auto") and starts over, saying why, when the unfinished run had another one."""
    changed = unfinished_differences(config)
    if changed:
        print(f"restarting {run_dir}: its unfinished run had another config ({'; '.join(changed)})", flush=True)
        return "fresh"
    return "auto"


def warm_start_key(config: LocalTrainConfig) -> str:
    """What a warm start depends on: two configs with the same key warm start identically."""
    fields = ("seed", "warm_start_steps", "warm_start_batch", "warm_start_mirror", "lr", "policy", "data", "scorer")
    env = {k: getattr(config.env, k) for k in ("obs_size", "policy_max_side", "search", "max_regions")}
    return json.dumps({**{k: getattr(config, k) for k in fields}, "env": env}, default=str, sort_keys=True)


def variants_table(summary: dict[str, dict[str, tuple[float, float]]], n_seeds: int) -> str:
    """Markdown: one row per variant, ``mean ± std`` over seeds for each metric (the mean
    alone for one seed, whose spread says nothing)."""
    seeds = f"{n_seeds} seed" + ("s" if n_seeds != 1 else "")
    lines = [f"| variant ({seeds}) | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for name, metrics in summary.items():
        cells = (f"{m:.3f}" if n_seeds == 1 else f"{m:.3f} ± {s:.3f}" for m, s in metrics.values())
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(
    runs: list[dict], reference: str, metrics: tuple[str, ...] = METRICS
) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per variant other than ``reference``: ``{metric: (mean, half_width, n)}`` of the
    seed-by-seed differences ``variant - reference`` (a seed's two runs share the query
    order and initial weights, so pairing removes that part of the spread); ``half_width``
    is the 95% Student-t interval's, NaN with fewer than two shared seeds."""
    by_seed = {(r["variant"], r["seed"]): r["test"] for r in runs}
    reference_seeds = [seed for variant, seed in by_seed if variant == reference]
    if not reference_seeds:
        raise ValueError(f"no runs of the reference variant {reference!r}")
    out = {}
    for name in dict.fromkeys(r["variant"] for r in runs):
        seeds = [s for s in reference_seeds if (name, s) in by_seed]
        if name == reference or not seeds:
            continue
        out[name] = {}
        for metric in metrics:
            diffs = np.array([by_seed[name, s][metric] - by_seed[reference, s][metric] for s in seeds])
            n = len(diffs)
            half = T_975[min(n, len(T_975) + 1) - 2] * diffs.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
            out[name][metric] = (float(diffs.mean()), float(half), n)
    return out


def paired_table(differences: dict[str, dict[str, tuple[float, float, int]]], reference: str) -> str:
    """Markdown: ``mean ± 95% half-width`` of each variant's paired difference to
    ``reference``, bold where the interval excludes 0 (resolved by these seeds)."""
    metrics = list(next(iter(differences.values()))) if differences else list(METRICS)
    lines = [f"| variant - {reference} (paired seeds, 95% t-interval) | " + " | ".join(metrics) + " |",
             "|---" * (len(metrics) + 1) + "|"]
    for name, values in differences.items():
        cells = []
        for mean, half, n in values.values():
            text = f"{mean:+.3f} ± {half:.3f}" if np.isfinite(half) else f"{mean:+.3f} (1 seed)"
            cells.append(f"**{text}**" if np.isfinite(half) and abs(mean) > half else text)
        lines.append(f"| {name} (n={n}) | " + " | ".join(cells) + " |")
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


def ablation_rewards(base: RewardConfig = RewardConfig()) -> dict[str, RewardConfig]:
    """The ablation rows on top of ``base``: a row keeps ``base``'s weight for each term
    :meth:`RewardConfig.ablation` switches on and 0 for the others; every other field
    (``w_iou``, scale, penalties) is ``base``'s."""
    weights = ("w_mrr", "w_ndcg", "w_rank", "w_margin")
    rows = {name: RewardConfig.ablation(name) for name in ABLATIONS}
    return {
        name: dataclasses.replace(base, **{w: getattr(base, w) if getattr(row, w) > 0 else 0.0 for w in weights})
        for name, row in rows.items()
    }
