"""The verl run configuration: one place that composes verl's ``ppo_trainer`` config for
``train_rgrpo.py verl`` (GPUs, vLLM / SGLang) and ``train_rgrpo.py verl-cpu`` (CPU, the
transformers rollout of :mod:`agents.verl.cpu`).

:func:`compose_verl_config` takes verl's own Hydra config (``verl/trainer/config``),
applies :func:`project_overrides` (the r-GRPO estimator, the agent loop, the sizes of
:class:`VerlArgs`), then :func:`cpu_overrides` for the CPU backend, then the user's
overrides, so every verl option stays a Hydra override and the user has the last word.
:func:`check_sizes` refuses size combinations verl would only reject deep inside a Ray
worker (micro batches that do not divide ``batch x n``, a response budget smaller than
the answer needs) before anything starts.
"""

from __future__ import annotations

import re

import dataclasses
import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import yaml

from agents.verl.settings import AGENT_NAME, LoopSettings, ScoringServiceSettings, agent_loop_config
from envs.settings import EnvSettings, ImageSettings, ScorerSettings
from envs.atomic import atomic_write_text

ESTIMATOR_KEY = "algorithm.adv_estimator"
IMAGE_TOKEN_PIXELS = 28 * 28
"""Pixels per Qwen2.5-VL image token (14 px patches merged 2 x 2), the fewest of the supported
families (Qwen3-VL: 32 x 32): where a run's model cannot be read before launch (a hub id),
``max_pixels / IMAGE_TOKEN_PIXELS`` bounds the image tokens of any of them. A local
checkpoint's own value is read from its image processor (:func:`image_token_pixels`)."""
FOLLOWUP_TEXT_TOKENS = 128
"""Room for the text of a multi-step follow-up turn (the image tokens come on top)."""
GPU_MODEL = "Qwen/Qwen2.5-VL-3B-Instruct"
FP32_MIXED_PRECISION = "{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"
NOT_ON_CPU = {
    "gae": "it needs verl's critic worker (a value model trained next to the actor), which the CPU path "
    "does not bring up (not built or tested on CPU); train GAE with train_rgrpo.py verl on GPUs",
}
"""Estimators ``train_rgrpo.py verl-cpu`` refuses before launch, with the reason."""


@dataclass
class VerlArgs:
    """A verl run: the policy model, the data, the sizes and the env the agent loop runs."""

    model_path: str | None = None
    """Qwen2.5-VL or Qwen3-VL checkpoint (hub id or local folder; its config's model_type
    picks the family, --images.family overrides it); default: Qwen2.5-VL-3B-Instruct on
    GPUs, the tiny Qwen2.5-VL named by --policy on CPU"""
    policy: Literal["learner", "toy"] = "learner"
    """CPU, without --model-path: the tiny Qwen2.5-VL to train: learner (2.6 M parameters,
    warm-started on fresh scenes with the run's seed on first use into the cache, see
    agents/qwen/sft.py) or toy (0.37 M, shipped, for smoke tests)"""
    train_files: Path | None = None
    """training parquet from recipes/prepare_verl_data.py; default: the embedded benchmark, exported to OUT/data"""
    val_files: Path | None = None
    """validation parquet from recipes/prepare_verl_data.py; default: the embedded benchmark, exported to OUT/data"""
    max_queries: int | None = None
    """when exporting the embedded benchmark: at most this many queries per split"""
    val_queries: int | None = None
    """when exporting the embedded benchmark: at most this many validation queries"""
    out: Path = Path("runs/verl")
    """output folder: agent-loop config, data, checkpoints, logs, summary.json"""
    n_gpus: int = 1
    """GPUs per node (CPU: actor worker processes)"""
    rollout_engine: str = "vllm"
    """inference server verl generates with (vllm, sglang; transformers on CPU)"""
    rollout_n: int = 8
    """rollouts per query (the group size of GRPO / r-GRPO)"""
    train_batch_size: int = 16
    """queries per training step (train_batch_size * rollout_n rollouts)"""
    ppo_mini_batch_size: int = 8
    """queries per policy update (one step makes train_batch_size / ppo_mini_batch_size updates)"""
    micro_batch_size_per_gpu: int = 2
    """sequences per forward/backward pass on one GPU"""
    log_prob_micro_batch_size_per_gpu: int | None = None
    """sequences per log-prob forward (old and reference log-probs); default: 2 x micro_batch_size_per_gpu"""
    lr: float = 1e-6
    """actor learning rate"""
    kl_loss_coef: float = 0.01
    """weight of the KL-to-reference loss (GRPO style, not in the reward)"""
    temperature: float = 1.0
    """sampling temperature of training rollouts"""
    gpu_memory_utilization: float = 0.5
    """share of GPU memory the rollout server takes"""
    answer_tokens: int = 256
    """most tokens the policy writes per turn (reasoning + answer)"""
    prompt_text_tokens: int = 1024
    """room for the system prompt, the question and the chat scaffold (the image tokens come on top)"""
    total_epochs: int = 1
    """passes over the training data"""
    total_training_steps: int | None = None
    """stop after this many steps (default: total_epochs over the data)"""
    test_freq: int = 25
    """validate every N steps (-1: never)"""
    save_freq: int = 50
    """checkpoint every N steps (-1: never)"""
    resume: str = "auto"
    """verl's trainer.resume_mode on OUT/checkpoints: auto (continue from the latest
    checkpoint when there is one), disable (start over), or global_step_N (continue from
    that checkpoint); see docs/resume.md"""
    seed: int = 0
    """seed of the run: data shuffling (verl's data.seed) and the rollout sampling (every generation
    request carries a seed derived from it, see agents/verl/episode.py::request_seed)"""
    project_name: str = "region-rerank"
    """experiment tracker project"""
    experiment_name: str = "rgrpo"
    """experiment tracker run name"""
    agent_workers: int = 4
    """agent-loop worker processes (each holds a scorer)"""
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    """the frozen re-ranker the agent-loop workers score with (e.g. --scorer.model EVA02-L-14)"""
    env: EnvSettings = field(default_factory=EnvSettings)
    """the episode the agent loop runs: steps, reward and how it is paid, information gap"""
    images: ImageSettings = field(default_factory=ImageSettings)
    """pixel limits of every view shown to the policy (they bound its image tokens)"""
    balance_groups: bool = True
    """decision-balanced groups (r-GRPO); off: plain on-policy groups"""
    balance_budget: int = 4
    """extra on-policy draws for a group's missing decision before it is forced"""
    scoring: ScoringServiceSettings = field(default_factory=ScoringServiceSettings)
    """the batched scorer service shared by every rollout (e.g. --scoring.max-batch 256)"""

    @classmethod
    def for_cpu(cls) -> "VerlArgs":
        """Defaults of ``train_rgrpo.py verl-cpu``: the warm-started learner tiny Qwen2.5-VL on the
        embedded benchmark, sized for 7-8 minutes of RL (40 steps) on 2 cores. Rollouts are sampled at
        temperature 0.5: at 1.0 the sampled boxes were much worse than the greedy ones
        (always cropping, reward 1.13 against 1.68 on the validation split), so in training
        a crop earned less than FULL and RL taught the policy to stop cropping."""
        return cls(
            out=Path("runs/verl-cpu"),
            rollout_engine="transformers",
            rollout_n=8,
            train_batch_size=8,
            ppo_mini_batch_size=8,
            micro_batch_size_per_gpu=16,
            log_prob_micro_batch_size_per_gpu=32,
            lr=1e-4,
            kl_loss_coef=0.001,
            temperature=0.5,
            answer_tokens=32,
            prompt_text_tokens=96,
            val_queries=100,
            total_training_steps=40,
            test_freq=10,
            save_freq=20,
            agent_workers=1,
            images=ImageSettings(max_pixels=64 * IMAGE_TOKEN_PIXELS),
            experiment_name="rgrpo-cpu",
        )


def resolved_model_path(args: VerlArgs, cpu: bool) -> str:
    """``args.model_path``, or the backend's default model (on CPU the learner's cache folder,
    which :func:`agents.verl.launch.launch` fills on first use)."""
    if args.model_path is not None:
        return args.model_path
    if cpu:
        if args.policy == "toy":
            from agents.qwen.tiny import shipped_policy_path

            return str(shipped_policy_path())
        from agents.qwen.sft import cache_path

        return str(cache_path(learner_warm_start(args)))
    return GPU_MODEL


def learner_warm_start(args: VerlArgs):
    """The warm start of the CPU run's learner policy: the default one, seeded with the run."""
    from agents.qwen.sft import WarmStartConfig

    return WarmStartConfig(seed=args.seed)


def _local_checkpoint(args: VerlArgs, cpu: bool) -> Path | None:
    path = Path(resolved_model_path(args, cpu))
    return path if (path / "config.json").is_file() else None


def pin_family(args: VerlArgs, cpu: bool = False) -> None:
    """Set ``args.images.family`` to the family of the run's checkpoint when it is a local
    folder (an unknown family is refused here, before launch), so the data export, the
    prompt-length check and the agent-loop file all use it. An explicit family is kept;
    for a hub id the agent loop reads the family from the model verl loads."""
    from agents.qwen.family import family_of, get_family

    if args.images.family is not None:
        get_family(args.images.family)  # refuses an unknown name before launch
        return
    local = _local_checkpoint(args, cpu)
    if local is not None:
        args.images = dataclasses.replace(args.images, family=family_of(local).name)


def image_token_pixels(args: VerlArgs, cpu: bool = False) -> int:
    """Pixels per image token of the run's model: the square of its image processor's
    resize factor (``patch_size * merge_size``) for a local checkpoint, else
    :data:`IMAGE_TOKEN_PIXELS` (a bound for every supported family)."""
    from agents.qwen.family import checkpoint_resize_factor

    local = _local_checkpoint(args, cpu)
    return checkpoint_resize_factor(local) ** 2 if local is not None else IMAGE_TOKEN_PIXELS


def log_prob_micro_batch(args: VerlArgs) -> int:
    return args.log_prob_micro_batch_size_per_gpu or 2 * args.micro_batch_size_per_gpu


def sequence_lengths(args: VerlArgs, token_pixels: int = IMAGE_TOKEN_PIXELS) -> tuple[int, int]:
    """``(max_prompt_length, max_response_length)`` that fit the prompt and every turn.

    The prompt holds the first view (at most ``max_pixels / token_pixels`` image tokens:
    784 px per token for Qwen2.5-VL, 1024 for Qwen3-VL, see :func:`image_token_pixels`);
    each further turn of multi-step zoom adds an answer and the next view to the response.
    """
    image_tokens = args.images.max_pixels // token_pixels
    prompt = args.prompt_text_tokens + image_tokens
    response = args.answer_tokens * args.env.max_steps + (args.env.max_steps - 1) * (image_tokens + FOLLOWUP_TEXT_TOKENS)
    return prompt, response


def check_sizes(args: VerlArgs) -> None:
    """Raise ``ValueError`` naming the settings of a size combination verl cannot run."""
    rollouts = args.train_batch_size * args.rollout_n
    problems = []
    if args.train_batch_size % args.ppo_mini_batch_size:
        problems.append(
            f"ppo_mini_batch_size={args.ppo_mini_batch_size} must divide train_batch_size={args.train_batch_size}"
        )
    mini_rollouts = args.ppo_mini_batch_size * args.rollout_n
    if mini_rollouts % args.micro_batch_size_per_gpu:
        problems.append(
            f"micro_batch_size_per_gpu={args.micro_batch_size_per_gpu} must divide ppo_mini_batch_size x "
            f"rollout_n = {args.ppo_mini_batch_size} x {args.rollout_n} = {mini_rollouts}"
        )
    log_prob = log_prob_micro_batch(args)
    if rollouts % log_prob:
        problems.append(
            f"log_prob_micro_batch_size_per_gpu={log_prob} must divide train_batch_size x rollout_n = "
            f"{args.train_batch_size} x {args.rollout_n} = {rollouts}"
        )
    if args.rollout_n < 1 or args.train_batch_size < 1:
        problems.append(f"train_batch_size={args.train_batch_size} and rollout_n={args.rollout_n} must be >= 1")
    # A crop answer (tool call with a box) needs about this many tokens with Qwen's tokenizer.
    if args.answer_tokens < 16:
        problems.append(f"answer_tokens={args.answer_tokens} is too small for a crop answer (at least 16)")
    if problems:
        raise ValueError("verl run sizes: " + "; ".join(problems))


def longest_prompt_tokens(tokenizer, questions: Sequence[str], max_steps: int = 1, family=None) -> int:
    """Text tokens of the longest first-turn prompt (system prompt of ``family``, question,
    chat scaffold, one image placeholder) among ``questions``; the image's own tokens come on top."""
    from agents.qwen.prompts import build_messages

    longest = 0
    for question in sorted(set(questions), key=len, reverse=True)[:8]:
        messages = build_messages(question, "image.png", 0, max_steps, family=family)
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        longest = max(longest, len(tokenizer.encode(text, add_special_tokens=False)))
    return longest


def check_prompt_fits(args: VerlArgs, tokenizer, questions: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``prompt_text_tokens`` when the longest prompt of the data,
    with the largest image, would not fit ``data.max_prompt_length``. The prompt is worded for
    ``args.images.family``, else for the family of the checkpoint the tokenizer came from."""
    from agents.qwen.family import resolve_family

    family = resolve_family(args.images.family, getattr(tokenizer, "name_or_path", None) or None)
    needed = longest_prompt_tokens(tokenizer, questions, args.env.max_steps, family)
    if needed > args.prompt_text_tokens:
        prompt_length, _ = sequence_lengths(args)
        raise ValueError(
            f"prompt_text_tokens={args.prompt_text_tokens} is too small: the longest prompt of the data has "
            f"{needed} text tokens with this model's tokenizer (plus up to {args.images.max_pixels // IMAGE_TOKEN_PIXELS} "
            f"image tokens for max_pixels={args.images.max_pixels}; max_prompt_length would be {prompt_length}); "
            f"raise prompt_text_tokens to at least {needed}"
        )


def agent_loop_file(args: VerlArgs) -> Path:
    """Where the agent-loop registration for this run is written."""
    return (args.out / "agent_loop.yaml").resolve()


def loop_settings(args: VerlArgs) -> LoopSettings:
    """The :class:`agents.verl.settings.LoopSettings` of this run."""
    return LoopSettings(
        scorer=args.scorer, env=args.env, images=args.images,
        balance_groups=args.balance_groups, balance_budget=args.balance_budget, scoring=args.scoring,
        seed=args.seed,
    )


def write_agent_loop_file(args: VerlArgs) -> Path:
    """Write verl's ``agent_loop_config_path`` file that registers the RegionRerank loop."""
    path = agent_loop_file(args)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, yaml.safe_dump(agent_loop_config(loop_settings(args)), sort_keys=False))
    return path


def data_files(args: VerlArgs) -> tuple[Path, Path]:
    """The training and validation parquet files of the run (defaults under ``OUT/data``)."""
    data = args.out / "data"
    return (args.train_files or data / "train.parquet").resolve(), (args.val_files or data / "val.parquet").resolve()


RESUME_STEP = re.compile(r"global_step_(\d+)")


def resume_overrides(args: VerlArgs) -> list[str]:
    """verl's ``trainer.resume_mode`` (and ``resume_from_path``) for ``args.resume``."""
    if args.resume in ("auto", "disable"):
        return [f"trainer.resume_mode={args.resume}"]
    if RESUME_STEP.fullmatch(args.resume):
        return ["trainer.resume_mode=resume_path", f"trainer.resume_from_path={resume_folder(args)}"]
    raise ValueError(f"--resume {args.resume!r}: expected auto, disable or global_step_N (a folder of {args.out / 'checkpoints'})")


def resume_folder(args: VerlArgs) -> Path | None:
    """The checkpoint folder this run continues from: the named ``global_step_N``, the
    latest one for ``auto`` (verl's ``latest_checkpointed_iteration.txt``), or None."""
    checkpoints = (args.out / "checkpoints").resolve()
    if RESUME_STEP.fullmatch(args.resume):
        return checkpoints / args.resume
    latest = checkpoints / "latest_checkpointed_iteration.txt"
    if args.resume == "auto" and latest.is_file():
        folder = checkpoints / f"global_step_{latest.read_text().strip()}"
        return folder if folder.is_dir() else None
    return None


def project_overrides(args: VerlArgs, cpu: bool = False) -> list[str]:
    """The project's defaults as Hydra overrides of verl's ``ppo_trainer`` config."""
    model = resolved_model_path(args, cpu)
    return [*algorithm_and_data_overrides(args, cpu), *policy_overrides(args, model), *rollout_overrides(args),
            *critic_overrides(args, model), *trainer_overrides(args)]


def algorithm_and_data_overrides(args: VerlArgs, cpu: bool) -> list[str]:
    """r-GRPO with KL as a loss (as in GRPO), and the parquet data of recipes/prepare_verl_data.py."""
    prompt_length, response_length = sequence_lengths(args, image_token_pixels(args, cpu))
    train_files, val_files = data_files(args)
    return [
        f"{ESTIMATOR_KEY}=rgrpo",  # agents.verl.plugin
        "algorithm.norm_adv_by_std_in_grpo=true",
        "algorithm.use_kl_in_reward=false",
        f"data.train_files={train_files}",
        f"data.val_files={val_files}",
        f"data.train_batch_size={args.train_batch_size}",
        f"data.max_prompt_length={prompt_length}",
        f"data.max_response_length={response_length}",
        f"data.seed={args.seed}",
        # prompts fit by construction (sequence_lengths), so verl's slow multimodal length filter is off
        "data.filter_overlong_prompts=false",
        "data.truncation=error",
        "data.image_key=images",
        "data.dataloader_num_workers=2",
    ]


def policy_overrides(args: VerlArgs, model: str) -> list[str]:
    """The actor and its frozen reference."""
    return [
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
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={log_prob_micro_batch(args)}",
    ]


def rollout_overrides(args: VerlArgs) -> list[str]:
    """The rollout: the RegionRerank agent loop, up to max_steps images a prompt."""
    return [
        f"actor_rollout_ref.rollout.name={args.rollout_engine}",
        f"actor_rollout_ref.rollout.n={args.rollout_n}",
        f"actor_rollout_ref.rollout.temperature={args.temperature}",
        f"actor_rollout_ref.rollout.seed={args.seed}",
        "actor_rollout_ref.rollout.tensor_model_parallel_size=1",
        f"actor_rollout_ref.rollout.gpu_memory_utilization={args.gpu_memory_utilization}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={log_prob_micro_batch(args)}",
        f"+actor_rollout_ref.rollout.limit_images={args.env.max_steps}",
        f"actor_rollout_ref.rollout.agent.default_agent_loop={AGENT_NAME}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={agent_loop_file(args)}",
        f"actor_rollout_ref.rollout.agent.num_workers={args.agent_workers}",
    ]


def critic_overrides(args: VerlArgs, model: str) -> list[str]:
    """The critic, used only when an override picks a critic-based estimator (gae)."""
    return [f"critic.model.path={model}", f"critic.ppo_micro_batch_size_per_gpu={args.micro_batch_size_per_gpu}"]


def trainer_overrides(args: VerlArgs) -> list[str]:
    """verl's v1 trainer with the r-GRPO decision hand-off (agents.verl.plugin); it defers to
    verl's own advantage step for every other estimator."""
    steps = [] if args.total_training_steps is None else [f"trainer.total_training_steps={args.total_training_steps}"]
    return [
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
        *resume_overrides(args),
        *steps,
    ]


def cpu_overrides(args: VerlArgs) -> list[str]:
    """What verl 0.9.1 needs to train on a CPU (each line names the block it gets past;
    the platform, the engines and the rollout are registered by :mod:`agents.verl.cpu`)."""
    return [
        "trainer.device=cpu",
        # FSDP1 syncs module states on GPU tensors; FSDP2 runs on gloo
        "actor_rollout_ref.actor.strategy=fsdp2",
        "actor_rollout_ref.ref.strategy=fsdp2",
        "critic.strategy=fsdp2",
        # gae is refused on CPU (NOT_ON_CPU), so no critic; saying so spares verl's warning
        "critic.enable=false",
        # no flash-attn, padding-removal kernels or torch.compile on a CPU
        "+actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        "actor_rollout_ref.model.use_remove_padding=false",
        "actor_rollout_ref.model.enable_gradient_checkpointing=false",
        "actor_rollout_ref.actor.use_torch_compile=false",
        "actor_rollout_ref.ref.use_torch_compile=false",
        # float32 end to end (FSDP's mixed precision is bf16 by default), so rollout and actor
        # log-probs agree to float32 rounding
        "actor_rollout_ref.actor.fsdp_config.dtype=float32",
        "actor_rollout_ref.ref.fsdp_config.dtype=float32",
        f"+actor_rollout_ref.actor.fsdp_config.mixed_precision={FP32_MIXED_PRECISION}",
        f"+actor_rollout_ref.ref.fsdp_config.mixed_precision={FP32_MIXED_PRECISION}",
        "actor_rollout_ref.ref.fsdp_config.param_offload=false",
        "actor_rollout_ref.rollout.dtype=float32",
        "actor_rollout_ref.rollout.calculate_log_probs=true",
        "actor_rollout_ref.rollout.free_cache_engine=false",
        # the final checkpoint also as a Hugging Face folder: the test table evaluates it
        "actor_rollout_ref.actor.checkpoint.save_contents=[model,optimizer,extra,hf_model]",
        # one TransferQueue storage unit; logical Ray CPUs and GPUs (worker slots, not devices)
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "ray_kwargs.ray_init.num_cpus=8",
        "+ray_kwargs.ray_init.num_gpus=1",
        "data.dataloader_num_workers=0",
        "trainer.logger=[console,tensorboard,file]",
        # verl's replay buffer polls for finished rollouts every 2 s, longer than a CPU step's generation
        "trainer.v1.sampler.custom_sampler.path=pkg://agents.verl.sampler",
        "trainer.v1.sampler.custom_sampler.name=QuickPollReplayBuffer",
    ]


def verl_config_dir() -> Path:
    """verl's Hydra config folder (``ppo_trainer.yaml`` and its groups)."""
    spec = importlib.util.find_spec("verl")
    return Path(spec.origin).resolve().parent / "trainer" / "config"


def compose_verl_config(args: VerlArgs, overrides: Sequence[str] = (), cpu: bool = False):
    """verl's ``ppo_trainer`` config with the project's defaults (and the CPU ones), then ``overrides``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    check_sizes(args)
    pin_family(args, cpu)
    ours = project_overrides(args, cpu) + (cpu_overrides(args) if cpu else [])
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        return compose(config_name="ppo_trainer", overrides=ours + list(overrides))


def check_estimator(name: str, cpu: bool = False) -> None:
    """Raise ``ValueError`` unless verl knows the estimator ``name`` and, on CPU, it can run there."""
    from agents.verl.plugin import check_estimator as check

    check(name, "verl-cpu" if cpu else "verl", NOT_ON_CPU if cpu else None)


def missing_for_verl(rollout_engine: str, cpu: bool = False) -> list[str]:
    """What this machine lacks to run the verl backend (empty when it can)."""
    missing = []
    if not cpu:
        import torch

        if not torch.cuda.is_available():
            missing.append("an NVIDIA GPU (torch.cuda.is_available() is False)")
        if importlib.util.find_spec(rollout_engine) is None:
            missing.append(f"the {rollout_engine} rollout server (pip install 'verl[{rollout_engine}]==0.9.1')")
    if importlib.util.find_spec("transfer_queue") is None:
        missing.append("TransferQueue, used by verl's v1 trainer (pip install 'transferqueue==0.1.11')")
    plugins = {entry.value for entry in importlib.metadata.entry_points(group="verl.plugins")}
    if "agents.verl.plugin" not in plugins:
        missing.append("this project installed (pip install -e .), so verl's Ray workers load agents.verl.plugin")
    return missing

