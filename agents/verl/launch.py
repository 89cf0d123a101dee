"""Launch a verl run (``train_rgrpo.py verl`` or ``verl-cpu``) and summarize it.

:func:`launch` composes the config (:mod:`agents.verl.config`), refuses what cannot run
before Ray starts, exports the embedded benchmark when no data files are given, writes
the agent-loop registration and calls verl's own ``main_ppo`` entry point. verl's
``file`` logger writes one JSON line of metrics per step to ``OUT/metrics.jsonl``;
:func:`write_summary` turns it into ``OUT/summary.json`` and a printed table.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

from agents.verl.config import (
    VerlArgs,
    agent_loop_file,
    check_estimator,
    check_prompt_fits,
    compose_verl_config,
    data_files,
    learner_warm_start,
    loop_settings,
    missing_for_verl,
    resume_folder,
    write_agent_loop_file,
)
from agents.verl.episode import BUCKET_FIELDS
from agents.verl.settings import METRIC_PREFIX, agent_loop_config
from rewards.evaluation import RANK_BUCKETS
from envs.atomic import atomic_write_json

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
CURVES_FILE = "curves.png"
NO_DECISIONS_WARNING = "rgrpo got no per-sample decisions"

# summary column -> verl metric keys, first present wins
STEP_FIELDS: dict[str, tuple[str, ...]] = {
    "reward": ("critic/score/mean",),
    "valid_answer_rate": (f"{METRIC_PREFIX}/valid_answer_rate",),
    "crop_rate": (f"{METRIC_PREFIX}/crop_rate",),
    "balanced": (f"{METRIC_PREFIX}/balance/balanced",),
    "resampled": (f"{METRIC_PREFIX}/balance/resampled",),
    "forced": (f"{METRIC_PREFIX}/balance/forced",),
    "grad_norm": ("actor/grad_norm",),
    "kl": ("actor/kl_loss",),
    "rollout_actor_prob_diff": ("training/rollout_probs_diff_mean",),
    "rollout_actor_corr": ("training/rollout_actor_probs_pearson_corr",),
    "decisions_reached_rgrpo": (f"{METRIC_PREFIX}/decisions_reached_rgrpo",),
    "scoring_failed": (f"{METRIC_PREFIX}/scoring_failed",),
    "scoring_requests_per_rollout": (f"{METRIC_PREFIX}/scoring_requests_per_rollout",),
}
VAL_MEAN = re.compile(r"^val-(?:core|aux)/(?P<source>.+)/(?P<name>[^/]+)/mean@1$")
"""verl's validation means (one per data source and per value: ``reward`` and each
``reward_extra_info`` key of the agent loop)."""
PHASES: dict[str, tuple[str, ...]] = {
    "generation": ("timing_s/gen",),
    "env_scoring": (f"{METRIC_PREFIX}/env_seconds",),
    "env_scoring_slowest_episode": (f"{METRIC_PREFIX}/env_seconds_max",),
    "old_log_prob": ("timing_s/old_log_prob",),
    "reference": ("timing_s/ref",),
    "advantage": ("timing_s/adv",),
    "update": ("timing_s/update_actor",),
    "weight_sync": ("timing_s/update_weights",),
    "step": ("timing_s/step",),
}


def prepare_cpu_process() -> None:
    """Load the CPU pieces in this (driver) process and set the variables every Ray worker
    inherits, so each of them loads the pieces on ``import verl``, before anything asks
    for the platform."""
    from agents.verl import cpu as verl_cpu

    verl_cpu.check_verl_version()
    os.environ.update(verl_cpu.verl_cpu_environment())
    from verl.plugin.platform import get_platform, set_platform

    # verl resolves the platform once per process; this one may have done so before the
    # variables above were set (importing verl's trainer modules asks for it).
    if get_platform().device_name != "cpu":
        set_platform(verl_cpu.CPUPlatform())


def run_summary(config, cpu: bool) -> str:
    """What a dry run is about to train, in five lines (the full config follows it)."""
    import torch

    rollout, trainer = config.actor_rollout_ref.rollout, config.trainer
    gpus = torch.cuda.device_count()
    return "\n".join([
        f"# backend:   {'verl-cpu' if cpu else 'verl'} ({gpus} GPU(s) visible; {trainer.n_gpus_per_node} per node used)",
        f"# model:     {config.actor_rollout_ref.model.path}",
        f"# estimator: {config.algorithm.adv_estimator}",
        f"# sizes:     {config.data.train_batch_size} queries x {rollout.n} rollouts a step, "
        f"{trainer.total_training_steps or 'all epochs of'} steps, rollout engine {rollout.name}",
        f"# output:    {trainer.default_local_dir}",
    ])


def launch(args: VerlArgs, overrides: Sequence[str] = (), *, cpu: bool = False, dry_run: bool = False) -> dict | None:
    """Run verl's trainer; returns the run summary (``None`` for a dry run)."""
    import yaml
    from omegaconf import OmegaConf

    from agents.verl import quiet

    quiet.install()

    if cpu:
        prepare_cpu_process()
        if args.model_path is None and args.policy == "learner" and not dry_run:
            from agents.qwen.sft import warm_started_policy

            warm_started_policy(learner_warm_start(args))  # built into the cache on first use
    config = compose_verl_config(args, overrides, cpu=cpu)
    check_estimator(config.algorithm.adv_estimator, cpu=cpu)
    if dry_run:
        print(run_summary(config, cpu), "\n")
        print(OmegaConf.to_yaml(config, resolve=True))
        print(f"# agent loop ({agent_loop_file(args)}):")
        print(yaml.safe_dump(agent_loop_config(loop_settings(args)), sort_keys=False))
        return None
    missing = missing_for_verl(config.actor_rollout_ref.rollout.name, cpu=cpu)
    if missing:
        raise SystemExit(
            "the verl backend needs " + "; ".join(missing) + ".\n"
            "Run it on a GPU machine; train_rgrpo.py verl-cpu trains the tiny model on CPU, train_rgrpo.py local the small CPU policy."
        )
    resumed = resume_folder(args)
    if args.resume != "auto" and args.resume != "disable" and not resumed.is_dir():
        raise ValueError(f"--resume {args.resume}: {resumed} does not exist (checkpoints are written every --save-freq steps)")
    if resumed is not None:
        print(f"resuming from {resumed} (--resume {args.resume}; --resume disable starts over)", flush=True)
    export_default_data(args)
    check_prompt_fits(args, load_tokenizer(config.actor_rollout_ref.model.path), data_questions(args))
    write_agent_loop_file(args)
    metrics_path = keep_metrics_for_resume(args)
    os.environ["VERL_FILE_LOGGER_PATH"] = str(metrics_path)
    os.environ.setdefault("TENSORBOARD_DIR", str((args.out / "tb").resolve()))
    from verl.trainer.main_ppo import main as verl_main

    verl_main(config)
    return write_summary(args.out, config.algorithm.adv_estimator)


def metrics_parts(out: Path) -> list[Path]:
    """The metric files of a run, oldest first: one per attempt of a resumed run
    (``metrics.jsonl.1``, ...), then ``metrics.jsonl`` (verl's file logger truncates it)."""
    numbered = sorted(out.glob(METRICS_FILE + ".*"), key=lambda p: int(p.suffix[1:]) if p.suffix[1:].isdigit() else -1)
    return [p for p in numbered if p.suffix[1:].isdigit()] + [out / METRICS_FILE]


def keep_metrics_for_resume(args: VerlArgs) -> Path:
    """Before a launch: when it resumes from a checkpoint, the earlier attempts' metrics are
    kept (``metrics.jsonl`` renamed to the next ``metrics.jsonl.N``); otherwise every
    earlier metric file is removed. Returns the path verl's file logger writes."""
    metrics_path = (args.out / METRICS_FILE).resolve()
    earlier = metrics_parts(metrics_path.parent)[:-1]
    if resume_folder(args) is None:
        for path in (*earlier, metrics_path):
            path.unlink(missing_ok=True)
    elif metrics_path.is_file():
        os.replace(metrics_path, metrics_path.with_name(f"{METRICS_FILE}.{len(earlier) + 1}"))
    return metrics_path


def merge_steps(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per step, in step order: a resumed run logs again the steps after its
    checkpoint (and validates at the step it resumed from); later values win."""
    merged: dict[Any, dict[str, Any]] = {}
    for record in records:
        merged.setdefault(record["step"], {}).update(record)
    return sorted(merged.values(), key=lambda r: (r["step"] is None, r["step"] or 0))


def export_default_data(args: VerlArgs) -> None:
    """Export the embedded benchmark to ``OUT/data`` when the run names no data files."""
    if args.train_files is not None and args.val_files is not None:
        return
    from agents.verl.data import export_verl_data

    train, val = data_files(args)
    export_verl_data(
        train.parent, args.train_files, args.val_files, max_steps=args.env.max_steps, images=args.images, max_queries=args.max_queries, val_queries=args.val_queries, quiet=True,
    )


def load_tokenizer(model_path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def data_questions(args: VerlArgs) -> list[str]:
    """The questions of the run's training and validation rows."""
    import pyarrow.parquet as pq

    questions = []
    for path in data_files(args):
        info = pq.read_table(path, columns=["extra_info"]).column("extra_info").to_pylist()
        questions += [row["question"] for row in info if row and row.get("question")]
    return questions


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The per-step records of verl's file logger (``{"step": n, "data": {...}}`` per line).
    A last line without its newline is what a killed run was writing: it is skipped."""
    text = Path(path).read_text()
    lines = text.splitlines()
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    records = []
    for line in lines:
        if line.strip():
            record = json.loads(line)
            records.append({"step": record.get("step"), **record.get("data", record)})
    return records


def _first(record: dict, keys: tuple[str, ...]) -> float | None:
    for key in keys:
        value = record.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    return None


def validation_means(record: dict[str, Any]) -> dict[str, float]:
    """Each per-episode validation value of a record (``reward``, ``reciprocal_rank``,
    ``cropped``, ...), averaged over the data sources."""
    values: dict[str, list[float]] = {}
    for key, value in record.items():
        match = VAL_MEAN.match(key)
        if match and isinstance(value, (int, float)) and math.isfinite(value):
            values.setdefault(match["name"], []).append(float(value))
    return {name: sum(v) / len(v) for name, v in values.items()}


def validation_point(record: dict[str, Any]) -> dict[str, Any] | None:
    """One point of the validation curves: mean reward, MRR, crop rate overall and by the
    FULL rank of the positive (``None`` when the record holds no validation)."""
    means = validation_means(record)
    if "reward" not in means:
        return None
    point: dict[str, Any] = {"step": record["step"], "reward": means["reward"]}
    if "reciprocal_rank" in means:
        point["mrr"] = means["reciprocal_rank"]
        point["crop_rate"] = means.get("cropped")
        point["rc"] = {}
        for (name, _, _), key in zip(RANK_BUCKETS, BUCKET_FIELDS):
            share = means.get(f"in_rc_{key}", 0.0)
            point["rc"][name] = means.get(f"cropped_rc_{key}", 0.0) / share if share > 0 else None
    return point


def summarize(records: list[dict[str, Any]], estimator: str) -> dict[str, Any]:
    """Per-step figures and the run's verdicts from verl's metric records."""
    steps, validation = [], []
    for record in records:
        point = validation_point(record)
        if point is not None:
            validation.append(point)
        if not any(key.startswith("actor/") for key in record):
            continue  # a validation-only record (before training)
        row = {"step": record["step"]}
        row.update({name: _first(record, keys) for name, keys in STEP_FIELDS.items()})
        row["rc"] = {name: _first(record, (f"{METRIC_PREFIX}/crop_rate[{name}]",)) for name, _, _ in RANK_BUCKETS}
        row["phase_s"] = {name: _first(record, keys) for name, keys in PHASES.items()}
        steps.append(row)
    reached = estimator == "rgrpo" and bool(steps) and all(row["decisions_reached_rgrpo"] == 1.0 for row in steps)
    failed = int(sum(row["scoring_failed"] or 0 for row in steps))
    return {
        "estimator": estimator, "steps": steps, "validation": validation, "decisions_reached_rgrpo": reached,
        "scoring_failed_episodes": failed,
    }


def write_summary(out: Path, estimator: str) -> dict[str, Any]:
    """Write ``OUT/summary.json`` from ``OUT/metrics.jsonl`` (and the earlier attempts' of
    a resumed run, every step once), the learning curves
    ``OUT/curves.png`` when the run validated, and print the per-step table."""
    from agents.evaluation.dashboard import plot_validation_curves

    records = [r for path in metrics_parts(out) if path.is_file() for r in read_metrics(path)]
    summary = summarize(merge_steps(records), estimator)
    atomic_write_json(out / SUMMARY_FILE, summary, indent=2)
    print(format_summary(summary))
    if any("mrr" in point for point in summary["validation"]):
        plot_validation_curves({out.name: summary}, out / CURVES_FILE)
        print(f"learning curves: {out / CURVES_FILE}")
    print(f"summary: {out / SUMMARY_FILE}")
    return summary


def final_checkpoint(out: Path) -> Path | None:
    """The Hugging Face folder of the run's last checkpoint (verl writes it when the actor's
    ``checkpoint.save_contents`` holds ``hf_model``), or ``None``."""
    latest = out / "checkpoints" / "latest_checkpointed_iteration.txt"
    if not latest.is_file():
        return None
    folder = out / "checkpoints" / f"global_step_{int(latest.read_text().strip())}" / "actor" / "huggingface"
    return folder if (folder / "config.json").is_file() else None


def _cell(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_summary(summary: dict[str, Any]) -> str:
    """The per-step table of a summary, as Markdown."""
    columns = ["reward", "valid_answer_rate", "crop_rate", "balanced", "resampled", "forced", "grad_norm", "kl",
               "rollout_actor_prob_diff"]
    phases = list(PHASES)
    lines = [
        "| step | " + " | ".join(columns) + " | " + " | ".join(f"{p} s" for p in phases) + " |",
        "|" + "---|" * (1 + len(columns) + len(phases)),
    ]
    for row in summary["steps"]:
        cells = [_cell(row[c], 6 if c in ("rollout_actor_prob_diff", "kl") else 3) for c in columns]
        cells += [_cell(row["phase_s"][p], 2) for p in phases]
        lines.append(f"| {row['step']} | " + " | ".join(cells) + " |")
    val = ", ".join(f"step {v['step']}: {v['reward']:.3f}" for v in summary["validation"]) or "none"
    lines.append(f"validation reward: {val}")
    if any("mrr" in v for v in summary["validation"]):
        lines.append("validation MRR (crop rate): " + ", ".join(
            f"step {v['step']}: {v['mrr']:.3f} ({v['crop_rate']:.0%})" for v in summary["validation"] if "mrr" in v))
    lines.append(f"decisions_reached_rgrpo: {str(summary['decisions_reached_rgrpo']).lower()}")
    lines.append(f"episodes failed by the scoring service: {summary.get('scoring_failed_episodes', 0)}")
    return "\n".join(lines)
