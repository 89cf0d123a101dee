"""Run a policy over every query of a split and collect :class:`rewards.evaluation.EpisodeRecord`s."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from envs.region_rerank import REGION, RegionRerankEnv
from rewards.evaluation import RANK_BUCKETS, EpisodeRecord, summarize_episodes

COLUMNS = ("MRR", "R@1", "R@5", "NDCG", "CondR@1", "RC", "reward", "improved", "worsened")
"""Summary columns of the results table, in order (plus the RC rate per rank bucket)."""


def run_episode(env: RegionRerankEnv, policy, query_index: int) -> EpisodeRecord:
    """Play one episode of ``policy`` on query ``query_index`` (no randomness in the env)."""
    obs, info = env.reset(options={"query_index": query_index})
    total, steps, first_decision, outcome = 0.0, 0, None, ""
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(policy(obs, info, env))
        total += reward
        steps += 1
        first_decision = info["decision"] if first_decision is None else first_decision
        outcome = info["outcome"]
    return EpisodeRecord(
        query_id=info["query_id"],
        pool_size=len(env.pool.candidates),
        has_positive=env.pool.has_positive,
        baseline_rank=info["baseline_rank"],
        final_rank=info["rank"],
        final_ndcg=float(env.stats.ndcg),
        cropped=first_decision == REGION,
        reward=total,
        steps=steps,
        outcome=outcome,
    )


def evaluate_policy(
    env: RegionRerankEnv,
    policy,
    query_indices: Sequence[int] | None = None,
    *,
    name: str = "policy",
    progress: bool = True,
) -> tuple[dict, list[EpisodeRecord]]:
    """Every query (or ``query_indices``) once, in order; returns the summary and the records."""
    indices = range(len(env.pools)) if query_indices is None else query_indices
    records = [
        run_episode(env, policy, int(i))
        for i in tqdm(indices, desc=f"eval {name}", disable=not progress, leave=False)
    ]
    return summarize_episodes(records), records


def markdown_table(summaries: dict[str, dict]) -> str:
    """One row per policy: the summary columns and the RC rate per baseline-rank bucket."""
    bucket_cols = [f"RC[{b[0]}]" for b in RANK_BUCKETS]
    header = ["policy", *COLUMNS, *bucket_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in summaries.items():
        cells = [name] + [f"{s[c]:.3f}" for c in COLUMNS] + [f"{s[c]:.2f}" for c in bucket_cols]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_results(summaries: dict[str, dict], records: dict[str, list[EpisodeRecord]], out: Path) -> None:
    """``rc_by_bucket.png`` (RC rate by baseline rank) and ``rank_before_after.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buckets = [b[0] for b in RANK_BUCKETS]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / max(1, len(summaries))
    for i, (name, s) in enumerate(summaries.items()):
        ax.bar(np.arange(len(buckets)) + i * width, [s[f"RC[{b}]"] for b in buckets], width, label=name)
    ax.set_xticks(np.arange(len(buckets)) + width * (len(summaries) - 1) / 2, buckets)
    ax.set_xlabel("baseline (FULL) rank of the positive")
    ax.set_ylabel("region-cropping rate")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "rc_by_bucket.png", dpi=120)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(records), figsize=(3 * len(records), 3), squeeze=False)
    for ax, (name, recs) in zip(axes[0], records.items()):
        before = np.array([r.baseline_rank for r in recs])
        after = np.array([r.final_rank for r in recs])
        jitter = np.random.default_rng(0).uniform(-0.25, 0.25, size=(2, len(recs)))
        ax.scatter(before + jitter[0], after + jitter[1], s=4, alpha=0.5)
        top = max(before.max(), after.max()) + 1
        ax.plot([1, top], [1, top], "k--", lw=0.8)
        ax.set(title=name, xlabel="rank, FULL", ylabel="rank, policy", xscale="log", yscale="log")
    fig.tight_layout()
    fig.savefig(out / "rank_before_after.png", dpi=120)
    plt.close(fig)


def evaluate_and_report(
    env: RegionRerankEnv, policies: dict[str, object], query_indices: Sequence[int], out: Path, source: str
) -> dict[str, dict]:
    """Evaluate every policy on the same queries; write ``results.md``, ``results.json``
    and the plots to ``out``; print the table. Returns the summaries by policy name."""
    summaries: dict[str, dict] = {}
    records: dict[str, list[EpisodeRecord]] = {}
    start = time.perf_counter()
    for name, policy in policies.items():
        summaries[name], records[name] = evaluate_policy(env, policy, query_indices, name=name)
    elapsed = time.perf_counter() - start

    out.mkdir(parents=True, exist_ok=True)
    header = f"{len(query_indices)} queries ({source}), scorer {env.scorer.name}, {elapsed:.0f} s\n\n"
    table = markdown_table(summaries)
    (out / "results.md").write_text(header + table + "\n")
    payload = {
        "source": source,
        "scorer": env.scorer.name,
        "seconds": elapsed,
        "summaries": summaries,
        "records": {name: [asdict(r) for r in recs] for name, recs in records.items()},
    }
    (out / "results.json").write_text(json.dumps(payload, indent=1))
    plot_results(summaries, records, out)
    print(header + table)
    print(f"\nwrote {out}/results.md, results.json, rc_by_bucket.png, rank_before_after.png")
    return summaries
