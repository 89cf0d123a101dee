"""recipes/train_rgrpo.py and agents/verl/config.py: verl's config composed with the
project's defaults (GPU and CPU), one-override algorithm swaps, size checks before launch,
the dry run, the subcommand per backend and the automatic choice without one, and the
backends' entry points (no GPU needed)."""

from __future__ import annotations

import json

import os
import signal
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from agents.verl.settings import AGENT_NAME, LoopSettings
from envs.settings import EnvSettings, ScorerSettings
from agents.verl.config import (
    VerlArgs,
    agent_loop_file,
    check_estimator,
    check_sizes,
    compose_verl_config,
    sequence_lengths,
    write_agent_loop_file,
)
from agents.qwen.tiny import cached_tiny_qwen
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config


@pytest.fixture(scope="module")
def recipe(load_recipe):
    return load_recipe("train_rgrpo")


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory) -> Path:
    # validate_config instantiates the model configs, so the model path must load offline
    return cached_tiny_qwen(tmp_path_factory.getbasetemp())


@pytest.fixture()
def verl_args(recipe, tiny_qwen_dir, tmp_path):
    return VerlArgs(model_path=str(tiny_qwen_dir), out=tmp_path / "run")


def test_defaults_compose_into_a_valid_verl_config(recipe, verl_args):
    config = compose_verl_config(verl_args)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    rollout = config.actor_rollout_ref.rollout
    assert config.algorithm.adv_estimator == "rgrpo" and not need_critic(config)
    assert rollout.n == 8 and rollout.agent.default_agent_loop == AGENT_NAME
    assert rollout.agent.agent_loop_config_path == str(agent_loop_file(verl_args))
    assert rollout.limit_images == 1 and config.trainer.n_gpus_per_node == 1
    assert config.trainer.v1.trainer_mode == "rgrpo_sync"
    assert config.data.train_files == str((verl_args.out / "data" / "train.parquet").resolve())
    # the prompt holds the system prompt and the largest allowed image
    assert config.data.max_prompt_length >= verl_args.images.max_pixels // (28 * 28) + 500


@pytest.mark.parametrize("estimator", ["rgrpo", "grpo", "rloo", "reinforce_plus_plus", "remax", "gpg", "gae"])
def test_one_override_swaps_the_algorithm(recipe, verl_args, estimator):
    config = compose_verl_config(verl_args, [f"algorithm.adv_estimator={estimator}"])
    assert config.algorithm.adv_estimator == estimator
    check_estimator(estimator)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert need_critic(config) == (estimator == "gae")  # GAE brings verl's critic, on the same model


def test_unknown_estimator_is_rejected_before_launch(recipe, verl_args):
    command = recipe.VerlCommand(verl=verl_args, dry_run=True, overrides=("algorithm.adv_estimator=not_an_estimator",))
    with pytest.raises(ValueError, match="not_an_estimator.*not a verl advantage estimator"):
        recipe.main(command)


def test_cpu_defaults_compose_into_a_valid_verl_config(tiny_qwen_dir, tmp_path):
    args = VerlArgs.for_cpu()
    args.model_path, args.out = str(tiny_qwen_dir), tmp_path / "cpu"
    config = compose_verl_config(args, cpu=True)
    validate_config(config, use_reference_policy=need_reference_policy(config), use_critic=need_critic(config))
    assert config.trainer.device == "cpu" and config.actor_rollout_ref.rollout.name == "transformers"
    assert config.actor_rollout_ref.actor.strategy == "fsdp2" and config.actor_rollout_ref.ref.strategy == "fsdp2"
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert config.transfer_queue.backend.SimpleStorage.num_data_storage_units == 1
    # the user's overrides come last, after the CPU ones
    config = compose_verl_config(args, ["actor_rollout_ref.rollout.n=2"], cpu=True)
    assert config.actor_rollout_ref.rollout.n == 2


@pytest.mark.parametrize(
    "changes, named",
    [
        (dict(ppo_mini_batch_size=3), "ppo_mini_batch_size=3 must divide train_batch_size=8"),
        (dict(micro_batch_size_per_gpu=3), "micro_batch_size_per_gpu=3 must divide"),
        (dict(log_prob_micro_batch_size_per_gpu=5), "log_prob_micro_batch_size_per_gpu=5 must divide"),
        (dict(answer_tokens=4), "answer_tokens=4 is too small"),
    ],
)
def test_bad_sizes_are_refused_before_launch_naming_the_settings(changes, named):
    args = VerlArgs.for_cpu()
    for key, value in changes.items():
        setattr(args, key, value)
    with pytest.raises(ValueError, match=named):
        check_sizes(args)


def test_gae_is_refused_on_cpu_with_the_reason():
    with pytest.raises(ValueError, match="gae is not supported by train_rgrpo.py verl-cpu: it needs verl's critic"):
        check_estimator("gae", cpu=True)
    check_estimator("gae")  # on GPUs verl runs it with its critic


def test_overrides_pass_through_after_the_defaults(recipe, verl_args):
    config = compose_verl_config(
        verl_args, ["actor_rollout_ref.rollout.n=4", "trainer.total_epochs=3", "+actor_rollout_ref.model.override_config.attn_implementation=sdpa"]
    )
    assert config.actor_rollout_ref.rollout.n == 4 and config.trainer.total_epochs == 3
    assert config.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"


def test_multi_step_zoom_gets_room_for_every_view(recipe, tiny_qwen_dir, tmp_path):
    one = VerlArgs(model_path=str(tiny_qwen_dir), out=tmp_path)
    three = VerlArgs(model_path=str(tiny_qwen_dir), out=tmp_path, env=EnvSettings(max_steps=3))
    config = compose_verl_config(three)
    assert config.actor_rollout_ref.rollout.limit_images == 3
    image_tokens = three.images.max_pixels // (28 * 28)
    assert sequence_lengths(three)[1] >= sequence_lengths(one)[1] * 3 + 2 * image_tokens


def test_agent_loop_file_carries_the_env_settings(recipe, tiny_qwen_dir, tmp_path):
    args = VerlArgs(
        model_path=str(tiny_qwen_dir), out=tmp_path, env=EnvSettings(max_steps=2), scorer=ScorerSettings("EVA02-B-16", "eva.pt")
    )
    path = write_agent_loop_file(args)
    (entry,) = yaml.safe_load(path.read_text())
    assert entry["name"] == AGENT_NAME and entry["_target_"] == "agents.verl.agent_loop.RegionRerankAgentLoop"
    settings = LoopSettings.from_kwargs(**{k: v for k, v in entry.items() if k not in ("name", "_target_")})
    assert settings.env == args.env and settings.scorer == args.scorer and settings.images == args.images


def test_dry_run_prints_the_resolved_config(recipe, verl_args, capsys):
    recipe.main(recipe.VerlCommand(verl=verl_args, dry_run=True, overrides=("algorithm.adv_estimator=rloo",)))
    printed = capsys.readouterr().out
    config_text, loop_text = printed.split("# agent loop")
    config = OmegaConf.create(config_text)
    assert config.algorithm.adv_estimator == "rloo"
    assert config.actor_rollout_ref.model.path == verl_args.model_path
    assert f"name: {AGENT_NAME}" in loop_text
    assert not agent_loop_file(verl_args).exists()  # a dry run writes nothing


def test_command_line_takes_flags_and_positional_overrides(recipe, capsys):
    command = recipe.parse(["verl", "--dry-run", "--env.max-steps", "2", "algorithm.adv_estimator=grpo", "trainer.total_epochs=2"])
    assert isinstance(command, recipe.VerlCommand) and command.dry_run and command.verl.env.max_steps == 2
    assert command.overrides == ("algorithm.adv_estimator=grpo", "trainer.total_epochs=2")
    assert capsys.readouterr().out == ""  # a named backend is not announced
    assert recipe.parse(["verl-cpu"]).verl == VerlArgs.for_cpu()  # the CPU-sized defaults


def _help(recipe, capsys, backend: str) -> str:
    with pytest.raises(SystemExit) as ended:
        recipe.parse([backend, "--help"])
    assert ended.value.code == 0
    return capsys.readouterr().out


def test_each_backend_shows_only_its_own_flags(recipe, capsys):
    local = _help(recipe, capsys, "local")
    for flag in ("--iterations", "--group-size", "--env.obs-size", "--scorer.model", "--out", "--threads", "--resume",
                 "--test-data", "--test-queries", "--dry-run"):
        assert flag in local
    for flag in ("--model-path", "--rollout-n", "--total-training-steps", "--local.", "--verl"):
        assert flag not in local
    verl_cpu = _help(recipe, capsys, "verl-cpu")
    for flag in ("--model-path", "--rollout-n", "--scoring.max-batch", "--out", "--resume", "--test-queries", "--dry-run"):
        assert flag in verl_cpu
    for flag in ("--iterations", "--warm-start-steps", "--group-size", "--test-data", "--threads", "--local", "--verl"):
        assert flag not in verl_cpu
    assert "runs/verl-cpu" in verl_cpu  # its own defaults
    verl = _help(recipe, capsys, "verl")
    assert "--model-path" in verl and "--iterations" not in verl and "--test-queries" not in verl


@pytest.mark.parametrize("gpu, backend", [(False, "LocalCommand"), (True, "VerlCommand")])
def test_without_a_backend_the_gpu_picks_it_and_says_so(recipe, capsys, monkeypatch, gpu, backend):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    assert type(recipe.parse([])).__name__ == backend
    printed = capsys.readouterr().out
    chosen = "verl" if gpu else "local"
    assert printed.count("\n") == 1 and f"the backend is {chosen};" in printed
    assert all(f"train_rgrpo.py {other} " in printed for other in recipe.BACKENDS if other != chosen)
    # flags and overrides alone go to the chosen backend
    command = recipe.parse(["--dry-run", "algorithm.adv_estimator=grpo"])
    assert type(command).__name__ == backend and command.dry_run and command.overrides == ("algorithm.adv_estimator=grpo",)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_verl_backend_without_gpu_says_what_it_needs(recipe, verl_args):
    with pytest.raises(SystemExit, match="(?s)NVIDIA GPU.*vllm.*train_rgrpo.py verl-cpu"):
        recipe.main(recipe.VerlCommand(verl=verl_args))


def test_local_backend_takes_the_estimator_override(recipe, capsys):
    recipe.main(recipe.parse(["local", "--dry-run", "algorithm.adv_estimator=grpo"]))
    assert yaml.safe_load(capsys.readouterr().out)["estimator"] == "grpo"
    with pytest.raises(SystemExit, match="trainer.total_epochs=2.*train_rgrpo.py local --help"):
        recipe.main(recipe.parse(["local", "--dry-run", "trainer.total_epochs=2"]))
    # Two spellings of the estimator that disagree are refused, naming both, not silently resolved.
    with pytest.raises(SystemExit, match="--estimator rloo and algorithm.adv_estimator=grpo name two estimators"):
        recipe.main(recipe.parse(["local", "--estimator", "rloo", "--dry-run", "algorithm.adv_estimator=grpo"]))


def test_local_backend_end_to_end_trains_saves_and_prints_the_test_table(
    recipe, scene_pool_files, tiny_model_name, tiny_checkpoint, tmp_path, capsys
):
    from agents.local.policy import PolicyConfig, load_policy
    from agents.local.trainer import LocalTrainConfig

    local = LocalTrainConfig(
        data=scene_pool_files["train"], val_data=scene_pool_files["val"], scorer=ScorerSettings(tiny_model_name, str(tiny_checkpoint)),
        iterations=4, queries_per_batch=4, group_size=4, eval_every=2,
        eval_queries=3, env=EnvSettings(obs_size=32, policy_max_side=48),
        policy=PolicyConfig(image_size=32, channels=8, hidden=16, grid=4),
        out=tmp_path / "run", progress=False,
    )
    recipe.main(recipe.LocalCommand(train=local, test_data=scene_pool_files["val"]))
    printed = capsys.readouterr().out
    table = (tmp_path / "run" / "test" / "results.md").read_text()
    for row in ("| full |", "| center-0.5 |", "| random |", "| annotated |", "| oracle |", "| trained |"):
        assert row in table and row in printed
    assert "trained: one seed (seed 0)" in table  # the table says what the trained row stands for
    assert load_policy(tmp_path / "run" / "policy.pt").net.config.grid == 4
    assert (tmp_path / "run" / "curves.png").exists() and (tmp_path / "run" / "metrics.csv").exists()
    # evaluated in the episode it was trained in: the information gap too
    assert json.loads((tmp_path / "run" / "test" / "results.json").read_text())["env"]["policy_max_side"] == 48


# --------------------------------------------------------------------------- resume (local backend)
def _local_command(scene_pool_files, out: Path, *extra: str) -> list[str]:
    """The smallest local run (16 iterations, a checkpoint every 4) through the public command."""
    import sys

    files = scene_pool_files
    return [sys.executable, "recipes/train_rgrpo.py", "local", "--test-queries", "0",
            "--data", str(files["train"]), "--val-data", str(files["val"]), "--out", str(out),
            "--scorer.model", "examples.custom_scorer:HistogramScorer", "--iterations", "16",
            "--queries-per-batch", "4", "--group-size", "4", "--warm-start-steps", "3",
            "--warm-start-batch", "4", "--eval-every", "6", "--eval-queries", "3",
            "--checkpoint-every", "4", "--threads", "1", "--no-progress",
            "--env.obs-size", "32", "--policy.image-size", "32", "--policy.channels", "8",
            "--policy.hidden", "16", "--policy.grid", "4", *extra]


def _start(command: list[str]):
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1"}
    # SIG_DFL for SIGINT in the child: a background job inherits it ignored, and the test's Ctrl-C must land.
    return subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _signal_after_checkpoint(process, state_file: Path, sig, after: int = 0) -> None:
    """Send ``sig`` once ``state_file`` holds a checkpoint of an iteration past ``after``."""
    import time

    deadline = time.monotonic() + 120
    while not (state_file.is_file() and torch.load(state_file, weights_only=False)["iteration"] > after):
        assert process.poll() is None, process.communicate()[0]
        assert time.monotonic() < deadline
        time.sleep(0.01)
    process.send_signal(sig)


def _metrics_without_time(path: Path) -> list[dict[str, str]]:
    import csv

    # wall-clock seconds differ between any two runs; every other column must not
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(path.open())]


@pytest.mark.slow  # three waves of subprocesses, ~25 s of imports each (~2 min)
@pytest.mark.timeout(400)
def test_local_run_killed_then_interrupted_resumes_to_the_uninterrupted_result(
    recipe, scene_pool_files, tmp_path, monkeypatch
):
    """SIGKILL after the first checkpoint, a refused resume with another lr, Ctrl-C (SIGINT)
    after a later checkpoint, a resume to the end: the policy and metrics.csv are the ones
    of a run never stopped."""
    import signal

    from agents.local.trainer import STATE_FILE

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[2]))  # examples.custom_scorer
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    reference = _start(_local_command(scene_pool_files, straight))
    killed = _start(_local_command(scene_pool_files, stopped))
    _signal_after_checkpoint(killed, stopped / STATE_FILE, signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    assert not torch.load(stopped / STATE_FILE, weights_only=False)["finished"]

    def args(*extra: str):
        return recipe.parse(_local_command(scene_pool_files, stopped, *extra)[2:])

    with pytest.raises(ValueError, match=r"holds an unfinished run .*lr: 0.001 -> 0.002"):
        recipe.main(args("--lr", "0.002"))  # another config is never mixed in

    interrupted = _start(_local_command(scene_pool_files, stopped))
    first = torch.load(stopped / STATE_FILE, weights_only=False)["iteration"]
    _signal_after_checkpoint(interrupted, stopped / STATE_FILE, signal.SIGINT, after=first)
    printed = interrupted.communicate(timeout=60)[0]
    assert interrupted.returncode == 130, printed
    assert f"resuming {stopped} after iteration {first}" in printed
    assert "interrupted after iteration" in printed and "to resume: python recipes/train_rgrpo.py" in printed
    assert len(_metrics_without_time(stopped / "metrics.csv")) > first  # the iterations done are written

    resumed = _start(_local_command(scene_pool_files, stopped, "--resume", "require"))
    printed = resumed.communicate(timeout=120)[0]
    assert resumed.returncode == 0 and "resuming" in printed, printed
    assert reference.communicate(timeout=120)[0] is not None and reference.returncode == 0

    final = [torch.load(run / "policy.pt", weights_only=True)["state_dict"] for run in (straight, stopped)]
    assert final[0].keys() == final[1].keys() and all(torch.equal(final[0][k], final[1][k]) for k in final[0])
    rows = _metrics_without_time(straight / "metrics.csv")
    assert len(rows) == 16 and _metrics_without_time(stopped / "metrics.csv") == rows
    with pytest.raises(ValueError, match="already finished"):
        recipe.main(args("--resume", "require"))  # a finished run is not resumed
