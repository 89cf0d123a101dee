"""The verl agent loop that plays RegionRerank episodes with the policy being trained.

verl's rollout workers call :meth:`RegionRerankAgentLoop.run` once per sample (per
rollout of a query). One run is one episode of :class:`envs.region_rerank.RegionRerankEnv`:

1. the row's ``extra_info`` names the query (``query_id``) and its query-pool file
   (``pool_file``, written by ``recipes/prepare_verl_data.py``); the env is reset on it;
2. the prompt is built with :func:`agents.qwen.prompts.build_messages` around the view the
   policy sees (``info["policy_image"]``), resized by qwen-vl-utils with this loop's
   ``min_pixels`` / ``max_pixels`` and tokenized through verl's Continuous Token builder
   (processor chat template, expanded image placeholders). The row's own ``prompt`` is
   not used: rebuilding it around the env's view keeps the image the model sees and the
   parser's frame the same (also under ``policy_max_side``);
3. the policy generates through ``self.server_manager`` (vLLM / SGLang in training);
   the text is parsed by :func:`envs.text_actions.text_to_action` in the model family's frame
   (:mod:`agents.qwen.family`: pixels of the image the model saw for Qwen2.5-VL, 0-1000
   of it for Qwen3-VL); the env steps and pays the reward from
   :mod:`rewards`;
4. with ``max_steps > 1`` a REGION step appends the cropped view as the next user turn
   (images stay in message order; those tokens get ``response_mask`` 0, only model
   tokens get 1) until FULL / stop, an invalid or malformed answer, or ``max_steps``.

The run returns ``reward_score`` (the episode's summed reward, so verl's reward manager
is bypassed), ``multi_modal_data`` (every view shown, in order) and ``extra_fields``:
``decision`` (the first decision: 0 FULL, 1 REGION, -1 malformed; the key
:data:`agents.verl.plugin.DECISION_KEY` that the ``rgrpo`` estimator reads),
``baseline_rank``, ``final_rank``, ``outcome``, ``reward_terms``, ``steps``,
``balance_path`` (how the sample's group was balanced: ``off``, ``balanced``,
``resampled``, ``forced``, ``few_valid``, ``timeout`` or ``failed``) and
``reward_extra_info`` (numeric per-sample values verl aggregates in its validation
metrics).

Decision-balanced groups (r-GRPO, docs/DESIGN.md): when training samples a group of ``n >= 2``
rollouts of a query (same ``uid``) and every valid first answer took the same decision,
the group's last valid member redraws its first answer on-policy until the missing
decision appears (at most ``balance_budget`` draws, decided by
the plan of :func:`agents.rgrpo.plan_balance`, shared with the CPU trainer and
awaited here without leaving the event loop), and only then forces it: FULL as forced text,
REGION as a forced ``image_zoom_in_tool`` prefix that the policy completes with its own
box; forced tokens get ``response_mask`` 0. Malformed answers are neither decision: a
group is balanced over its parsed answers. Balancing needs the rollouts of a group in
one worker (verl's v1 worker runs a prompt's ``n`` sessions together) and sampling
(``temperature > 0``), so greedy validation is never balanced.

verl instantiates the loop once per sample with the keyword arguments of its entry in
``actor_rollout_ref.rollout.agent.agent_loop_config_path`` (see
:mod:`agents.verl.settings`); the scorer and the query pools are loaded once per worker
process and shared.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping
from uuid import uuid4

import numpy as np
from omegaconf import DictConfig, OmegaConf

from agents.qwen.family import family_of_model_type, resolve_family
from agents.qwen.prompts import REGION_ANSWER_PREFIX, build_messages, followup_message
from agents.qwen.vision import check_pixel_limits
from agents.verl.episode import episode_fields, request_seed
from agents.verl.groups import DecisionGroups, Group
from agents.verl.scoring import EpisodeScorer, ScoringError, scoring_host
from agents.verl.settings import AGENT_NAME, LoopSettings
from envs.actions import FULL, MALFORMED, REGION, read_decision
from envs.data.pools import ImageCache, QueryPool, load_query_pools
from envs.factory import make_scorer
from envs.region_rerank import RegionRerankEnv, policy_image
from envs.scorers.openclip import Scorer
from envs.settings import ScorerSettings
from envs.text_actions import FULL_MARKER, text_to_action
from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput
from verl.utils.profiler import simple_timer

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

FORCED_REGION_PREFIX = REGION_ANSWER_PREFIX
"""Text that forces a REGION answer; the policy completes the box."""
FORCED_FULL_TEXT = FULL_MARKER
"""Text that forces a FULL answer."""


# --------------------------------------------------------------------------- per-process state
# verl builds a new loop object per sample; the scorer and pools must outlive it.
_POOLS: dict[str, dict[str, QueryPool]] = {}
_SCORERS: dict[ScorerSettings, Scorer] = {}
_STATE_LOCK = threading.Lock()
# In-process scoring (scoring.enabled false): env steps run in worker threads one at a
# time, which keeps the shared scorer's caches consistent. With the scoring service the
# scorer lives in the service and env calls run unlocked on their own threads (a thread
# waiting for the service's batch costs nothing; verl's default executor has only
# cores + 4 threads, which would cap how many crops can join a batch).
_ENV_LOCK = threading.Lock()
_ENV_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=512, thread_name_prefix="rr-env")
# The rollouts of a query run in the same worker at the same time: one decode serves them all.
QUERY_IMAGES = ImageCache()


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


def shared_scorer(settings: ScorerSettings) -> Scorer:
    """The scorer ``settings`` name, built once per process."""
    with _STATE_LOCK:
        if settings not in _SCORERS:
            _SCORERS[settings] = make_scorer(settings)
        return _SCORERS[settings]


def search_index(pool: QueryPool, settings: ScorerSettings):
    """The KB index SEARCH queries for ``pool`` (its ``kb`` file under the run's scorer), built
    with the in-process scorer once per worker; a complete on-disk index (recipes/build_index.py)
    is read back without a forward."""
    from envs.factory import pools_index

    return pools_index([pool], shared_scorer(settings))


def _locked_call(fn, *args, **kwargs):
    with _ENV_LOCK:
        return fn(*args, **kwargs)


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
    seed_keys: tuple | None = None
    """(step, query, group member) of the episode's request seeds; ``None``: unseeded sampling"""
    draws: int = 0


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
    loop through the ``agent_loop_config_path`` file (:func:`agents.verl.settings.agent_loop_config`), never
    through verl's ``@register`` decorator: the decorator's entry has no settings, and
    since verl imports this module lazily, at the first episode, it would replace the
    file's entry for every later episode, which would then silently run with default
    settings (the default image size among them).
    """

    def __init__(self, *args, tools: Any = None, name: str | None = None, **kwargs):
        settings = {k: kwargs.pop(k) for k in list(kwargs) if k in LoopSettings.__dataclass_fields__}
        hf_model_type = kwargs.get("hf_model_type")
        super().__init__(*args, **kwargs)
        self.settings = LoopSettings.from_kwargs(**settings)
        self.response_length = self.rollout_config.response_length
        check_pixel_limits(self.processor, self.settings.images)
        # The model family words the prompt and fixes the parser's frame: images.family when
        # set, else the checkpoint's model_type (verl passes it), else the model's config.
        if self.settings.images.family is None and isinstance(hf_model_type, str):
            self.family = family_of_model_type(hf_model_type, self.config.actor_rollout_ref.model.path)
        else:
            self.family = resolve_family(self.settings.images.family, self.config.actor_rollout_ref.model.path)

    # ------------------------------------------------------------------ helpers
    async def _env_call(self, episode_metrics: dict, fn, *args, **kwargs):
        with simple_timer("tool_calls", episode_metrics):
            if self.settings.scoring.enabled:
                return await self.loop.run_in_executor(_ENV_THREADS, functools.partial(fn, *args, **kwargs))
            return await self.loop.run_in_executor(None, functools.partial(_locked_call, fn, *args, **kwargs))

    async def _episode_scorer(self, metrics: dict, pool: QueryPool) -> Scorer:
        """The episode's scorer: a client of the run's scoring service (its query's FULL and
        candidates fetched, once per query for all rollouts), or the shared in-process scorer."""
        s = self.settings
        if not s.scoring.enabled:
            return await self._env_call(metrics, shared_scorer, s.scorer)
        with simple_timer("tool_calls", metrics):
            try:
                host = await self.loop.run_in_executor(_ENV_THREADS, scoring_host, s.scorer, s.scoring)
            except Exception as exc:
                raise ScoringError(pool.query_id, f"no scoring service: {type(exc).__name__}: {exc}") from exc
            return await EpisodeScorer(host, pool).prepare()

    async def _shown_image(self, message: dict) -> Any:
        """The image of ``message`` as the model sees it (qwen-vl-utils resize)."""
        images = (await self.process_multi_modal_info([message]))["images"]
        return images[0]

    async def _generate(
        self, ep: _Episode, sampling_params: dict, request_id: str, prefix: list[int]
    ) -> tuple[list[int], list[float] | None]:
        """Tokens the policy writes after the runtime prompt (and a forced ``prefix``)."""
        params = dict(sampling_params)
        if ep.seed_keys is not None:
            params["seed"] = request_seed(self.settings.seed, *ep.seed_keys, ep.draws)
        ep.draws += 1
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
        # The box is read in pixels of the image the model was shown (ep.images[-1]), not of a
        # recomputed resize, so the parser's frame is the model's input by construction.
        action = text_to_action(
            text, frame=self.family.frame, view_size=ep.env.view_size, shown_size=ep.images[-1].size,
            rules=ep.env.settings.reward.text_rules, max_regions=ep.env.settings.max_regions, search=ep.env.settings.search,
        )
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
            ep.info["policy_image"], step, self.settings.env.max_steps,
            min_pixels=self.settings.images.min_pixels, max_pixels=self.settings.images.max_pixels, family=self.family,
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
        self, ep: _Episode, turn: _Turn, group: Group, ticket: int, sampling_params: dict, request_id: str
    ) -> tuple[_Turn, str, int]:
        """Report the first decision to the group; the member its plan swaps out redraws
        (then forces) the missing decision. Returns the turn to keep, its path and extra draws."""
        group.report(ticket, turn.decision)
        try:
            await asyncio.wait_for(group.reported.wait(), self.settings.group_timeout_s)
        except asyncio.TimeoutError:
            logger.warning("%s: group did not complete in %.0f s; not balanced", AGENT_NAME, self.settings.group_timeout_s)
            return turn, "timeout", 0
        plan = group.plan
        if group.swap_out != ticket or plan is None:
            return turn, "member", 0

        draws: list[_Turn] = []
        decisions: list[int] = []
        while not plan.done(decisions):
            draws.append(await self._answer(ep, sampling_params, request_id))
            # A malformed redraw does not bring the missing decision either.
            decisions.append(draws[-1].decision if draws[-1].decision in (FULL, REGION) else 1 - plan.missing)
        result = plan.result(decisions)
        if result.path == "resampled":
            kept = draws[result.swap_in_draw]
        else:
            forced = FORCED_FULL_TEXT if plan.missing == FULL else FORCED_REGION_PREFIX
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
        group, ticket = _DECISION_GROUPS.join(str(uid), self.settings.balance_budget) if balancing else (None, 0)
        try:
            seed_keys = None
            if self.settings.seed is not None:
                seed_keys = (_plain(kwargs.get("global_steps")), str(extra_info["query_id"]), _plain(kwargs.get("session_id")))
            return await self._run_episode(sampling_params, extra_info, group, ticket, seed_keys)
        except ScoringError as error:
            # Loud, never a hang: the episode fails with the query named, its group goes on
            # without it, and the step counts it (rollout metric scoring_failed).
            logger.error("%s: episode failed: %s", AGENT_NAME, error)
            if group is not None:
                group.report(ticket, None)
                if ticket == group.swap_out and not group.settled.is_set():
                    group.settle("failed")
            return await self._failed_output(extra_info, error, bool(sampling_params.get("logprobs")))
        finally:
            if group is not None:
                _DECISION_GROUPS.leave(str(uid), group, ticket)

    async def _run_episode(
        self, sampling_params: dict, extra_info: dict, group: Group | None, ticket: int, seed_keys: tuple | None
    ) -> AgentLoopOutput:
        s = self.settings
        metrics: dict[str, float] = {}
        pool = await self._env_call(metrics, query_pool, extra_info["pool_file"], str(extra_info["query_id"]))
        scorer = await self._episode_scorer(metrics, pool)
        # SEARCH reads the pool's KB index, built (or read back from the disk cache) once per worker.
        kb_index = await self._env_call(metrics, search_index, pool, s.scorer) if s.env.search else None
        env = RegionRerankEnv([pool], scorer, settings=s.env, image_cache=QUERY_IMAGES, kb_index=kb_index)
        _, info = await self._env_call(metrics, env.reset, options={"query_index": 0})
        messages = build_messages(
            info["question"], info["policy_image"], 0, s.env.max_steps,
            min_pixels=s.images.min_pixels, max_pixels=s.images.max_pixels, family=self.family,
            search=s.env.search, max_regions=s.env.max_regions,
        )
        images = [await self._shown_image(messages[1])]
        self._assert_mm_supported(True)
        prompt_ids = await self.ct_build_initial_tokens(messages, images=images)
        ep = _Episode(
            env=env,
            info=info, messages=messages, images=images, runtime_ids=list(prompt_ids), metrics=metrics,
            seed_keys=seed_keys,
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

    async def _failed_output(self, extra_info: dict, error: ScoringError, log_probs_asked: bool) -> AgentLoopOutput:
        """A failed episode: the query's FULL prompt, one EOS token with mask 0 (nothing of it
        is trained on), reward 0, and ``scoring_failed`` / ``scoring_error`` naming the query."""
        s = self.settings
        pool = query_pool(extra_info["pool_file"], str(extra_info["query_id"]))
        # The env's own resize of the FULL view under the information gap (no env: no scorer).
        image = await self.loop.run_in_executor(_ENV_THREADS, QUERY_IMAGES.load, pool.image)
        view = policy_image(image, s.env.policy_max_side)
        messages = build_messages(
            pool.question, view, 0, s.env.max_steps,
            min_pixels=s.images.min_pixels, max_pixels=s.images.max_pixels, family=self.family,
            search=s.env.search, max_regions=s.env.max_regions,
        )
        images = [await self._shown_image(messages[1])]
        prompt_ids = await self.ct_build_initial_tokens(messages, images=images)
        extra = episode_fields(
            query_id=pool.query_id, decisions=[], baseline_rank=-1, final_rank=-1, pool_size=len(pool.candidates),
            outcome="scoring_failed", reward_terms={}, steps=0, truncated=False, balance_path="failed",
            env_seconds=0.0, scoring_error=str(error),
        )
        return AgentLoopOutput(
            prompt_ids=list(prompt_ids),
            response_ids=[self.tokenizer.eos_token_id],
            response_mask=[0],
            response_logprobs=[0.0] if log_probs_asked else None,
            multi_modal_data={"images": images},
            mm_processor_kwargs=self._get_mm_processor_kwargs(None),
            reward_score=0.0,
            num_turns=2,
            metrics={},
            extra_fields=extra,
        )

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
        extra = dict(ep.server_extra)
        extra.update(episode_fields(
            query_id=ep.info["query_id"], decisions=ep.decisions, baseline_rank=baseline_rank,
            final_rank=int(ep.info["rank"]), pool_size=len(ep.env.pool.candidates), outcome=ep.outcome,
            reward_terms=ep.info.get("reward_terms") or {}, steps=int(ep.env.steps_taken), truncated=ep.truncated,
            balance_path=path, env_seconds=float(ep.metrics.get("tool_calls", 0.0)),
            scoring_requests=int(getattr(ep.env.scorer, "requests", 0)), extra_draws=extra_draws,
        ))
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
