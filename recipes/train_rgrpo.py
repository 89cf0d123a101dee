"""Train the cropping policy with r-GRPO: one subcommand per backend.

``local`` trains the small CPU policy of :mod:`agents.local.trainer` on the embedded
default (or your query pools) with verl's estimators; the one verl override it reads is
``algorithm.adv_estimator=NAME``. ``verl`` composes verl's own ``ppo_trainer`` config
(Hydra compose API on ``verl/trainer/config``) with this project's defaults, registers the
RegionRerank agent loop (:mod:`agents.verl.agent_loop`) and launches verl's trainer on
GPUs; ``verl-cpu`` runs the same trainer with a tiny Qwen2.5-VL on CPU. On the verl
backends any verl option is a positional Hydra override ``key=value``, applied last, so
swapping the algorithm is one of them: ``algorithm.adv_estimator=grpo`` (or ``rloo``,
``reinforce_plus_plus``, ``gae``, ... anything in verl's estimator registry; ``rgrpo`` is
the default and comes from :mod:`agents.verl.plugin`). Without a subcommand the recipe
picks one itself: ``verl`` when a GPU is visible, else ``local``, and says so.

    python recipes/train_rgrpo.py                                   # verl with a GPU, else local
    python recipes/train_rgrpo.py local --help                      # the local backend's flags only
    python recipes/train_rgrpo.py local --iterations 100
    python recipes/train_rgrpo.py local --iterations 100 --resume require   # after a kill or Ctrl-C
    python recipes/prepare_verl_data.py --out data/verl            # parquet files for verl
    python recipes/train_rgrpo.py verl --model-path Qwen/Qwen2.5-VL-3B-Instruct
    python recipes/train_rgrpo.py verl algorithm.adv_estimator=grpo trainer.total_epochs=2
    python recipes/train_rgrpo.py verl --dry-run                    # print the resolved config
    python recipes/train_rgrpo.py verl-cpu                          # verl's trainer on CPU, then the test table

The backends spell what they share alike: ``--out`` (output folder), ``--resume``,
``--seed``, ``--dry-run``, and ``--test-queries`` for the final test table (local and
verl-cpu), as every other recipe does. The local backend saves its whole training state
every ``--checkpoint-every`` iterations; the same command started again continues an
unfinished run (docs/resume.md).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Sequence

import torch
import tyro
import yaml

from agents.evaluation.baselines import baseline_policies
from agents.evaluation.runner import evaluate_and_report
from agents.local.policy import load_policy
from agents.local.trainer import LocalTrainConfig, resume_command, train
from agents.verl.config import ESTIMATOR_KEY, VerlArgs, resolved_model_path
from agents.verl.launch import final_checkpoint, launch
from envs.threads import set_threads
from envs.data.pools import DataError
from envs.factory import make_env, make_scorer

UNPREFIXED = tyro.conf.arg(name="")
"""A nested config whose fields are the subcommand's own flags (``--iterations``, not ``--train.iterations``)."""


@dataclass
class LocalCommand:
    """The small CPU policy (CNN + bag of words) trained with verl's estimators, then the test table."""

    train: Annotated[LocalTrainConfig, UNPREFIXED] = field(default_factory=LocalTrainConfig)
    test_data: Path | None = None
    """query pools for the final test table (default: the embedded test split)"""
    test_queries: int | None = None
    """test queries in the final table (default: all; 0 skips the table)"""
    dry_run: bool = False
    """print the resolved configuration and exit"""
    overrides: tyro.conf.Positional[tuple[str, ...]] = ()
    """algorithm.adv_estimator=NAME, the one verl override this backend reads (same as --estimator)"""


@dataclass
class VerlCommand:
    """verl's trainer on GPUs: Qwen2.5-VL (or Qwen3-VL), vLLM / SGLang rollouts."""

    verl: Annotated[VerlArgs, UNPREFIXED] = field(default_factory=VerlArgs)
    dry_run: bool = False
    """print the resolved configuration and exit"""
    overrides: tyro.conf.Positional[tuple[str, ...]] = ()
    """verl Hydra overrides key=value, applied after the project's defaults"""


@dataclass
class VerlCpuCommand:
    """verl's trainer on CPU with a tiny Qwen2.5-VL, then the test table of the warm start and the trained policy."""

    verl: Annotated[VerlArgs, UNPREFIXED] = field(default_factory=VerlArgs.for_cpu)
    test_queries: int | None = None
    """test queries in the final table (default: all; 0 skips the table)"""
    dry_run: bool = False
    """print the resolved configuration and exit"""
    overrides: tyro.conf.Positional[tuple[str, ...]] = ()
    """verl Hydra overrides key=value, applied after the project's defaults"""


Command = LocalCommand | VerlCommand | VerlCpuCommand
BACKENDS: dict[str, type[Command]] = {"local": LocalCommand, "verl": VerlCommand, "verl-cpu": VerlCpuCommand}


# --------------------------------------------------------------------------- command line
def auto_backend() -> str:
    """The backend of a command line that names none: verl when a GPU is visible, else local."""
    return "verl" if torch.cuda.is_available() else "local"


def parse(argv: Sequence[str]) -> Command:
    """The command line's backend and its flags. Without a backend first (no arguments, or
    only flags and overrides) :func:`auto_backend` picks it, and one printed line says which."""
    argv = list(argv)
    if not argv or argv[0] not in (*BACKENDS, "-h", "--help"):
        backend = auto_backend()
        seen = "A GPU is visible" if backend == "verl" else "No GPU visible"
        others = " or ".join(f"`train_rgrpo.py {name} ...`" for name in BACKENDS if name != backend)
        print(f"{seen}, so the backend is {backend}; {others} picks another.", flush=True)
        argv.insert(0, backend)
    description = "Train the RegionRerank cropping policy with r-GRPO. Without a subcommand: verl when a GPU is visible, else local."
    return tyro.extras.subcommand_cli_from_dict(BACKENDS, description=description, args=argv)


# --------------------------------------------------------------------------- verl backends
def run_verl(command: VerlCommand) -> None:
    launch(command.verl, command.overrides, cpu=False, dry_run=command.dry_run)


def run_verl_cpu(command: VerlCpuCommand) -> None:
    verl_args = command.verl
    summary = launch(verl_args, command.overrides, cpu=True, dry_run=command.dry_run)
    if summary is None or command.test_queries == 0 or verl_args.train_files is not None:
        return
    trained = final_checkpoint(verl_args.out)
    if trained is None:
        print("no final checkpoint (--save-freq -1), so no test table")
        return
    start = resolved_model_path(verl_args, cpu=True)
    test_vlm_policies(verl_args, {"warm start": start, "trained": trained}, command.test_queries)


def test_vlm_policies(verl_args: VerlArgs, checkpoints: dict[str, str | Path], test_queries: int | None) -> None:
    """The test-split table of the baselines and ``checkpoints`` (greedy, with the training
    prompt and parser, in the run's own episode), as ``recipes/evaluate.py --vlm`` makes it."""
    from agents.qwen.policy import vlm_policies

    env = make_env(None, make_scorer(verl_args.scorer), split="test", purpose="eval", settings=verl_args.env)
    n = len(env.pools) if test_queries is None else min(test_queries, len(env.pools))
    specs = [f"{name}={path}" for name, path in checkpoints.items()]
    policies = {**baseline_policies(["full", "center", "random", "annotated", "oracle"]), **vlm_policies(specs, verl_args.images)}
    command = ("python recipes/evaluate.py --vlm " + " ".join(f"'{spec}'" for spec in specs)
               + f" --images.max-pixels {verl_args.images.max_pixels} --images.min-pixels {verl_args.images.min_pixels}")
    note = f"warm start and trained: seed {verl_args.seed}, one run. The same table: {command}"
    evaluate_and_report(env, policies, range(n), verl_args.out / "test", "embedded benchmark, test split", note=note)


# --------------------------------------------------------------------------- local backend
def local_config(command: LocalCommand) -> LocalTrainConfig:
    """The local backend's config with the positional overrides it understands applied."""
    config = command.train
    for override in command.overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key != ESTIMATOR_KEY:
            raise SystemExit(
                f"override {override!r} is a verl option; the local backend understands only "
                f"{ESTIMATOR_KEY}=NAME (its other options are flags: train_rgrpo.py local --help)"
            )
        if config.estimator not in (value, LocalTrainConfig.estimator):
            raise SystemExit(f"--estimator {config.estimator} and {override} name two estimators; give one")
        config.estimator = value
    return config


def run_local(command: LocalCommand) -> None:
    config = local_config(command)
    if command.dry_run:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return
    set_threads(config.threads)
    scorer = make_scorer(config.scorer)
    result = train(config, scorer)
    print(f"policy: {result.checkpoint} ({result.seconds:.0f} s of training)")
    if command.test_queries == 0:
        return
    # The trained policy's own episode (information gap, zoom steps, reward, SEARCH, regions).
    test_env = make_env(command.test_data, scorer, split="test", purpose="eval", settings=config.env)
    n = len(test_env.pools) if command.test_queries is None else min(command.test_queries, len(test_env.pools))
    policies = {**baseline_policies(env=test_env), "trained": load_policy(result.checkpoint)}
    source = str(command.test_data) if command.test_data else "embedded benchmark, test split"
    note = (f"trained: one seed (seed {config.seed}); the baseline rows are deterministic. The README gives the "
            "default run's spread over 5 seeds (python recipes/compare_algorithms.py --algorithms rgrpo).")
    evaluate_and_report(test_env, policies, range(n), config.out / "test", source, note=note)


def main(command: Command) -> None:
    if isinstance(command, LocalCommand):
        run_local(command)
    elif isinstance(command, VerlCpuCommand):
        run_verl_cpu(command)
    else:
        run_verl(command)


if __name__ == "__main__":
    try:
        main(parse(sys.argv[1:]))
    except (DataError, ValueError) as err:  # bad input or settings: say which, no traceback
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:  # the trainer wrote what it had; a stop, not a crash
        print(f"to resume: {resume_command()}", flush=True)
        raise SystemExit(130) from None
