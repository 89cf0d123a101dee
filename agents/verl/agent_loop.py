"""The verl agent loop that plays RegionRerank episodes with the policy being trained.

verl's rollout workers call :meth:`RegionRerankAgentLoop.run` once per sample (per
rollout of a query). One run is one episode of :class:`envs.region_rerank.RegionRerankEnv`:

1. the row's ``extra_info`` names the query (``query_id``) and its query-pool file
   (``pool_file``, written by ``recipes/prepare_verl_data.py``); the env is reset on it;
2. the prompt is built with :func:`agents.prompts.build_messages` around the view the
   policy sees (``info["policy_image"]``), resized by qwen-vl-utils with this loop's
   ``min_pixels`` / ``max_pixels`` and tokenized through verl's Continuous Token builder
   (processor chat template, expanded image placeholders). The row's own ``prompt`` is
   not used: rebuilding it around the env's view keeps the image the model sees and the
   parser's frame the same (also under ``policy_max_side``);
3. the policy generates through ``self.server_manager`` (vLLM / SGLang in training);
   the text is parsed by :class:`envs.wrappers.TextAction` in the ``"resized"`` frame,
   i.e. pixels of the image the model saw; the env steps and pays the reward from
   :mod:`rewards`;
4. with ``max_steps > 1`` a REGION step appends the cropped view as the next user turn
   (images stay in message order; those tokens get ``response_mask`` 0, only model
   tokens get 1) until FULL / stop, an invalid or malformed answer, or ``max_steps``.

The run returns ``reward_score`` (the episode's summed reward, so verl's reward manager
is bypassed), ``multi_modal_data`` (every view shown, in order) and ``extra_fields``:
``decision`` (the first decision: 0 FULL, 1 REGION, -1 malformed; the key
:data:`agents.verl_plugin.DECISION_KEY` that the ``rgrpo`` estimator reads),
``baseline_rank``, ``final_rank``, ``outcome``, ``reward_terms``, ``steps``,
``balance_path`` (how the sample's group was balanced: ``off``, ``balanced``,
``resampled``, ``forced``, ``few_valid``, ``timeout`` or ``failed``) and
``reward_extra_info`` (numeric per-sample values verl aggregates in its validation
metrics).

Decision-balanced groups (r-GRPO, docs/DESIGN.md): when training samples a group of ``n >= 2``
rollouts of a query (same ``uid``) and every valid first answer took the same decision,
the group's last valid member redraws its first answer on-policy until the missing
decision appears (at most ``balance_budget`` draws, decided by
:func:`agents.rgrpo.balance_group`), and only then forces it: FULL as forced text,
REGION as a forced ``image_zoom_in_tool`` prefix that the policy completes with its own
box; forced tokens get ``response_mask`` 0. Malformed answers are neither decision: a
group is balanced over its parsed answers. Balancing needs the rollouts of a group in
one worker (verl's v1 worker runs a prompt's ``n`` sessions together) and sampling
(``temperature > 0``), so greedy validation is never balanced.

verl instantiates the loop once per sample with the keyword arguments of its entry in
``actor_rollout_ref.rollout.agent.agent_loop_config_path`` (see
:func:`agent_loop_config`); the scorer and the query pools are loaded once per worker
process and shared.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping
from uuid import uuid4

import numpy as np
from omegaconf import DictConfig, OmegaConf

from agents.prompts import REGION_ANSWER_PREFIX, build_messages, followup_message
from agents.qwen_policy import DEFAULT_MAX_PIXELS, check_pixel_limits
from agents.rgrpo import balance_group
from agents.verl_config import AGENT_NAME
from envs.actions import FULL, MALFORMED, REGION, read_decision
from envs.boxes import QWEN_MIN_PIXELS
from envs.data import QueryPool, load_query_pools
from envs.region_rerank import RegionRerankEnv
from envs.scorer import Scorer, make_scorer
from envs.text_actions import FULL_MARKER
from envs.wrappers import TextAction
from rewards import RewardConfig
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput
from verl.utils.profiler import simple_timer

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

FORCED_REGION_PREFIX = REGION_ANSWER_PREFIX
"""Text that forces a REGION answer; the policy completes the box."""
FORCED_FULL_TEXT = FULL_MARKER
"""Text that forces a FULL answer."""


@dataclass(frozen=True)
class LoopSettings:
    """What an episode needs besides the row: the scorer, the env and the image limits.

    These are the keyword arguments of the loop's entry in verl's agent-loop config file.
    """

    scorer_model: str | None = None
    """open_clip model name of the frozen re-ranker; ``None``: the embedded default scorer."""
    scorer_pretrained: str | None = None
    """Zoo tag or local checkpoint file for ``scorer_model``."""
    scorer_device: str = "cpu"
    """Device of the scorer inside the rollout worker (the GPUs belong to vLLM / FSDP)."""
    candidate_features: str = "auto"
    """How candidates become vectors (see :class:`envs.scorer.OpenClipScorer`)."""
    scorer_cache_dir: str | None = None
    """On-disk candidate-embedding cache shared by workers; ``None``: memory only."""
    max_steps: int = 1
    """REGION steps per episode (1 is the paper's setting; more is multi-step zoom)."""
    reward_mode: str = "terminal"
    """How zoom steps are paid (``"terminal"`` or ``"incremental"``, see the env)."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward weights and penalties."""
    policy_max_side: int | None = None
    """Information gap: longest side of the view shown to the policy; ``None``: full resolution."""
    min_box_side: float = 4.0
    """Smallest valid crop side in original pixels."""
    min_pixels: int = QWEN_MIN_PIXELS
    """Least pixels of an image shown to the policy (qwen-vl-utils resize)."""
    max_pixels: int = DEFAULT_MAX_PIXELS
    """Most pixels of an image shown to the policy; bounds its tokens to ``max_pixels / 784``."""
    balance_groups: bool = True
    """Make every sampled group of ``n >= 2`` rollouts hold both decisions (r-GRPO)."""
    balance_budget: int = 4
    """Extra on-policy draws for a missing decision before it is forced."""
    group_timeout_s: float = 600.0
    """Longest wait for the rest of a group before going on unbalanced."""

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "LoopSettings":
        """Settings from config values (``DictConfig`` or plain); ``reward`` may be a mapping."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(kwargs) - names)
        if unknown:
            raise ValueError(f"unknown {AGENT_NAME} agent-loop settings {unknown}; known: {sorted(names)}")
        values = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v for k, v in kwargs.items()}
        reward = values.get("reward")
        if isinstance(reward, Mapping):
            values["reward"] = RewardConfig(**reward)
        settings = cls(**values)
        if settings.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {settings.max_steps}")
        if settings.balance_budget < 0:
            raise ValueError(f"balance_budget must be >= 0, got {settings.balance_budget}")
        return settings


def agent_loop_config(**settings: Any) -> list[dict[str, Any]]:
    """The content of verl's ``agent_loop_config_path`` file that registers this loop
    with ``settings`` (keyword arguments of :class:`LoopSettings`)."""
    checked = LoopSettings.from_kwargs(**settings)
    entry = {"name": AGENT_NAME, "_target_": f"agents.agent_loop.{RegionRerankAgentLoop.__qualname__}"}
    entry.update(asdict(checked))
    return [entry]


# --------------------------------------------------------------------------- per-process state
# verl builds a new loop object per sample; the scorer and pools must outlive it.
_POOLS: dict[str, dict[str, QueryPool]] = {}
_SCORERS: dict[tuple, Scorer] = {}
_STATE_LOCK = threading.Lock()
# Env steps run in worker threads; one at a time keeps the scorer's caches consistent.
_ENV_LOCK = threading.Lock()


def query_pool(pool_file: str | os.PathLike, query_id: str) -> QueryPool:
    """The pool of ``query_id`` in ``pool_file``; each file is loaded once per process."""
    key = os.path.abspath(pool_file)
    with _STATE_LOCK:
        if key not in _POOLS:
            _POOLS[key] = {pool.query_id: pool for pool in load_query_pools(key, purpose="eval")}
        pools = _POOLS[key]
    if query_id not in pools:
        raise KeyError(f"{key}: no query with query_id {query_id!r}")
    return pools[query_id]


def shared_scorer(settings: LoopSettings) -> Scorer:
    """The scorer ``settings`` name, built once per process."""
    key = (settings.scorer_model, settings.scorer_pretrained, settings.scorer_device,
           settings.candidate_features, settings.scorer_cache_dir)
    with _STATE_LOCK:
        if key not in _SCORERS:
            # Every option reaches the default scorer too (model None), not only named models.
            _SCORERS[key] = make_scorer(
                settings.scorer_model,
                settings.scorer_pretrained,
                device=settings.scorer_device,
                candidate_features=settings.candidate_features,
                cache_dir=settings.scorer_cache_dir,
            )
        return _SCORERS[key]


def _locked_call(fn, *args, **kwargs):
    with _ENV_LOCK:
        return fn(*args, **kwargs)


# --------------------------------------------------------------------------- decision groups
@dataclass
class _Group:
    """The rollouts of one query in this process, for decision balancing."""

    members: list[int] = field(default_factory=list)
    left: set[int] = field(default_factory=set)
    decisions: dict[int, int | None] = field(default_factory=dict)
    reported: asyncio.Event = field(default_factory=asyncio.Event)
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    swap_out: int | None = None
    missing: int | None = None
    path: str = "balanced"

    def report(self, ticket: int, decision: int | None) -> None:
        """Record a member's first decision (``None``: it dropped out); plan when all are in."""
        if ticket in self.decisions:
            return
        self.decisions[ticket] = decision
        if len(self.decisions) < len(self.members):
            return
        valid = [t for t in self.members if self.decisions[t] in (FULL, REGION)]
        present = {self.decisions[t] for t in valid}
        if len(valid) >= 2 and len(present) == 1:
            self.swap_out = valid[-1]
            self.missing = REGION if present == {FULL} else FULL
        else:
            # Balancing works on parsed answers; malformed ones are neither decision.
            self.settle("balanced" if len(present) == 2 or len(self.members) < 2 else "few_valid")
        self.reported.set()

    def settle(self, path: str) -> None:
        """Publish how the group ended up: balanced, resampled, forced, few_valid or failed."""
        self.path = path
        self.settled.set()


class DecisionGroups:
    """Rollouts of the same ``uid`` in this process, so a group can be balanced."""

    def __init__(self) -> None:
        self._groups: dict[str, _Group] = {}
        self._next_ticket = 0

    def join(self, uid: str) -> tuple[_Group, int]:
        """Enter the group of ``uid``. Called before the first ``await`` of a run, so all
        rollouts of a query that verl created in one batch have joined before any reports."""
        group = self._groups.setdefault(uid, _Group())
        self._next_ticket += 1
        group.members.append(self._next_ticket)
        return group, self._next_ticket

    def leave(self, uid: str, group: _Group, ticket: int) -> None:
        """Leave the group at the end of a run (or on an error, which then counts as no decision)."""
        group.report(ticket, None)
        if ticket == group.swap_out and not group.settled.is_set():
            group.settle("failed")
        group.left.add(ticket)
        if len(group.left) == len(group.members) and self._groups.get(uid) is group:
            del self._groups[uid]


_DECISION_GROUPS = DecisionGroups()


# --------------------------------------------------------------------------- episode state
@dataclass
class _Turn:
    """One model answer: forced prefix tokens (mask 0) then generated tokens (mask 1)."""

    token_ids: list[int]
    log_probs: list[float] | None
    text: str
    action: Any
    decision: int
    forced_ids: list[int] = field(default_factory=list)


@dataclass
class _Episode:
    env: RegionRerankEnv
    text_env: TextAction
    info: dict
    messages: list[dict]
    images: list
    runtime_ids: list[int]
    response_mask: list[int] = field(default_factory=list)
    response_logprobs: list[float] | None = None
    server_extra: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    reward: float = 0.0
    decisions: list[int] = field(default_factory=list)
    outcome: str = ""
    assistant_turns: int = 0
    user_turns: int = 0
    truncated: bool = False


def _decision_of(action: Any) -> int:
    decision = read_decision(action["decision"]) if isinstance(action, Mapping) else None
    return MALFORMED if decision is None else decision


def _plain(value: Any) -> Any:
    """Dataset values arrive as numpy 0-d objects or DictConfigs; make them plain."""
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, DictConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


class RegionRerankAgentLoop(AgentLoopBase):
    """verl agent loop: one RegionRerank episode per sample (see the module docstring).

    Keyword arguments other than verl's are :class:`LoopSettings` fields. verl finds the
    loop through the ``agent_loop_config_path`` file (:func:`agent_loop_config`), never
    through verl's ``@register`` decorator: the decorator's entry has no settings, and
    since verl imports this module lazily, at the first episode, it would replace the
    file's entry for every later episode, which would then silently run with default
    settings (the default image size among them).
    """

    def __init__(self, *args, tools: Any = None, name: str | None = None, **kwargs):
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k in LoopSettings.__dataclass_fields__}
        super().__init__(*args, **kwargs)
        self.settings = LoopSettings.from_kwargs(**settings)
        self.response_length = self.rollout_config.response_length
        check_pixel_limits(self.processor, self.settings.min_pixels, self.settings.max_pixels)

    # ------------------------------------------------------------------ helpers
    async def _env_call(self, episode_metrics: dict, fn, *args, **kwargs):
        with simple_timer("tool_calls", episode_metrics):
            return await self.loop.run_in_executor(None, functools.partial(_locked_call, fn, *args, **kwargs))

    async def _shown_image(self, message: dict) -> Any:
        """The image of ``message`` as the model sees it (qwen-vl-utils resize)."""
        images = (await self.process_multi_modal_info([message]))["images"]
        return images[0]

    async def _generate(
        self, ep: _Episode, sampling_params: dict, request_id: str, prefix: list[int]
    ) -> tuple[list[int], list[float] | None]:
        """Tokens the policy writes after the runtime prompt (and a forced ``prefix``)."""
        params = dict(sampling_params)
        budget = self.response_length - len(ep.response_mask) - len(prefix)
        # At least one token, so a forced prefix at the very end of the budget still completes.
        params["max_tokens"] = max(1, min(int(params.get("max_tokens", budget)), budget))
        with simple_timer("generate_sequences", ep.metrics):
            output = await self.server_manager.generate(
                request_id=request_id,
                prompt_ids=ep.runtime_ids + prefix,
                sampling_params=params,
                image_data=ep.images,
                mm_processor_kwargs=self._get_mm_processor_kwargs(None),
            )
        if ep.metrics.get("num_preempted") is None:
            ep.metrics["num_preempted"] = output.num_preempted if output.num_preempted is not None else -1
        if not ep.server_extra:
            ep.server_extra.update(output.extra_fields)
        elif output.extra_fields.get("max_global_steps") is not None:
            ep.server_extra["max_global_steps"] = output.extra_fields["max_global_steps"]
        return list(output.token_ids), output.log_probs or None

    async def _answer(self, ep: _Episode, sampling_params: dict, request_id: str, forced: str = "") -> _Turn:
        """One answer of the policy, parsed but not yet committed to the episode. ``forced``
        is :data:`FORCED_FULL_TEXT` (the whole answer is forced) or a prefix the policy
        completes (:data:`FORCED_REGION_PREFIX`)."""
        if forced == FORCED_FULL_TEXT:
            forced_ids = self.tokenizer.encode(forced, add_special_tokens=False) + [self.tokenizer.eos_token_id]
            token_ids, log_probs = [], None
        else:
            forced_ids = self.tokenizer.encode(forced, add_special_tokens=False) if forced else []
            token_ids, log_probs = await self._generate(ep, sampling_params, request_id, forced_ids)
        text = forced + self.tokenizer.decode(token_ids, skip_special_tokens=True)
        action = ep.text_env.action(text)
        return _Turn(token_ids, log_probs, text, action, _decision_of(action), forced_ids)

    async def _commit(self, ep: _Episode, turn: _Turn) -> None:
        """Append a turn's tokens: forced ones with mask 0, generated ones with mask 1."""
        if ep.response_logprobs is None and turn.log_probs:
            ep.response_logprobs = [0.0] * len(ep.response_mask)
        if turn.forced_ids:
            ep.runtime_ids = ep.runtime_ids + turn.forced_ids
            ep.response_mask = ep.response_mask + [0] * len(turn.forced_ids)
            if ep.response_logprobs is not None:
                ep.response_logprobs = ep.response_logprobs + [0.0] * len(turn.forced_ids)
        if turn.token_ids:
            log_probs = None
            if ep.response_logprobs is not None:
                log_probs = turn.log_probs or [0.0] * len(turn.token_ids)
            merge, ep.response_mask, ep.response_logprobs = await self.ct_merge_assistant_token(
                ep.runtime_ids, turn.token_ids, ep.response_mask, ep.response_logprobs, assistant_logprobs=log_probs
            )
            ep.runtime_ids = merge.token_ids
        ep.messages.append({"role": "assistant", "content": turn.text})
        ep.assistant_turns += 1

    async def _append_view(self, ep: _Episode, step: int) -> bool:
        """Show the new view as the next user turn; False if it does not fit the response budget."""
        message = followup_message(
            ep.info["policy_image"], step, self.settings.max_steps,
            min_pixels=self.settings.min_pixels, max_pixels=self.settings.max_pixels,
        )
        shown = await self._shown_image(message)
        # The conversation keeps the resized image, so every later render sees what the model saw.
        message["content"][0]["image"] = shown
        previous = list(ep.messages)
        merge, mask, logprobs = await self.ct_merge_context_msg(
            previous, previous + [message], ep.runtime_ids, ep.response_mask, ep.response_logprobs
        )
        if len(mask) >= self.response_length:
            return False
        ep.messages.append(message)
        ep.images.append(shown)
        ep.runtime_ids, ep.response_mask, ep.response_logprobs = merge.token_ids, mask, logprobs
        ep.user_turns += 1
        return True

    async def _step(self, ep: _Episode, action: Any) -> bool:
        """Step the env; returns whether the episode ended."""
        _, reward, terminated, truncated, info = await self._env_call(ep.metrics, ep.env.step, action)
        ep.reward += float(reward)
        ep.decisions.append(int(info["decision"]))
        ep.outcome = info["outcome"]
        ep.info = info
        return bool(terminated or truncated)

    async def _balanced_first_turn(
        self, ep: _Episode, turn: _Turn, group: _Group, ticket: int, sampling_params: dict, request_id: str
    ) -> tuple[_Turn, str, int]:
        """Report the first decision to the group; the member chosen to swap redraws (then
        forces) the missing decision. Returns the turn to keep, its path and extra draws."""
        group.report(ticket, turn.decision)
        try:
            await asyncio.wait_for(group.reported.wait(), self.settings.group_timeout_s)
        except asyncio.TimeoutError:
            logger.warning("%s: group did not complete in %.0f s; not balanced", AGENT_NAME, self.settings.group_timeout_s)
            return turn, "timeout", 0
        if group.swap_out != ticket:
            return turn, "member", 0

        missing = group.missing
        draws: list[_Turn] = []
        loop = asyncio.get_running_loop()

        def draw_extra() -> int:
            drawn = asyncio.run_coroutine_threadsafe(self._answer(ep, sampling_params, request_id), loop).result()
            draws.append(drawn)
            # A malformed redraw does not bring the missing decision either.
            return drawn.decision if drawn.decision in (FULL, REGION) else 1 - missing

        valid = [group.decisions[t] for t in group.members if group.decisions[t] in (FULL, REGION)]
        result = await loop.run_in_executor(None, balance_group, valid, draw_extra, self.settings.balance_budget)
        if result.path == "resampled":
            kept = draws[result.swap_in_draw]
        else:
            forced = FORCED_FULL_TEXT if missing == FULL else FORCED_REGION_PREFIX
            kept = await self._answer(ep, sampling_params, request_id, forced=forced)
        group.settle(result.path)
        return kept, result.path, result.draws

    # ------------------------------------------------------------------ the episode
    async def run(self, sampling_params: dict[str, Any], **kwargs) -> AgentLoopOutput:
        extra_info = _plain(kwargs.get("extra_info")) or {}
        for key in ("pool_file", "query_id"):
            if key not in extra_info:
                raise KeyError(
                    f"{AGENT_NAME}: the dataset row's extra_info has no {key!r} (got keys {sorted(extra_info)}); "
                    "write the data with recipes/prepare_verl_data.py"
                )
        uid = _plain(kwargs.get("uid"))
        balancing = (
            self.settings.balance_groups and uid is not None and float(sampling_params.get("temperature", 1.0)) > 0
        )
        # Join before the first await, so the whole group has joined before anyone reports.
        group, ticket = _DECISION_GROUPS.join(str(uid)) if balancing else (None, 0)
        try:
            return await self._run_episode(sampling_params, extra_info, group, ticket)
        finally:
            if group is not None:
                _DECISION_GROUPS.leave(str(uid), group, ticket)

    async def _run_episode(self, sampling_params: dict, extra_info: dict, group: _Group | None, ticket: int) -> AgentLoopOutput:
        s = self.settings
        metrics: dict[str, float] = {}
        pool = await self._env_call(metrics, query_pool, extra_info["pool_file"], str(extra_info["query_id"]))
        scorer = await self._env_call(metrics, shared_scorer, s)
        env = RegionRerankEnv(
            [pool], scorer, max_steps=s.max_steps, reward_config=s.reward, reward_mode=s.reward_mode,
            policy_max_side=s.policy_max_side, min_box_side=s.min_box_side,
        )
        _, info = await self._env_call(metrics, env.reset, options={"query_index": 0})
        messages = build_messages(info["question"], info["policy_image"], 0, s.max_steps, min_pixels=s.min_pixels, max_pixels=s.max_pixels)
        images = [await self._shown_image(messages[1])]
        self._assert_mm_supported(True)
        prompt_ids = await self.ct_build_initial_tokens(messages, images=images)
        ep = _Episode(
            env=env,
            text_env=TextAction(env, frame="resized", min_pixels=s.min_pixels, max_pixels=s.max_pixels),
            info=info, messages=messages, images=images, runtime_ids=list(prompt_ids), metrics=metrics,
        )
        request_id = uuid4().hex
        baseline_rank = int(info["baseline_rank"])

        turn = await self._answer(ep, sampling_params, request_id)
        path, extra_draws = "off", 0
        if group is not None:
            turn, path, extra_draws = await self._balanced_first_turn(ep, turn, group, ticket, sampling_params, request_id)
        while True:
            await self._commit(ep, turn)
            if await self._step(ep, turn.action):
                break
            # A REGION step that did not end the episode: show the crop and ask again.
            step = ep.env.steps_taken
            room = len(ep.response_mask) < self.response_length and await self._append_view(ep, step)
            if not room:
                ep.truncated = True
                await self._step(ep, {"decision": FULL, "box": np.zeros(4)})
                break
            turn = await self._answer(ep, sampling_params, request_id)

        if group is not None and path == "member":
            try:
                await asyncio.wait_for(group.settled.wait(), s.group_timeout_s)
                path = group.path
            except asyncio.TimeoutError:
                path = "timeout"
        return self._output(ep, baseline_rank, path, extra_draws, bool(sampling_params.get("logprobs")))

    def _output(
        self, ep: _Episode, baseline_rank: int, path: str, extra_draws: int, log_probs_asked: bool
    ) -> AgentLoopOutput:
        # An episode whose only answer was forced has no generated token and so no rollout
        # log-prob; verl drops the field for the whole batch when one sample lacks it, so
        # give zeros there (the tokens are masked out of every loss and metric).
        if ep.response_logprobs is None and log_probs_asked:
            ep.response_logprobs = [0.0] * len(ep.response_mask)
        n_response = len(ep.response_mask)
        response_ids = ep.runtime_ids[len(ep.runtime_ids) - n_response :]
        first = ep.decisions[0] if ep.decisions else MALFORMED
        final_rank = int(ep.info["rank"])
        terms = ep.info.get("reward_terms") or {}
        extra = dict(ep.server_extra)
        extra.update(
            {
                "decision": first,
                "decisions": list(ep.decisions),
                "baseline_rank": baseline_rank,
                "final_rank": final_rank,
                "outcome": ep.outcome,
                "reward_terms": {k: float(v) for k, v in terms.items()},
                "steps": int(ep.env.steps_taken),
                "truncated": ep.truncated,
                "balance_path": path,
                "query_id": ep.info["query_id"],
                "env_seconds": float(ep.metrics.get("tool_calls", 0.0)),
                # Names differ from the keys above: verl flattens both into one namespace.
                "reward_extra_info": {
                    "cropped": float(first == REGION),
                    "malformed": float(first == MALFORMED),
                    "rank_before": float(baseline_rank),
                    "rank_after": float(final_rank),
                    "rank_gain": float(baseline_rank - final_rank),
                    "zoom_steps": float(ep.env.steps_taken),
                    "balance_resampled": float(path == "resampled"),
                    "balance_forced": float(path == "forced"),
                    "balance_extra_draws": float(extra_draws),
                },
            }
        )
        length = self.response_length
        return AgentLoopOutput(
            prompt_ids=list(ep.runtime_ids[: len(ep.runtime_ids) - n_response]),
            response_ids=response_ids[:length],
            response_mask=ep.response_mask[:length],
            response_logprobs=ep.response_logprobs[:length] if ep.response_logprobs else None,
            multi_modal_data={"images": list(ep.images)},
            mm_processor_kwargs=self._get_mm_processor_kwargs(None),
            reward_score=float(ep.reward),
            num_turns=ep.user_turns + ep.assistant_turns + 1,
            metrics=ep.metrics,
            extra_fields=extra,
        )


SHIPPED_CONFIG_HEADER = """\
# Registers the RegionRerank agent loop (agents/agent_loop.py) with verl, for runs launched
# with verl's own entry point instead of recipes/train_rgrpo.py (which writes this file per
# run from its flags):
#
#   python -m verl.trainer.main_ppo ... \\
#       actor_rollout_ref.rollout.agent.agent_loop_config_path=recipes/config/agent_loop.yaml \\
#       actor_rollout_ref.rollout.agent.default_agent_loop=region_rerank
#
# Every key after _target_ is a LoopSettings field (the defaults are shown); scorer_model: null
# is the embedded rr-tiny scorer. Generated by `python -m agents.agent_loop`; do not edit.
"""


if __name__ == "__main__":
    import yaml

    print(SHIPPED_CONFIG_HEADER + yaml.safe_dump(agent_loop_config(), sort_keys=False), end="")

