"""verl plug-in: the r-GRPO advantage estimator ("rgrpo") and the path its decisions take.

verl imports this module on ``import verl`` (entry point ``verl.plugins`` ->
``region_rerank`` in pyproject.toml; in every Ray worker too). It registers
:func:`compute_rgrpo_advantage` under ``algorithm.adv_estimator=rgrpo`` and, where verl's
v1 trainer can run (the ``transfer_queue`` package is installed), the trainer modes
``rgrpo_sync``, ``rgrpo_colocate_async`` and ``rgrpo_separate_async``.

How per-sample decisions reach the estimator
--------------------------------------------
1. The agent loop sets ``AgentLoopOutput.extra_fields["decision"]`` (:data:`DECISION_KEY`)
   to the sample's first decision, an int: 0 FULL, 1 REGION; any other int (the agent
   loop uses -1 for a malformed answer) is one more class with its own mean in the
   baseline, see :func:`agents.rgrpo.decision_balanced_baseline`. verl stores
   ``extra_fields`` with the sample: the legacy trainer promotes each key to
   ``DataProto.non_tensor_batch["decision"]``; the v1 trainer keeps the dict in the
   TransferQueue field ``extra_fields``. Each row is one sample of its ``uid`` group, so
   the loop returns one ``AgentLoopOutput`` per rollout (a multi-step zoom episode is
   one multi-turn output, not one output per turn).
2. verl 0.9.1's dispatcher (``ray_trainer.compute_advantage``) hands a registered
   estimator only ``token_level_rewards``, ``response_mask``, ``config``, ``index`` (the
   ``uid`` array) and ``reward_baselines``; ``non_tensor_batch`` goes to ``gdpo`` alone,
   and the v1 trainer's ``_compute_advantage`` does not even fetch ``extra_fields``. So
   whoever calls ``compute_advantage`` hands the decisions over with
   :func:`decisions_in_scope`, a context manager holding ``(uids, decisions)`` for the
   duration of the call; the estimator checks that the scoped ``uids`` equal the
   ``index`` verl passes it, row for row, so decisions can never be applied to another
   batch or a reordered one.
3. For the v1 trainer that caller is :class:`DecisionHandoffMixin`: the registered
   ``rgrpo_<mode>`` trainers subclass verl's own trainer of that mode and override only
   ``_compute_advantage``, fetching ``uid`` and ``extra_fields`` from TransferQueue and
   wrapping verl's method in :func:`decisions_in_scope`. Select one with
   ``trainer.v1.trainer_mode=rgrpo_sync``.
   verl's legacy trainer (``trainer.use_v1=false``) calls ``compute_advantage`` inline
   in its ``fit`` loop, with no method to override around it: there ``rgrpo`` sees no
   decisions and computes GRPO (with a warning).
4. If verl forwards ``non_tensor_batch`` to the estimator (as it does for ``gdpo``, and
   as verl PR #7473 proposes for every estimator that accepts it), the estimator reads
   ``non_tensor_batch["decision"]`` directly and needs no scope.

Why this path: it forks nothing and patches nothing in verl. The only verl extension
points used are its estimator registry and its trainer registry (``register_trainer``),
and the override calls verl's own ``_compute_advantage`` unchanged. The alternatives
were worse: rewriting rewards cannot express the balanced baseline (it depends on the
whole group's decisions, which per-sample rewards do not see, and GRPO's mean
subtraction would undo any per-group shift); smuggling decisions through ``uid`` or
``reward_baselines`` would change what other estimators (``remax``) and verl's metrics
see; copying verl's trainer loop would fork it.

Without decisions (the stock trainer modes, or a batch without the field) the estimator
warns and computes verl's GRPO exactly, so the same config trains GRPO by accident only
loudly. ``norm_adv_by_std_in_grpo`` is read from the ``algorithm`` config, as verl's other
registered estimators do (the dispatcher passes its argument to the built-in ``grpo``
only).
"""

from __future__ import annotations

import importlib.util
import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Hashable, Iterator, Mapping, Sequence

import numpy as np
import torch

from agents.rgrpo import compute_rgrpo_outcome_advantage, validate_decisions
from agents.verl import quiet
from agents.verl.settings import METRIC_PREFIX, loop_settings_from_file
from envs.actions import FULL, REGION
from rewards.evaluation import RANK_BUCKETS
from verl.trainer.ppo import core_algos

quiet.install()  # verl loads this module in each of its processes: the one place all of them pass


def check_estimator(name: str, backend: str, unsupported: Mapping[str, str] | None = None) -> None:
    """Raise ``ValueError`` before training unless verl knows the advantage estimator
    ``name`` (its registry, ``rgrpo`` included, or a hard-wired ``AdvantageEstimator``) and
    ``backend`` can run it (``unsupported`` maps the names it cannot to the reason)."""
    if name in (unsupported or {}):
        raise ValueError(f"advantage estimator {name} is not supported by train_rgrpo.py {backend}: {unsupported[name]}")
    if name in {e.value for e in core_algos.AdvantageEstimator}:
        return
    try:
        core_algos.get_adv_estimator_fn(name)
    except ValueError:
        known = sorted({e.value for e in core_algos.AdvantageEstimator} | set(core_algos.ADV_ESTIMATOR_REGISTRY))
        usable = [k for k in known if k not in (unsupported or {})]
        raise ValueError(f"advantage estimator {name!r} is not a verl advantage estimator; "
                         f"train_rgrpo.py {backend} runs: {', '.join(usable)}") from None

ESTIMATOR_NAME = "rgrpo"
"""``algorithm.adv_estimator`` value that selects r-GRPO."""
DECISION_KEY = "decision"
"""``AgentLoopOutput.extra_fields`` / ``non_tensor_batch`` key of the per-sample decision."""
BASE_TRAINER_MODES = ("sync", "colocate_async", "separate_async")
"""verl v1 trainer modes that get an ``rgrpo_<mode>`` counterpart."""

FAILED_KEY = "scoring_failed"
"""``extra_fields`` key the agent loop sets (1) on an episode the scoring service failed."""

_scoped_decisions: ContextVar[tuple[np.ndarray, list[Any], list[bool] | None] | None] = ContextVar(
    "rgrpo_scoped_decisions", default=None
)


@contextmanager
def decisions_in_scope(
    uids: Sequence[Hashable], decisions: Sequence[Any], excluded: Sequence[bool] | None = None
) -> Iterator[None]:
    """Make ``decisions`` (row-aligned with ``uids``) visible to the rgrpo estimator.

    Wrap the call to verl's ``compute_advantage`` (or a trainer's ``_compute_advantage``)
    in it. ``uids`` must be the batch's ``uid`` column in the order verl will pass it as
    ``index``; the estimator raises if it differs. ``excluded`` flags rows to keep out of
    their group's statistics (episodes the scoring service failed).
    """
    if len(uids) != len(decisions):
        raise ValueError(f"decisions_in_scope: {len(uids)} uids but {len(decisions)} decisions")
    if excluded is not None and len(excluded) != len(uids):
        raise ValueError(f"decisions_in_scope: {len(uids)} uids but {len(excluded)} excluded flags")
    flags = None if excluded is None else [bool(flag) for flag in excluded]
    token = _scoped_decisions.set((np.asarray(uids, dtype=object), list(decisions), flags))
    try:
        yield
    finally:
        _scoped_decisions.reset(token)


def checked_decisions(decisions: Sequence[Any]) -> list[int]:
    """Decisions as ints; raises ``ValueError`` naming the row without one."""
    try:
        return validate_decisions(decisions, name=DECISION_KEY)
    except ValueError as error:
        raise ValueError(
            f"rgrpo: {error}; the agent loop must set AgentLoopOutput.extra_fields[{DECISION_KEY!r}] "
            "to an int decision (0 FULL, 1 REGION, or another label such as -1 malformed) for every sample"
        ) from error


def decisions_for_batch(
    index: Sequence[Hashable], non_tensor_batch: Mapping[str, Any] | None = None
) -> list[int] | None:
    """The per-sample decisions for the batch whose group ids are ``index``, or ``None``.

    Read from ``non_tensor_batch[DECISION_KEY]`` when verl forwards it, else from the
    active :func:`decisions_in_scope`, whose uids must match ``index`` row for row.
    """
    if non_tensor_batch is not None and DECISION_KEY in non_tensor_batch:
        return checked_decisions(non_tensor_batch[DECISION_KEY])
    scoped = _scoped_batch(index)
    return None if scoped is None else checked_decisions(scoped[1])


def excluded_for_batch(
    index: Sequence[Hashable], non_tensor_batch: Mapping[str, Any] | None = None
) -> list[bool] | None:
    """Which rows of the batch to keep out of their group's statistics (failed episodes),
    from ``non_tensor_batch[FAILED_KEY]`` when verl forwards it, else from the scope."""
    if non_tensor_batch is not None and FAILED_KEY in non_tensor_batch:
        return [bool(flag) for flag in non_tensor_batch[FAILED_KEY]]
    scoped = _scoped_batch(index)
    return None if scoped is None else scoped[2]


def _scoped_batch(index: Sequence[Hashable]):
    """The active scope, checked to belong to the batch whose group ids are ``index``."""
    scoped = _scoped_decisions.get()
    if scoped is None:
        return None
    uids = scoped[0]
    if len(uids) != len(index) or not all(a == b for a, b in zip(uids, index)):
        raise ValueError(
            f"rgrpo: the decisions in scope belong to another batch: {len(uids)} scoped uids vs "
            f"{len(index)} in index, or a different row order"
        )
    return scoped


def compute_rgrpo_advantage(
    token_level_rewards: torch.Tensor,
    response_mask: torch.Tensor,
    config: Any = None,
    index: np.ndarray | None = None,
    non_tensor_batch: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """verl estimator ``rgrpo``: :func:`agents.rgrpo.compute_rgrpo_outcome_advantage`
    with the decisions found by :func:`decisions_for_batch`.

    Other keyword arguments verl may pass (``reward_baselines``, ``batch``) are ignored.
    """
    if index is None:
        raise ValueError("rgrpo needs index (the batch's uid array) to form groups")
    decisions = decisions_for_batch(index, non_tensor_batch)
    if decisions is None:
        warnings.warn(
            f"rgrpo got no per-sample decisions (no non_tensor_batch[{DECISION_KEY!r}] and no "
            "decisions_in_scope): computing plain GRPO advantages. Use trainer.v1.trainer_mode=rgrpo_sync.",
            RuntimeWarning,
            stacklevel=2,
        )
    norm = config.get("norm_adv_by_std_in_grpo", True) if config is not None else True
    return compute_rgrpo_outcome_advantage(
        token_level_rewards, response_mask, index, decisions, norm_adv_by_std_in_grpo=norm,
        excluded=excluded_for_batch(index, non_tensor_batch),
    )


def is_ours(obj: Any, reference: Any) -> bool:
    """Whether ``obj`` is ``reference`` from this module or from an earlier import of it."""
    return getattr(obj, "__module__", None) == __name__ and getattr(obj, "__qualname__", None) == getattr(
        reference, "__qualname__", None
    )


def register_rgrpo_estimator() -> None:
    """Register :func:`compute_rgrpo_advantage` as ``rgrpo``; a no-op when an import of
    this module already did (verl raises on a second, different function object)."""
    if not is_ours(core_algos.ADV_ESTIMATOR_REGISTRY.get(ESTIMATOR_NAME), compute_rgrpo_advantage):
        core_algos.register_adv_est(ESTIMATOR_NAME)(compute_rgrpo_advantage)


class DecisionHandoffMixin:
    """Mixin for a verl v1 ``PPOTrainer``: hands the samples' decisions to ``rgrpo``.

    It overrides only ``_compute_advantage``: it reads ``uid`` and ``extra_fields`` of the
    batch from TransferQueue, adds the rollout metrics, stops the run when more episodes
    failed scoring than ``scoring.max_failed_fraction`` allows, and, when
    ``algorithm.adv_estimator`` is ``rgrpo``, runs verl's own ``_compute_advantage`` inside
    :func:`decisions_in_scope` (failed episodes excluded from their groups).
    """

    @property
    def trainer_mode(self) -> str:
        """verl's mode this trainer runs in: ``rgrpo_sync`` is ``sync``. verl's base trainer
        branches on ``trainer_mode == "sync"`` (replay buffer, refill, checkpointed queue
        state), so the registered name must read as its base mode there."""
        return self._base_trainer_mode

    @trainer_mode.setter
    def trainer_mode(self, name: str) -> None:
        self._base_trainer_mode = name.removeprefix(f"{ESTIMATOR_NAME}_")

    def _compute_advantage(self, batch: Any, metrics: dict) -> Any:
        import transfer_queue as tq

        fields = tq.kv_batch_get(
            keys=batch.keys, partition_id=batch.partition_id, select_fields=["uid", "extra_fields"]
        )
        uids = fields.get("uid").tolist()
        extras = [extra if isinstance(extra, dict) else {} for extra in fields.get("extra_fields").tolist()]
        decisions = [extra.get(DECISION_KEY) for extra in extras]
        failed = [bool(extra.get(FAILED_KEY)) for extra in extras]
        metrics.update(rollout_metrics(extras))
        check_failures(extras, self._max_failed_fraction())
        if self.config.algorithm.adv_estimator != ESTIMATOR_NAME:
            return super()._compute_advantage(batch, metrics)
        metrics[f"{METRIC_PREFIX}/decisions_reached_rgrpo"] = float(decisions_complete(decisions))
        with decisions_in_scope(uids, decisions, excluded=failed):
            return super()._compute_advantage(batch, metrics)

    def _max_failed_fraction(self) -> float:
        """``scoring.max_failed_fraction`` of the run's agent-loop settings file."""
        if not hasattr(self, "_failed_fraction"):
            path = self.config.actor_rollout_ref.rollout.agent.get("agent_loop_config_path")
            self._failed_fraction = loop_settings_from_file(path).scoring.max_failed_fraction
        return self._failed_fraction


class ScoringFailures(RuntimeError):
    """Too many episodes of a training step failed scoring: the run stops."""


def check_failures(extras: Sequence[Mapping[str, Any]], max_fraction: float) -> None:
    """Raise :class:`ScoringFailures` when more than ``max_fraction`` of a step's episodes
    failed scoring, naming how many and the first errors (each names its query)."""
    errors = [str(extra.get("scoring_error", "")) for extra in extras if extra.get(FAILED_KEY)]
    if extras and len(errors) > max_fraction * len(extras):
        shown = "; ".join(errors[:3]) + (f"; ... ({len(errors) - 3} more)" if len(errors) > 3 else "")
        raise ScoringFailures(
            f"{len(errors)} of {len(extras)} episodes of this step failed scoring "
            f"(more than scoring.max_failed_fraction = {max_fraction:g}): {shown}"
        )


def decisions_complete(decisions: Sequence[Any]) -> bool:
    """Whether every row has a decision the estimator accepts (see :func:`checked_decisions`)."""
    try:
        return bool(decisions) and len(validate_decisions(decisions)) == len(decisions)
    except ValueError:
        return False


def rollout_metrics(extras: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Per-step figures over a batch's samples, from the agent loop's ``extra_fields``: the
    rates of valid (parsed) answers, of crops (overall and by the FULL rank of the
    positive, ``crop_rate[1]`` ... ``crop_rate[11-K]``) and of each balancing path, the seconds
    spent in the env (reset, crop, scoring), and how many episodes the scoring service
    failed (``scoring_failed``, a count) and how many service requests a rollout made."""
    if not extras:
        return {}
    n = len(extras)
    decisions = [extra.get(DECISION_KEY) for extra in extras]
    paths = [extra.get("balance_path") for extra in extras]
    rates = {
        "valid_answer_rate": sum(d in (FULL, REGION) for d in decisions) / n,
        "crop_rate": sum(d == REGION for d in decisions) / n,
    }
    # The crop rate by the FULL rank of the positive: does the policy crop less where FULL works?
    for name, _, _ in RANK_BUCKETS:
        held = [d for d, extra in zip(decisions, extras) if extra.get("rank_bucket") == name]
        if held:
            rates[f"crop_rate[{name}]"] = sum(d == REGION for d in held) / len(held)
    for path in ("balanced", "resampled", "forced", "few_valid", "off"):
        rates[f"balance/{path}"] = sum(p == path for p in paths) / n
    # Summed over episodes (waits for the env lock or the scoring service's batch included),
    # so it can exceed the step; env_seconds_max is the slowest episode's share.
    seconds = [float(extra.get("env_seconds", 0.0) or 0.0) for extra in extras]
    rates["env_seconds"] = sum(seconds)
    rates["env_seconds_max"] = max(seconds)
    # Episodes the scoring service failed (dead, timed out, bad request): a count, not a rate.
    rates["scoring_failed"] = sum(int(extra.get(FAILED_KEY, 0) or 0) for extra in extras)
    rates["scoring_requests_per_rollout"] = sum(int(extra.get("scoring_requests", 0) or 0) for extra in extras) / n
    return {f"{METRIC_PREFIX}/{name}": float(value) for name, value in rates.items()}


def register_rgrpo_trainers() -> None:
    """Register ``rgrpo_<mode>`` for each of verl's v1 trainer modes (needs ``transfer_queue``)."""
    from verl.trainer.ppo.v1 import get_trainer_cls, register_trainer
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY

    for mode in BASE_TRAINER_MODES:
        base = get_trainer_cls(mode)
        name = f"{ESTIMATOR_NAME}_{mode}"
        trainer_cls = type(
            f"RGRPO{base.__name__}",
            (DecisionHandoffMixin, base),
            {"__module__": __name__, "__doc__": f"verl's {mode!r} v1 trainer with the r-GRPO decision hand-off."},
        )
        existing = TRAINER_REGISTRY.get(name)
        if existing is None or not is_ours(existing, trainer_cls):
            register_trainer(name)(trainer_cls)


register_rgrpo_estimator()
if importlib.util.find_spec("transfer_queue") is not None:
    register_rgrpo_trainers()
