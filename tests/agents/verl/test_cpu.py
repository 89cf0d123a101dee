"""verl on CPU (agents/verl/cpu.py, agents/verl/launch.py): the pieces, and verl's real
trainer end to end.

The end-to-end test is the project's proof that the verl half trains: it runs
``python recipes/train_rgrpo.py verl-cpu`` for two steps in a subprocess, as a
user would (verl's v1 trainer, TransferQueue, FSDP2 on gloo, the transformers rollout
server receiving the actor's weights, the RegionRerank agent loop, env, scorer and
reward, the ``rgrpo`` estimator), and checks the run summary. It takes a few minutes
and runs in the default suite on purpose.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from agents.verl import cpu as verl_cpu
from agents.verl.launch import NO_DECISIONS_WARNING, format_summary, summarize

ROOT = Path(__file__).resolve().parents[3]


def test_device_id_names_the_cpu_in_both_of_verls_uses():
    device_id = verl_cpu.CPUDeviceId()
    assert torch.zeros(1).to(device_id).device.type == "cpu"
    assert torch.device(device_id).type == "cpu"
    assert f"cpu:{device_id}" == "cpu:0"


def test_cpu_platform_is_registered_with_verl_and_reports_gloo():
    from verl.plugin.platform.platform_manager import PlatformRegistry

    platform = PlatformRegistry.get("cpu")()
    assert platform.device_name == "cpu" and platform.communication_backend_name() == "gloo"
    assert platform.device_module.get_device_name().startswith("CPU")
    free, total = platform.device_module.mem_get_info()
    assert 0 < free <= total


def test_transformers_rollout_is_found_by_verls_registries():
    from verl.workers.rollout.base import get_rollout_class
    from verl.workers.rollout.replica import get_rollout_replica_class

    assert get_rollout_class("transformers").__name__ == "TransformersServerAdapter"
    assert get_rollout_replica_class("transformers").__name__ == "TransformersReplica"


def test_other_verl_versions_are_refused_with_the_supported_one_named():
    with pytest.raises(RuntimeError, match=r"verl 0\.9\.1.*verl 0\.10\.0 is installed"):
        verl_cpu.check_verl_version("0.10.0")


def test_rollout_log_probs_are_those_of_the_tempered_distribution():
    from agents.verl.generation import log_probs_of

    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    tokens = torch.tensor([0, 2])
    got = log_probs_of(logits, tokens, temperature=0.5)
    want = torch.log_softmax(logits / 0.5, dim=-1)[[0, 1], [0, 2]]
    assert got == pytest.approx(want.tolist(), abs=1e-6)


def test_rollout_metrics_count_answers_crops_and_balance_paths():
    from agents.verl.plugin import decisions_complete, rollout_metrics

    extras = [
        {"decision": 1, "balance_path": "balanced", "env_seconds": 0.25},
        {"decision": 0, "balance_path": "resampled", "env_seconds": 0.5},
        {"decision": -1, "balance_path": "balanced"},
        {"decision": 1, "balance_path": "forced", "env_seconds": 0.25},
        {"decision": -1, "balance_path": "failed", "scoring_failed": 1, "scoring_error": "query 'q3': timed out"},
    ]
    metrics = rollout_metrics(extras)
    assert metrics["region_rerank/scoring_failed"] == 1  # a count of failed episodes, not a rate
    assert metrics["region_rerank/env_seconds_max"] == 0.5
    extras = extras[:4]
    metrics = rollout_metrics(extras)
    assert metrics["region_rerank/valid_answer_rate"] == 0.75 and metrics["region_rerank/crop_rate"] == 0.5
    assert metrics["region_rerank/balance/balanced"] == 0.5 and metrics["region_rerank/balance/forced"] == 0.25
    assert metrics["region_rerank/env_seconds"] == 1.0
    # a malformed answer's -1 is a decision class; a missing one is not
    assert decisions_complete([e["decision"] for e in extras])
    assert not decisions_complete([1, None]) and not decisions_complete([])


def test_summary_reads_verls_metric_records():
    records = [
        {"step": 0, "val-core/region_rerank/synthetic-val/reward/mean@1": 0.2},
        {"step": 1, "actor/grad_norm": 0.5, "critic/score/mean": 0.1, "region_rerank/valid_answer_rate": 0.75,
         "region_rerank/decisions_reached_rgrpo": 1.0, "timing_s/step": 12.0, "timing_s/gen": 2.0,
         "region_rerank/scoring_failed": 2.0},
        {"step": 2, "actor/grad_norm": 0.4, "critic/score/mean": 0.3, "region_rerank/decisions_reached_rgrpo": 1.0,
         "val-core/region_rerank/synthetic-val/reward/mean@1": 0.4, "region_rerank/scoring_failed": 1.0},
    ]
    summary = summarize(records, "rgrpo")
    assert summary["scoring_failed_episodes"] == 3 and summary["steps"][1]["scoring_failed"] == 1.0
    assert [row["step"] for row in summary["steps"]] == [1, 2]
    assert summary["steps"][0]["phase_s"]["generation"] == 2.0 and summary["steps"][0]["valid_answer_rate"] == 0.75
    assert summary["validation"] == [{"step": 0, "reward": 0.2}, {"step": 2, "reward": 0.4}]
    assert summary["decisions_reached_rgrpo"] is True
    records[1]["region_rerank/decisions_reached_rgrpo"] = 0.0
    assert summarize(records, "rgrpo")["decisions_reached_rgrpo"] is False
    assert summarize(records, "grpo")["decisions_reached_rgrpo"] is False
    assert "| 1 |" in format_summary(summary)


def test_validation_means_are_the_learning_curves():
    from agents.verl.episode import curve_fields
    from agents.verl.launch import validation_point

    # four validation episodes: FULL ranks 1, 3, 3, 15 of 20; the last two cropped, one to rank 1
    episodes = [curve_fields(1, 1, 20, False), curve_fields(3, 3, 20, False), curve_fields(3, 1, 20, True),
                curve_fields(15, 21, 20, True)]
    source = "region_rerank/synthetic-val"
    record = {"step": 10, f"val-core/{source}/reward/mean@1": 0.5}
    for key in episodes[0]:
        record[f"val-aux/{source}/{key}/mean@1"] = sum(e[key] for e in episodes) / len(episodes)
    record[f"val-aux/{source}/cropped/mean@1"] = 0.5
    point = validation_point(record)
    assert point["mrr"] == pytest.approx((1 + 1 / 3 + 1 + 0) / 4)  # rank 21 of 20: the positive was lost
    assert point["rc"] == {"1": 0.0, "2-5": 0.5, "6-10": None, "11-K": 1.0}
    assert point["crop_rate"] == 0.5 and point["reward"] == 0.5
    assert validation_point({"step": 3, "actor/grad_norm": 1.0}) is None


def test_training_crop_rates_by_full_rank_come_from_the_episodes():
    from agents.verl.plugin import rollout_metrics

    extras = [{"decision": 1, "rank_bucket": "1"}, {"decision": 0, "rank_bucket": "1"},
              {"decision": 1, "rank_bucket": "11-K"}, {"decision": -1, "rank_bucket": "11-K"}]
    metrics = rollout_metrics(extras)
    assert metrics["region_rerank/crop_rate[1]"] == 0.5 and metrics["region_rerank/crop_rate[11-K]"] == 0.5
    assert "region_rerank/crop_rate[2-5]" not in metrics  # no episode in that bucket this step


def verl_cpu_command(out, *flags: str) -> list[str]:
    """Two training steps of ``recipes/train_rgrpo.py verl-cpu``, the smallest sizes."""
    return [
        sys.executable, "recipes/train_rgrpo.py", "verl-cpu", "--policy", "toy", *flags,
        "--out", str(out), "--total-training-steps", "2", "--test-freq", "-1",
        "--max-queries", "8", "--val-queries", "4", "--train-batch-size", "2",
        "--rollout-n", "4", "--ppo-mini-batch-size", "2", "--micro-batch-size-per-gpu", "8",
        "--log-prob-micro-batch-size-per-gpu", "8", "--test-queries", "4",
    ]


VERL_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_DEDUP_LOGS": "0"}


def run_verl_cpu(out, *flags: str, timeout: int) -> str:
    """:func:`verl_cpu_command` in a subprocess, to the end; its log."""
    run = subprocess.run(verl_cpu_command(out, *flags), cwd=ROOT, env=VERL_ENV, capture_output=True, text=True, timeout=timeout)
    log = run.stdout + run.stderr
    (out.parent / "log.txt").write_text(log)
    assert run.returncode == 0, log[-6000:]
    return log


def kill_after_first_checkpoint(out, *flags: str, timeout: int) -> None:
    """Start :func:`verl_cpu_command` and SIGKILL its whole process tree (driver, Ray, workers)
    once verl has written the checkpoint of step 1 and logged the step's metrics (verl saves
    a step's checkpoint before it logs the step: docs/resume.md)."""
    import signal
    import time

    from agents.verl.launch import METRICS_FILE

    def step_one_logged() -> bool:
        metrics = out / METRICS_FILE
        for line in metrics.read_text().splitlines() if metrics.is_file() else []:
            try:
                record = json.loads(line)
            except ValueError:  # a line being written
                continue
            if record.get("step") == 1 and any(key.startswith("actor/") for key in record.get("data", {})):
                return True
        return False

    log = (out.parent / "killed_log.txt").open("w")
    run = subprocess.Popen(verl_cpu_command(out, *flags), cwd=ROOT, env=VERL_ENV, stdout=log, stderr=subprocess.STDOUT,
                           start_new_session=True)  # its own process group: Ray's processes go with it
    latest, deadline = out / "checkpoints" / "latest_checkpointed_iteration.txt", time.monotonic() + timeout
    try:
        while not (latest.is_file() and latest.read_text().strip() == "1" and step_one_logged()):
            assert run.poll() is None, (out.parent / "killed_log.txt").read_text()[-6000:]
            assert time.monotonic() < deadline, "no checkpoint of step 1 in time"
            time.sleep(0.2)
    finally:
        os.killpg(run.pid, signal.SIGKILL)
        run.wait(timeout=60)
        log.close()


@pytest.mark.timeout(1500)
def test_verl_cpu_trains_two_steps_end_to_end(tmp_path):
    """Killed after the checkpoint of step 1 and started again, the run resumes at step 2
    (verl's trainer.resume_mode=auto): each step once in summary.json, the decisions still
    reaching r-GRPO, the final checkpoint tested."""
    out = tmp_path / "run"
    kill_after_first_checkpoint(out, "--save-freq", "1", timeout=900)
    assert not (out / "summary.json").exists()  # killed before the end
    log = run_verl_cpu(out, "--save-freq", "1", timeout=580)
    assert "resuming from" in log and "global_step_1" in log, log[-6000:]
    from agents.verl.launch import METRICS_FILE, read_metrics

    trained = [r["step"] for r in read_metrics(out / METRICS_FILE) if any(k.startswith("actor/") for k in r)]
    assert trained == [2], trained  # the second attempt went on from the checkpoint, it did not start over
    assert NO_DECISIONS_WARNING not in log
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions_reached_rgrpo"] is True
    assert len(summary["steps"]) == 2
    assert [step["step"] for step in summary["steps"]] == [1, 2]  # step 1 from the killed attempt, once
    for step in summary["steps"]:
        assert math.isfinite(step["grad_norm"]) and step["grad_norm"] > 0, step
        assert step["rollout_actor_prob_diff"] < 1e-3, step
        assert step["valid_answer_rate"] > 0.5, step
        # the rollouts scored through the batched service: none failed, each made >= 1 request
        assert step["scoring_failed"] == 0, step
        assert step["scoring_requests_per_rollout"] >= 1, step
        assert math.isfinite(step["phase_s"]["env_scoring"]), step
    assert summary["validation"], "validation before training ran"
    point = summary["validation"][0]
    assert 0 <= point["mrr"] <= 1 and set(point["rc"]) == {"1", "2-5", "6-10", "11-K"}, point
    # the final checkpoint as a Hugging Face folder, evaluated greedy next to the warm start
    results = json.loads((out / "test" / "results.json").read_text())
    assert {"full", "oracle", "warm start", "trained"} <= set(results["summaries"]), results["summaries"].keys()
    assert results["summaries"]["trained"]["queries"] == 4


@pytest.mark.slow  # ~5 min alone, ~12 min on a shared 2-core machine: run with -m slow
@pytest.mark.timeout(1500)
def test_verl_cpu_trains_a_tiny_qwen3_vl_through_the_same_path(tmp_path):
    """``train_rgrpo.py verl-cpu`` with a tiny Qwen3-VL checkpoint: the same trainer, rollout
    server and agent loop, with the family read from the checkpoint (0-1000 boxes, the
    Qwen3-VL prompt, 32 px image tokens). The model is untrained, so its answers are
    malformed and the gradient ~0; what is checked is that the run completes and the
    rollout server and the actor agree on every log-prob (M-RoPE positions and weights)."""
    import pyarrow.parquet as pq
    import yaml

    from agents.qwen.prompts import prompt_texts
    from agents.qwen.tiny import cached_tiny_qwen

    model = cached_tiny_qwen(tmp_path, family="qwen3_vl")
    out = tmp_path / "run"
    run_verl_cpu(out, "--model-path", str(model), timeout=1450)
    (entry,) = yaml.safe_load((out / "agent_loop.yaml").read_text())
    assert entry["images"]["family"] == "qwen3_vl"
    row = pq.read_table(out / "data" / "train.parquet").to_pylist()[0]
    assert row["prompt"][0]["content"] == prompt_texts("qwen3_vl").system_prompt
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions_reached_rgrpo"] is True and len(summary["steps"]) == 2
    for step in summary["steps"]:
        assert math.isfinite(step["grad_norm"]), step
        assert step["rollout_actor_prob_diff"] < 1e-3, step


def test_a_resumed_runs_metrics_hold_every_step_once(tmp_path):
    """The killed attempt logged steps 0-3 (checkpoint at 2), the resumed one validates at 2
    and logs 3-4 again: the summary has each step once, the resumed values winning."""
    import json

    from agents.verl.config import VerlArgs
    from agents.verl.launch import METRICS_FILE, keep_metrics_for_resume, merge_steps, metrics_parts, read_metrics

    def log(path, records):
        path.write_text("".join(json.dumps({"step": r["step"], "data": r}) + "\n" for r in records))

    train = lambda step, grad: {"step": step, "actor/grad_norm": grad, "region_rerank/decisions_reached_rgrpo": 1.0}  # noqa: E731
    args = VerlArgs(out=tmp_path)
    log(tmp_path / METRICS_FILE, [{"step": 0, "val-core/region_rerank/synthetic-val/reward/mean@1": 0.1},
                                  train(1, 0.5), train(2, 0.4), train(3, 9.9)])
    (tmp_path / "checkpoints" / "global_step_2").mkdir(parents=True)
    (tmp_path / "checkpoints" / "latest_checkpointed_iteration.txt").write_text("2")
    assert keep_metrics_for_resume(args) == tmp_path / METRICS_FILE  # resuming: the first attempt is kept
    log(tmp_path / METRICS_FILE, [{"step": 2, "val-core/region_rerank/synthetic-val/reward/mean@1": 0.3},
                                  train(3, 0.3), train(4, 0.2)])
    assert [p.name for p in metrics_parts(tmp_path)] == [f"{METRICS_FILE}.1", METRICS_FILE]
    records = merge_steps([r for p in metrics_parts(tmp_path) for r in read_metrics(p)])
    summary = summarize(records, "rgrpo")
    assert [row["step"] for row in summary["steps"]] == [1, 2, 3, 4]
    assert [row["grad_norm"] for row in summary["steps"]] == [0.5, 0.4, 0.3, 0.2]  # step 3: the resumed attempt's
    assert [p["step"] for p in summary["validation"]] == [0, 2] and summary["decisions_reached_rgrpo"]
    # a run that starts over drops every earlier attempt's metrics
    keep_metrics_for_resume(VerlArgs(out=tmp_path, resume="disable"))
    assert not list(tmp_path.glob(METRICS_FILE + "*"))


@pytest.mark.parametrize(("resume", "mode"), [("auto", "auto"), ("disable", "disable"), ("global_step_20", "resume_path")])
def test_the_resume_flag_sets_verls_resume_mode(tmp_path, resume, mode):
    from agents.verl.config import VerlArgs, resume_overrides

    overrides = resume_overrides(VerlArgs(out=tmp_path, resume=resume))
    assert overrides[0] == f"trainer.resume_mode={mode}"
    if mode == "resume_path":
        assert overrides[1] == f"trainer.resume_from_path={(tmp_path / 'checkpoints' / resume).resolve()}"
    with pytest.raises(ValueError, match="--resume 'step_20': expected auto, disable or global_step_N"):
        resume_overrides(VerlArgs(out=tmp_path, resume="step_20"))
