"""What a verl rollout episode needs besides the dataset row, and the file that carries it.

verl instantiates the agent loop once per sample with the keyword arguments of its entry in
``actor_rollout_ref.rollout.agent.agent_loop_config_path``; :func:`agent_loop_config` writes
that entry from a :class:`LoopSettings`, and the loop parses it back with
:meth:`LoopSettings.from_kwargs`. The settings nest the same objects every recipe uses
(:mod:`envs.settings`), so a training run's env, scorer and image limits reach the rollout
workers unchanged.

``python -m agents.verl.settings`` regenerates ``recipes/config/agent_loop.yaml`` (the
defaults, for runs launched with verl's own entry point).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from envs.settings import EnvSettings, ImageSettings, ScorerSettings, settings_from_dict, settings_to_dict

AGENT_NAME = "region_rerank"
"""``agent_name`` of the RegionRerank agent loop (the dataset rows' ``agent_name``)."""
METRIC_PREFIX = AGENT_NAME
"""Prefix of the per-step metrics the project adds to verl's (:func:`agents.verl.plugin.rollout_metrics`)."""
LOOP_TARGET = "agents.verl.agent_loop.RegionRerankAgentLoop"
"""Import path of the agent loop class (verl's ``_target_``)."""


@dataclass(frozen=True)
class ScoringServiceSettings:
    """The scorer service of verl rollouts (``--scoring.*`` of ``train_rgrpo.py verl``)."""

    enabled: bool = True
    """score through one batched service; off: every episode scores in-process behind a lock"""
    max_batch: int = 256
    """most images per service batch (a request larger than this is a batch of its own)"""
    max_wait_ms: float = 20.0
    """longest a request waits for others to join its batch"""
    timeout_s: float = 300.0
    """longest a request may take (queue, forward, transfer) before its episode fails"""
    num_gpus: float | None = None
    """GPU share of the service actor; ``None``: 0.1 when the Ray cluster has real GPUs, else CPU"""
    forward_rows: int | None = None
    """rows of each fixed-shape scorer forward; ``None``: the scorer's own ``batch_size`` (results
    then equal the in-process env's bitwise; another value changes them by float rounding)"""
    cached_queries: int = 4096
    """queries whose FULL and candidate embeddings the service keeps (least recently used dropped)"""
    max_failed_fraction: float = 0.1
    """a training step in which more of the episodes failed scoring stops the run (failed
    episodes are masked out of the loss and, with rgrpo, out of their group's baseline)"""

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError(f"scoring.max_batch must be >= 1, got {self.max_batch}")
        if self.max_wait_ms < 0:
            raise ValueError(f"scoring.max_wait_ms must be >= 0, got {self.max_wait_ms}")
        if self.timeout_s <= 0:
            raise ValueError(f"scoring.timeout_s must be > 0, got {self.timeout_s}")
        if self.num_gpus is not None and not 0 <= self.num_gpus <= 1:
            raise ValueError(f"scoring.num_gpus must be in [0, 1] or None, got {self.num_gpus}")
        if self.forward_rows is not None and self.forward_rows < 1:
            raise ValueError(f"scoring.forward_rows must be >= 1 or None, got {self.forward_rows}")
        if self.cached_queries < 1:
            raise ValueError(f"scoring.cached_queries must be >= 1, got {self.cached_queries}")
        if not 0 <= self.max_failed_fraction <= 1:
            raise ValueError(f"scoring.max_failed_fraction must be in [0, 1], got {self.max_failed_fraction}")


@dataclass(frozen=True)
class LoopSettings:
    """The scorer, the env and the image limits of a verl rollout, and how groups are balanced."""

    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    """the frozen re-ranker (its device is the rollout worker's: the GPUs belong to vLLM / FSDP)"""
    env: EnvSettings = field(default_factory=EnvSettings)
    """the episode: steps, reward and how it is paid, information gap"""
    images: ImageSettings = field(default_factory=ImageSettings)
    """pixel limits of every image shown to the policy"""
    balance_groups: bool = True
    """make every sampled group of ``n >= 2`` rollouts hold both decisions (r-GRPO)"""
    balance_budget: int = 4
    """extra on-policy draws for a missing decision before it is forced"""
    group_timeout_s: float = 600.0
    """longest wait for the rest of a group before going on unbalanced"""
    scoring: ScoringServiceSettings = field(default_factory=ScoringServiceSettings)
    """the batched scorer service shared by all rollouts of the run (agents/verl/scoring.py)"""
    seed: int | None = None
    """seed of the rollout sampling: each generation request carries a seed hashed from it, the
    step, the query, the group member and the draw (vLLM's per-request ``seed``), so a run can be
    repeated; ``None``: the server's own unseeded draws"""

    def __post_init__(self) -> None:
        if self.balance_budget < 0:
            raise ValueError(f"balance_budget must be >= 0, got {self.balance_budget}")
        if self.group_timeout_s <= 0:
            raise ValueError(f"group_timeout_s must be > 0, got {self.group_timeout_s}")

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "LoopSettings":
        """Settings from the config entry's values (``DictConfig`` or plain)."""
        values = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v for k, v in kwargs.items()}
        return settings_from_dict(cls, values, f"{AGENT_NAME} agent-loop settings")


def agent_loop_config(settings: LoopSettings | None = None) -> list[dict[str, Any]]:
    """The content of verl's ``agent_loop_config_path`` file that registers the loop with ``settings``."""
    entry: dict[str, Any] = {"name": AGENT_NAME, "_target_": LOOP_TARGET}
    entry.update(settings_to_dict(settings or LoopSettings()))
    return [entry]


def loop_settings_from_file(path: str | None) -> LoopSettings:
    """The :class:`LoopSettings` of the ``region_rerank`` entry in an agent-loop config file
    (the defaults when there is no file or no such entry, as verl then uses none)."""
    import yaml

    if not path:
        return LoopSettings()
    with open(path, encoding="utf-8") as handle:
        entries = yaml.safe_load(handle) or []
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == AGENT_NAME:
            return LoopSettings.from_kwargs(**{k: v for k, v in entry.items() if k not in ("name", "_target_")})
    return LoopSettings()


SHIPPED_CONFIG_HEADER = """\
# Registers the RegionRerank agent loop (agents/verl/agent_loop.py) with verl, for runs launched
# with verl's own entry point instead of recipes/train_rgrpo.py (which writes this file per
# run from its flags):
#
#   python -m verl.trainer.main_ppo ... \\
#       actor_rollout_ref.rollout.agent.agent_loop_config_path=recipes/config/agent_loop.yaml \\
#       actor_rollout_ref.rollout.agent.default_agent_loop=region_rerank
#
# Every key after _target_ is a LoopSettings field (agents/verl/settings.py; the defaults are
# shown); scorer.model: null is the embedded rr-tiny scorer. Generated by
# `python -m agents.verl.settings`; do not edit.
"""


if __name__ == "__main__":
    import yaml

    print(SHIPPED_CONFIG_HEADER + yaml.safe_dump(agent_loop_config(), sort_keys=False), end="")
