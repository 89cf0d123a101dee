"""Train the cropping policy with r-GRPO: Qwen2.5-VL with verl, or a small policy on CPU.

``--backend verl`` composes verl's own ``ppo_trainer`` config (Hydra compose API on
``verl/trainer/config``) with this project's defaults, registers the RegionRerank agent
loop (:mod:`agents.agent_loop`) and launches verl's trainer (``verl.trainer.main_ppo``).
Any verl option is a positional Hydra override ``key=value``, applied last, so swapping
the algorithm is one of them: ``algorithm.adv_estimator=grpo`` (or ``rloo``,
``reinforce_plus_plus``, ``gae``, ... anything in verl's estimator registry; ``rgrpo``
is the default and comes from :mod:`agents.verl_plugin`).

``--backend local`` trains the small CPU policy of :mod:`agents.local_trainer` on the
same env and with verl's estimators (``--local.*`` flags; the override
``algorithm.adv_estimator=NAME`` selects its estimator too). Without a GPU it is the
default.

    python recipes/prepare_verl_data.py --out data/verl            # parquet files for verl
    python recipes/train_rgrpo.py --backend verl --verl.model-path Qwen/Qwen2.5-VL-3B-Instruct
    python recipes/train_rgrpo.py --backend verl algorithm.adv_estimator=grpo trainer.total_epochs=2
    python recipes/train_rgrpo.py --backend verl --dry-run          # print the resolved config
    python recipes/train_rgrpo.py --backend local --local.iterations 100
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import tyro
import yaml

from agents.agent_loop import AGENT_NAME, agent_loop_config
from agents.baselines import baseline_policies
from agents.evaluation import evaluate_and_report
from agents.local_policy import load_policy
from agents.local_trainer import LocalTrainConfig, train
from agents.qwen_policy import DEFAULT_MAX_PIXELS
from envs.boxes import QWEN_MIN_PIXELS
from envs.data import DataError
from envs.region_rerank import RegionRerankEnv
from rewards import RewardConfig

ESTIMATOR_KEY = "algorithm.adv_estimator"
IMAGE_TOKEN_PIXELS = 28 * 28
"""Pixels per Qwen2.5-VL image token (14 px patches merged 2 x 2)."""
PROMPT_TEXT_TOKENS = 1024
"""Room for the system prompt (~500 Qwen tokens), the question and the chat scaffold."""
FOLLOWUP_TEXT_TOKENS = 128
"""Room for the text of a multi-step follow-up turn (the image tokens come on top)."""


@dataclass
class VerlArgs:
    """The verl backend: the policy model, the data, one-GPU sizes and the env the agent loop runs."""

    model_path: str = "Qwen/Qwen2.5-VL-3B-Instruct"
    """Qwen2.5-VL checkpoint (hub id or local folder)"""
    train_files: Path = Path("data/verl/train.parquet")
    """training parquet from recipes/prepare_verl_data.py"""
    val_files: Path = Path("data/verl/val.parquet")
    """validation parquet from recipes/prepare_verl_data.py"""
    out: Path = Path("runs/verl")
    """output folder: agent-loop config, checkpoints, TensorBoard logs"""
    n_gpus: int = 1
    """GPUs per node"""
    rollout_engine: Literal["vllm", "sglang"] = "vllm"
    """inference server verl generates with"""
    rollout_n: int = 8
    """rollouts per query (the group size of GRPO / r-GRPO)"""
    train_batch_size: int = 16
    """queries per training step (train_batch_size * rollout_n rollouts)"""
    ppo_mini_batch_size: int = 8
    """queries per policy update (one step makes train_batch_size / ppo_mini_batch_size updates)"""
    micro_batch_size_per_gpu: int = 2
    """sequences per forward/backward pass on one GPU"""
    lr: float = 1e-6
    """actor learning rate"""
    kl_loss_coef: float = 0.01
    """weight of the KL-to-reference loss (GRPO style, not in the reward)"""
    gpu_memory_utilization: float = 0.5
    """share of GPU memory the rollout server takes"""
    answer_tokens: int = 256
    """most tokens the policy writes per turn (reasoning + answer)"""
    total_epochs: int = 1
    """passes over the training data"""
    test_freq: int = 25
    """validate every N steps (-1: never)"""
    save_freq: int = 50
    """checkpoint every N steps (-1: never)"""
    project_name: str = "region-rerank"
    """experiment tracker project"""
    experiment_name: str = "rgrpo"
    """experiment tracker run name"""
    agent_workers: int = 4
    """agent-loop worker processes (each holds a scorer)"""
    scorer_model: str | None = None
    """open_clip re-ranker (e.g. EVA02-L-14); default: the embedded rr-tiny scorer"""
    scorer_pretrained: str | None = None
    """zoo tag or local checkpoint of --verl.scorer-model"""
    scorer_device: str = "cpu"
    """device of the scorer in the agent-loop workers"""
    max_steps: int = 1
    """REGION steps per episode (1 is the paper's setting; >1 is multi-step zoom)"""
    reward_mode: Literal["terminal", "incremental"] = "terminal"
    """how zoom steps are paid"""
    policy_max_side: int | None = None
    """information gap: longest side of the view shown to the policy"""
    min_pixels: int = QWEN_MIN_PIXELS
    """least pixels of a view shown to the policy (match recipes/prepare_verl_data.py)"""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """most pixels of a view shown to the policy (match recipes/prepare_verl_data.py)"""
    balance_groups: bool = True
    """decision-balanced groups (r-GRPO); off: plain on-policy groups"""
    balance_budget: int = 4
    """extra on-policy draws for a group's missing decision before it is forced"""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """reward weights and penalties"""


@dataclass
class Args:
    """Train the RegionRerank cropping policy (see the module docstring)."""

    overrides: tyro.conf.Positional[tuple[str, ...]] = ()
    """verl Hydra overrides key=value, applied after the project's defaults"""
    backend: Literal["auto", "verl", "local"] = "auto"
    """verl (GPUs + vLLM/SGLang), local (CPU policy), or auto: verl when a GPU is visible"""
    dry_run: bool = False
    """print the resolved configuration and exit"""
    verl: VerlArgs = field(default_factory=VerlArgs)
    """the verl backend"""
    local: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    """the local (CPU) backend"""
    test_data: Path | None = None
    """local backend: query pools for the final test table (default: the embedded test split)"""
    test_queries: int | None = None
    """local backend: test queries in the final table (default: all; 0 skips the table)"""


# --------------------------------------------------------------------------- verl backend
def verl_config_dir() -> Path:
    """verl's Hydra config folder (``ppo_trainer.yaml`` and its groups)."""
    import verl

    return Path(verl.__file__).resolve().parent / "trainer" / "config"


def sequence_lengths(args: VerlArgs) -> tuple[int, int]:
    """``(max_prompt_length, max_response_length)`` that fit the prompt and every turn.

    The prompt holds the first view (at most ``max_pixels / 784`` image tokens); each
    further turn of multi-step zoom adds an answer and the next view to the response.
    """
    image_tokens = args.max_pixels // IMAGE_TOKEN_PIXELS
    prompt = PROMPT_TEXT_TOKENS + image_tokens
    response = args.answer_tokens * args.max_steps + (args.max_steps - 1) * (image_tokens + FOLLOWUP_TEXT_TOKENS)
    return prompt, response


def agent_loop_file(args: VerlArgs) -> Path:
    """Where the agent-loop registration for this run is written."""
    return (args.out / "agent_loop.yaml").resolve()


def agent_loop_settings(args: VerlArgs) -> dict:
    """The :class:`agents.agent_loop.LoopSettings` of this run."""
    return dict(
        scorer_model=args.scorer_model,
        scorer_pretrained=args.scorer_pretrained,
        scorer_device=args.scorer_device,
        max_steps=args.max_steps,
        reward_mode=args.reward_mode,
        reward=asdict(args.reward),
        policy_max_side=args.policy_max_side,
        min_pixels=args.min_pixels,
        max_pixels=args.max_pixels,
        balance_groups=args.balance_groups,
        balance_budget=args.balance_budget,
    )


def write_agent_loop_file(args: VerlArgs) -> Path:
    """Write verl's ``agent_loop_config_path`` file that registers the RegionRerank loop."""
    path = agent_loop_file(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(agent_loop_config(**agent_loop_settings(args)), sort_keys=False))
    return path


def project_overrides(args: VerlArgs) -> list[str]:
    """The project's defaults as Hydra overrides of verl's ``ppo_trainer`` config."""
    prompt_length, response_length = sequence_lengths(args)
    model = args.model_path
    return [
        # algorithm: r-GRPO (agents.verl_plugin), KL as a loss as in GRPO
        f"{ESTIMATOR_KEY}=rgrpo",
        "algorithm.norm_adv_by_std_in_grpo=true",
        "algorithm.use_kl_in_reward=false",
        # data from recipes/prepare_verl_data.py
        f"data.train_files={args.train_files.resolve()}",
        f"data.val_files={args.val_files.resolve()}",
        f"data.train_batch_size={args.train_batch_size}",
        f"data.max_prompt_length={prompt_length}",
        f"data.max_response_length={response_length}",
        # prompts fit by construction (sequence_lengths), so verl's slow multimodal length filter is off
        "data.filter_overlong_prompts=false",
        "data.truncation=error",
        "data.image_key=images",
        "data.dataloader_num_workers=2",
        # policy
        f"actor_rollout_ref.model.path={model}",
        "actor_rollout_ref.model.use_remove_padding=true",
        "actor_rollout_ref.model.enable_gradient_checkpointing=true",
        f"actor_rollout_ref.actor.optim.lr={args.lr}",
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.ppo_mini_batch_size}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={args.micro_batch_size_per_gpu}",
        "actor_rollout_ref.actor.use_kl_loss=true",
        f"actor_rollout_ref.actor.kl_loss_coef={args.kl_loss_coef}",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.entropy_coeff=0",
        "actor_rollout_ref.ref.fsdp_config.param_offload=true",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={2 * args.micro_batch_size_per_gpu}",
        # rollout: the RegionRerank agent loop on a vLLM / SGLang server, up to max_steps images a prompt
        f"actor_rollout_ref.rollout.name={args.rollout_engine}",
        f"actor_rollout_ref.rollout.n={args.rollout_n}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={args.gpu_memory_utilization}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={2 * args.micro_batch_size_per_gpu}",
        f"+actor_rollout_ref.rollout.limit_images={args.max_steps}",
        f"actor_rollout_ref.rollout.agent.default_agent_loop={AGENT_NAME}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_loop_file(args)}",
        f"actor_rollout_ref.rollout.agent.num_workers={args.agent_workers}",
        # critic: only used when an override picks a critic-based estimator (gae)
        f"critic.model.path={model}",
        f"critic.ppo_micro_batch_size_per_gpu={args.micro_batch_size_per_gpu}",
        # trainer: verl's v1 trainer with the r-GRPO decision hand-off (agents.verl_plugin);
        # it defers to verl's own advantage step for every other estimator
        "trainer.use_v1=true",
        "trainer.v1.trainer_mode=rgrpo_sync",
        f"trainer.n_gpus_per_node={args.n_gpus}",
        "trainer.nnodes=1",
        "trainer.logger=[console,tensorboard]",
        f"trainer.project_name={args.project_name}",
        f"trainer.experiment_name={args.experiment_name}",
        f"trainer.default_local_dir={(args.out / 'checkpoints').resolve()}",
        f"trainer.total_epochs={args.total_epochs}",
        f"trainer.test_freq={args.test_freq}",
        f"trainer.save_freq={args.save_freq}",
        "trainer.val_before_train=true",
    ]


def compose_verl_config(args: VerlArgs, overrides: tuple[str, ...] | list[str] = ()):
    """verl's ``ppo_trainer`` config with the project's defaults, then ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        return compose(config_name="ppo_trainer", overrides=project_overrides(args) + list(overrides))


def check_estimator(name: str) -> None:
    """Raise unless verl knows the advantage estimator ``name`` (registry or hard-wired)."""
    import agents.verl_plugin  # noqa: F401  registers rgrpo even where the entry point is not installed
    from verl.trainer.ppo.core_algos import AdvantageEstimator, get_adv_estimator_fn

    if name in {e.value for e in AdvantageEstimator}:
        return
    try:
        get_adv_estimator_fn(name)
    except ValueError as err:
        raise ValueError(f"{ESTIMATOR_KEY}={name!r} is not a verl advantage estimator: {err}") from None


def missing_for_verl(rollout_engine: str) -> list[str]:
    """What this machine lacks to run the verl backend (empty when it can)."""
    import torch

    missing = []
    if not torch.cuda.is_available():
        missing.append("an NVIDIA GPU (torch.cuda.is_available() is False)")
    if importlib.util.find_spec(rollout_engine) is None:
        missing.append(f"the {rollout_engine} rollout server (pip install 'verl[{rollout_engine}]==0.9.1')")
    if importlib.util.find_spec("transfer_queue") is None:
        missing.append("TransferQueue, used by verl's v1 trainer (pip install 'verl[verl-core]==0.9.1')")
    plugins = {entry.value for entry in importlib.metadata.entry_points(group="verl.plugins")}
    if "agents.verl_plugin" not in plugins:
        missing.append("this project installed (pip install -e .), so verl's Ray workers load agents.verl_plugin")
    return missing


def run_verl(args: Args) -> None:
    from omegaconf import OmegaConf

    config = compose_verl_config(args.verl, args.overrides)
    check_estimator(config.algorithm.adv_estimator)
    if args.dry_run:
        print(OmegaConf.to_yaml(config, resolve=True))
        print(f"# agent loop ({agent_loop_file(args.verl)}):")
        print(yaml.safe_dump(agent_loop_config(**agent_loop_settings(args.verl)), sort_keys=False))
        return
    missing = missing_for_verl(config.actor_rollout_ref.rollout.name)
    if missing:
        raise SystemExit(
            "the verl backend needs " + "; ".join(missing) + ".\n"
            "Run it on a GPU machine, or train the CPU policy with --backend local."
        )
    write_agent_loop_file(args.verl)
    from verl.trainer.main_ppo import main as verl_main

    verl_main(config)


# --------------------------------------------------------------------------- local backend
def local_config(args: Args):
    """The local backend's config with the positional overrides it understands applied."""
    config = args.local
    for override in args.overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key != ESTIMATOR_KEY:
            raise SystemExit(
                f"override {override!r} is a verl option; the local backend understands only "
                f"{ESTIMATOR_KEY}=NAME (its other options are --local.* flags)"
            )
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
    scorer = config.make_scorer()
    result = train(config, scorer)
    print(f"policy: {result.checkpoint} ({result.seconds:.0f} s of training)")
    if args.test_queries == 0:
        return
    test_env = RegionRerankEnv(args.test_data, scorer, split="test", purpose="eval", obs_size=config.obs_size)
    n = len(test_env.pools) if args.test_queries is None else min(args.test_queries, len(test_env.pools))
    policies = {**baseline_policies(), "trained": load_policy(result.checkpoint)}
    source = str(args.test_data) if args.test_data else "embedded benchmark, test split"
    evaluate_and_report(test_env, policies, range(n), config.out / "test", source)


def resolve_backend(backend: str) -> str:
    """``auto`` is verl when a GPU is visible, else local."""
    if backend != "auto":
        return backend
    import torch

    return "verl" if torch.cuda.is_available() else "local"


def main(args: Args) -> None:
    if resolve_backend(args.backend) == "verl":
        run_verl(args)
    else:
        run_local(args)


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except DataError as err:  # bad input data: say which file/line/field, no traceback
        raise SystemExit(f"error: {err}") from None
