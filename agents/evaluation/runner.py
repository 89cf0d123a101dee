"""Run a policy over every query of a split and collect :class:`rewards.evaluation.EpisodeRecord`s
(and, for the per-query outputs and the gallery, :class:`agents.evaluation.gallery.EpisodeTrace`s)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm.auto import tqdm

from agents.evaluation.baselines import (
    AnnotatedBoxPolicy,
    CenterCropPolicy,
    FullPolicy,
    OraclePolicy,
    RandomCropPolicy,
    SearchFullPolicy,
    TwoBoxOraclePolicy,
)
from agents.evaluation.gallery import (
    DECISION_NAMES,
    EpisodeTrace,
    GalleryConfig,
    Panel,
    draw_gallery,
    gallery_filename,
    gallery_policies,
    per_query_row,
    select_panels,
    write_per_query,
)
from envs.region_rerank import RegionRerankEnv
from envs.settings import settings_of, settings_to_dict
from rewards.evaluation import (
    RANK_BUCKETS,
    SEARCH_COLUMNS,
    EpisodeRecord,
    SearchRecord,
    summarize_episodes,
    summarize_search,
)
from envs.atomic import atomic_write_json, atomic_write_text

COLUMNS = ("MRR", "R@1", "R@5", "NDCG", "CondR@1", "RC", "reward", "improved", "worsened")
"""Summary columns of the results table, in order (plus the RC rate per rank bucket)."""

BASELINE_TYPES = (
    FullPolicy, CenterCropPolicy, RandomCropPolicy, AnnotatedBoxPolicy, OraclePolicy, SearchFullPolicy, TwoBoxOraclePolicy,
)
"""Policies the gallery treats as baselines: it draws a learned policy in preference."""


def trace_episode(env: RegionRerankEnv, policy, query_index: int) -> tuple[EpisodeRecord, EpisodeTrace]:
    """Play one episode of ``policy`` on query ``query_index`` (no randomness in the env);
    return its record and its trace (decisions, chain of views, reward terms)."""
    obs, info = env.reset(options={"query_index": query_index})
    total, steps, outcome = 0.0, 0, ""
    decisions: list[str] = []
    views: list[tuple[float, ...]] = []
    terms = None
    terminated = truncated = False
    while not (terminated or truncated):
        obs, reward, terminated, truncated, info = env.step(policy(obs, info, env))
        total += reward
        steps += 1
        decisions.append(DECISION_NAMES[info["decision"]])
        if info["outcome"] == "region":
            views.append(tuple(float(v) for v in info["box"]))
        terms = info.get("reward_terms", terms)
        outcome = info["outcome"]
    record = EpisodeRecord(
        query_id=info["query_id"],
        pool_size=len(env.pool.candidates),
        has_positive=env.pool.has_positive,
        baseline_rank=info["baseline_rank"],
        final_rank=info["rank"],
        final_ndcg=float(env.stats.ndcg),
        cropped=decisions[0] == "REGION",
        reward=total,
        steps=steps,
        outcome=outcome,
    )
    box = env.pool.box
    trace = EpisodeTrace(
        query_index=int(query_index),
        question=env.pool.question,
        image=str(env.pool.image),
        image_size=(env.image.width, env.image.height),
        annotated_box=None if box is None else tuple(float(v) for v in box),
        decisions=tuple(decisions),
        views=tuple(views),
        reward_terms=terms,
    )
    return record, trace


def extended(env: RegionRerankEnv) -> bool:
    """The env has SEARCH or several regions on (its pools can change, or its views fuse)."""
    settings = settings_of(env)
    return settings.search or settings.max_regions > 1


def search_record(env: RegionRerankEnv) -> SearchRecord:
    """The pool side of the episode ``env`` just played: coverage before and after, searches, recall."""
    last = env.search_log[-1] if env.search_log else None
    return SearchRecord(
        query_id=env.pool.query_id,
        covered_before=env.pool.has_positive,
        covered_after=bool(env.positives.any()),
        searches=env.searches,
        recall=None if last is None else float(last["recall"]),
    )


def trace_policy(
    env: RegionRerankEnv,
    policy,
    query_indices: Sequence[int] | None = None,
    *,
    name: str = "policy",
    progress: bool = True,
) -> tuple[list[EpisodeRecord], list[EpisodeTrace]]:
    """Every query (or ``query_indices``) once, in order: the records and the traces."""
    records, traces, _ = trace_policy_pools(env, policy, query_indices, name=name, progress=progress)
    return records, traces


def trace_policy_pools(
    env: RegionRerankEnv,
    policy,
    query_indices: Sequence[int] | None = None,
    *,
    name: str = "policy",
    progress: bool = True,
) -> tuple[list[EpisodeRecord], list[EpisodeTrace], list[SearchRecord]]:
    """:func:`trace_policy` plus each episode's :class:`rewards.evaluation.SearchRecord`."""
    indices = range(len(env.pools)) if query_indices is None else query_indices
    records, traces, pools = [], [], []
    for i in tqdm(indices, desc=f"eval {name}", disable=None if progress else True, leave=False):
        record, trace = trace_episode(env, policy, int(i))
        records.append(record)
        traces.append(trace)
        pools.append(search_record(env))
    return records, traces, pools


def evaluate_policy(
    env: RegionRerankEnv,
    policy,
    query_indices: Sequence[int] | None = None,
    *,
    name: str = "policy",
    progress: bool = True,
) -> tuple[dict, list[EpisodeRecord]]:
    """Every query (or ``query_indices``) once, in order; returns the summary and the records."""
    records, _, pools = trace_policy_pools(env, policy, query_indices, name=name, progress=progress)
    summary = summarize_episodes(records)
    if extended(env):
        summary.update(summarize_search(pools))
    return summary, records


def markdown_table(summaries: dict[str, dict], extra: Sequence[str] = ()) -> str:
    """One row per policy: the summary columns, ``extra`` columns (e.g. the SEARCH columns)
    and the RC rate per baseline-rank bucket."""
    bucket_cols = [f"RC[{b[0]}]" for b in RANK_BUCKETS]
    header = ["policy", *COLUMNS, *extra, *bucket_cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in summaries.items():
        cells = [name] + [f"{s[c]:.3f}" for c in (*COLUMNS, *extra)] + [f"{s[c]:.2f}" for c in bucket_cols]
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


def baseline_names(policies: dict[str, object]) -> list[str]:
    """Names of the policies that are :mod:`agents.evaluation.baselines` baselines (not learned)."""
    return [name for name, policy in policies.items() if isinstance(policy, BASELINE_TYPES)]


def write_galleries(
    env: RegionRerankEnv,
    policies: dict[str, object],
    records: dict[str, list[EpisodeRecord]],
    traces: dict[str, list[EpisodeTrace]],
    out: Path,
    config: GalleryConfig,
    title: str = "",
    oracle: tuple[list[EpisodeRecord], list[EpisodeTrace]] | None = None,
) -> list[Path]:
    """``gallery.png`` for the main policy and ``gallery_<name>.png`` for the others that
    :func:`agents.evaluation.gallery.gallery_policies` picks.

    The oracle's box comes from the oracle's own evaluation when it is among
    ``policies``, else from ``oracle`` (its records and traces on the same queries),
    else the oracle plays just the shown queries: ~0.14 s each on the embedded split,
    more than the drawing, so callers that evaluate many policies without the oracle
    (:func:`agents.evaluation.experiments.run_variants`) evaluate it once and pass it in.
    """
    # Without a learned policy, a cropping baseline is the one worth looking at: FULL
    # never crops, and the oracle's box is drawn on every panel anyway.
    fallbacks = [n for n, p in policies.items() if isinstance(p, (CenterCropPolicy, RandomCropPolicy, AnnotatedBoxPolicy))]
    names = gallery_policies(list(policies), baseline_names(policies), fallbacks, config)
    oracle_name = next((n for n, p in policies.items() if isinstance(p, OraclePolicy)), None)
    if oracle_name is not None:
        oracle = records[oracle_name], traces[oracle_name]
    oracle_policy = OraclePolicy()
    paths = []
    for k, name in enumerate(names):
        panels = []
        for category, i in select_panels(records[name], config):
            trace = traces[name][i]
            if oracle is not None:
                episode = oracle[0][i], oracle[1][i]
            else:
                episode = trace_episode(env, oracle_policy, trace.query_index)
            panels.append(Panel(category, records[name][i], trace, episode))
        if panels:
            path = out / gallery_filename(name, main=k == 0)
            paths.append(draw_gallery(panels, path, name, config.columns, title))
    return paths


def evaluate_and_report(
    env: RegionRerankEnv,
    policies: dict[str, object],
    query_indices: Sequence[int],
    out: Path,
    source: str,
    gallery: GalleryConfig | None = None,
    *,
    oracle: tuple[list[EpisodeRecord], list[EpisodeTrace]] | None = None,
    progress: bool = True,
    note: str = "",
) -> dict[str, dict]:
    """Evaluate every policy on the same queries; write ``results.md``, ``results.json``,
    ``per_query.jsonl``, the plots and the gallery (see :mod:`agents.evaluation.gallery`) to ``out``;
    print (unless ``progress`` is off) the table and how long evaluation and drawing
    took. ``oracle``: the oracle's episodes on the same queries, for the galleries
    (see :func:`write_galleries`). ``note``: a line printed and written under the table
    (e.g. how many seeds a trained row stands for). Returns the summaries by policy name."""
    gallery = gallery or GalleryConfig()
    evaluated = evaluate_policies(env, policies, query_indices, progress)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{len(query_indices)} queries ({source}), scorer {env.scorer.name}"
    header = f"{title}, {evaluated.seconds:.0f} s\n\n"
    table = results_table(env, evaluated.summaries, note)
    atomic_write_text(out / "results.md", header + table + "\n")
    write_per_query(
        (per_query_row(name, r, t) for name in policies for r, t in zip(evaluated.records[name], evaluated.traces[name])),
        out / "per_query.jsonl",
    )
    plot_results(evaluated.summaries, evaluated.records, out)
    start = time.perf_counter()
    galleries = (
        write_galleries(env, policies, evaluated.records, evaluated.traces, out, gallery, title, oracle)
        if gallery.draw else []
    )
    gallery_seconds = time.perf_counter() - start
    atomic_write_json(out / "results.json", results_payload(env, source, evaluated, gallery_seconds), indent=1)
    if progress:
        print(header + table)
        files = ["results.md", "results.json", "per_query.jsonl", "rc_by_bucket.png", "rank_before_after.png"]
        print(f"\nwrote {out}/" + ", ".join(files + [p.name for p in galleries]))
    if progress and galleries:
        print(f"evaluation {evaluated.seconds:.2f} s, gallery {gallery_seconds:.2f} s "
              f"({100 * gallery_seconds / max(evaluated.seconds, 1e-9):.2f}% of the evaluation)")
    return evaluated.summaries


@dataclass(frozen=True)
class Evaluations:
    """Every policy's summary, episode records and traces on the same queries (keyed by
    policy name), and the seconds playing them took."""

    summaries: dict[str, dict]
    records: dict[str, list[EpisodeRecord]]
    traces: dict[str, list[EpisodeTrace]]
    seconds: float


def evaluate_policies(
    env: RegionRerankEnv, policies: dict[str, object], query_indices: Sequence[int], progress: bool
) -> Evaluations:
    """Every policy once over ``query_indices``, in order, summarized."""
    summaries: dict[str, dict] = {}
    records: dict[str, list[EpisodeRecord]] = {}
    traces: dict[str, list[EpisodeTrace]] = {}
    start = time.perf_counter()
    for name, policy in policies.items():
        records[name], traces[name], pools = trace_policy_pools(env, policy, query_indices, name=name, progress=progress)
        summaries[name] = summarize_episodes(records[name])
        if extended(env):  # pools can change: coverage and KB recall go next to the ranking metrics
            summaries[name].update(summarize_search(pools))
    return Evaluations(summaries, records, traces, time.perf_counter() - start)


def results_table(env: RegionRerankEnv, summaries: dict[str, dict], note: str) -> str:
    """The markdown table of ``results.md`` (with the SEARCH columns when ``env`` has the
    options), ``note`` under it."""
    table = markdown_table(summaries, SEARCH_COLUMNS if extended(env) else ())
    if note:
        table += f"\n\n{note}"
    return table


def results_payload(env: RegionRerankEnv, source: str, evaluated: Evaluations, gallery_seconds: float) -> dict:
    """What ``results.json`` holds: the data, scorer and env settings, the timings, every
    summary and every episode record."""
    return {
        "source": source,
        "scorer": env.scorer.name,
        "env": settings_to_dict(env.settings),
        "seconds": evaluated.seconds,
        "gallery_seconds": gallery_seconds,
        "summaries": evaluated.summaries,
        "records": {name: [asdict(r) for r in recs] for name, recs in evaluated.records.items()},
    }
