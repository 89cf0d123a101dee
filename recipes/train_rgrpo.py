"""Train the cropping policy with r-GRPO: Qwen2.5-VL with verl, or a small policy on CPU.

``--backend verl`` composes verl's own ``ppo_trainer`` config (Hydra compose API on
``verl/trainer/config``) with this project's defaults, registers the RegionRerank agent
loop (:mod:`agents.verl.agent_loop`) and launches verl's trainer (``verl.trainer.main_ppo``).
Any verl option is a positional Hydra override ``key=value``, applied last, so swapping
the algorithm is one of them: ``algorithm.adv_estimator=grpo`` (or ``rloo``,
``reinforce_plus_plus``, ``gae``, ... anything in verl's estimator registry; ``rgrpo``
is the default and comes from :mod:`agents.verl.plugin`).

``--backend local`` trains the small CPU policy of :mod:`agents.local.trainer` on the
same env and with verl's estimators (``--local.*`` flags; the override
``algorithm.adv_estimator=NAME`` selects its estimator too). Without a GPU it is the
default.

    python recipes/prepare_verl_data.py --out data/verl            # parquet files for verl
    python recipes/train_rgrpo.py --backend verl --verl.model-path Qwen/Qwen2.5-VL-3B-Instruct
    python recipes/train_rgrpo.py --backend verl algorithm.adv_estimator=grpo trainer.total_epochs=2
    python recipes/train_rgrpo.py --backend verl --dry-run          # print the resolved config
    python recipes/train_rgrpo.py --backend local --local.iterations 100
    python recipes/train_rgrpo.py --backend local --local.iterations 100 --resume   # after a kill or Ctrl-C

The local backend saves its whole training state every ``--local.checkpoint-every``
iterations; the same command started again continues an unfinished run (docs/resume.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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

@dataclass
class Args:
    """Train the RegionRerank cropping policy (see the module docstring)."""

    overrides: tyro.conf.Positional[tuple[str, ...]] = ()
    """verl Hydra overrides key=value, applied after the project's defaults"""
    backend: Literal["auto", "verl", "verl-cpu", "local"] = "auto"
    """verl (GPUs + vLLM/SGLang), verl-cpu (verl's trainer with a tiny Qwen2.5-VL on CPU), local (small
    CPU policy), or auto: verl when a GPU is visible, else local"""
    dry_run: bool = False
    """print the resolved configuration and exit"""
    verl: VerlArgs = field(default_factory=VerlArgs)
    """the verl backend (GPUs)"""
    verl_cpu: VerlArgs = field(default_factory=VerlArgs.for_cpu)
    """the verl-cpu backend (same settings, CPU-sized defaults)"""
    local: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    """the local (CPU) backend"""
    test_data: Path | None = None
    """local backend: query pools for the final test table (default: the embedded test split)"""
    test_queries: int | None = None
    """local and verl-cpu backends: test queries in the final table (default: all; 0 skips the table)"""
    resume: bool = False
    """local backend: continue the unfinished run in --local.out and fail if there is none
    (without the flag an unfinished run of the same config is continued too, and a fresh
    run starts when there is none)"""


# --------------------------------------------------------------------------- verl backends
def run_verl(args: Args, cpu: bool) -> None:
    verl_args = args.verl_cpu if cpu else args.verl
    summary = launch(verl_args, args.overrides, cpu=cpu, dry_run=args.dry_run)
    if summary is None or args.test_queries == 0 or not cpu or verl_args.train_files is not None:
        return
    trained = final_checkpoint(verl_args.out)
    if trained is None:
        print("no final checkpoint (--verl-cpu.save-freq -1), so no test table")
        return
    start = resolved_model_path(verl_args, cpu=True)
    test_vlm_policies(verl_args, {"warm start": start, "trained": trained}, args.test_queries)


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
def local_config(args: Args):
    """The local backend's config with the positional overrides it understands applied."""
    config = args.local
    if args.resume:
        config.resume = "require"
    for override in args.overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key != ESTIMATOR_KEY:
            raise SystemExit(
                f"override {override!r} is a verl option; the local backend understands only "
                f"{ESTIMATOR_KEY}=NAME (its other options are --local.* flags)"
            )
        if config.estimator not in (value, LocalTrainConfig.estimator):
            raise SystemExit(f"--local.estimator {config.estimator} and {override} name two estimators; give one")
        config.estimator = value
    return config


def run_local(args: Args) -> None:
    config = local_config(args)
    if args.backend == "auto":
        print("No GPU: training the small CPU policy on the embedded default (--backend local); "
              "--backend verl trains Qwen2.5-VL on a GPU.")
    if args.dry_run:
        print(yaml.safe_dump(config.to_dict(), sort_keys=False))
        return
    set_threads(config.threads)
    scorer = make_scorer(config.scorer)
    result = train(config, scorer)
    print(f"policy: {result.checkpoint} ({result.seconds:.0f} s of training)")
    if args.test_queries == 0:
        return
    # The trained policy's own episode (information gap, zoom steps, reward, SEARCH, regions).
    test_env = make_env(args.test_data, scorer, split="test", purpose="eval", settings=config.env)
    n = len(test_env.pools) if args.test_queries is None else min(args.test_queries, len(test_env.pools))
    names = ["full", "center", "random", "annotated", "oracle"]
    names += ["search-full", "search-annotated", "oracle-search"] if config.env.search else []
    names += ["oracle-2box"] if config.env.max_regions >= 2 else []
    policies = {**baseline_policies(names), "trained": load_policy(result.checkpoint)}
    source = str(args.test_data) if args.test_data else "embedded benchmark, test split"
    note = (f"trained: one seed (seed {config.seed}); the baseline rows are deterministic. The README gives the "
            "default run's spread over 5 seeds (python recipes/compare_algorithms.py --algorithms rgrpo).")
    evaluate_and_report(test_env, policies, range(n), config.out / "test", source, note=note)


def resolve_backend(backend: str) -> str:
    """``auto`` is verl when a GPU is visible, else local."""
    if backend != "auto":
        return backend
    return "verl" if torch.cuda.is_available() else "local"


def main(args: Args) -> None:
    backend = resolve_backend(args.backend)
    if backend in ("verl", "verl-cpu"):
        run_verl(args, cpu=backend == "verl-cpu")
    else:
        run_local(args)


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (DataError, ValueError) as err:  # bad input or settings: say which, no traceback
        raise SystemExit(f"error: {err}") from None
    except KeyboardInterrupt:  # the trainer wrote what it had; a stop, not a crash
        print(f"to resume: {resume_command()}", flush=True)
        raise SystemExit(130) from None
