"""RegionRerank-v0: decide whether (and where) to crop a query image before re-ranking."""

from __future__ import annotations

import dataclasses
import os
import string
import warnings
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from envs.actions import FULL, MALFORMED, REGION, InvalidBoxAction, MalformedAction, read_action
from envs.boxes import clamp_norm_box, crop, is_valid_box, pixel_rect, region_r1_resized_size, view_box_to_image
from envs.data import DataError, ImageCache, QueryPool, load_image
from envs.scorer import Scorer, check_embeddings, check_scorer_members, shareable_spec
from envs.settings import EnvSettings, settings_from_dict
from rewards import RankingStats, RewardConfig, RewardTerms, box_iou, full_reward, region_reward

__all__ = ["Outcome", "RegionRerankEnv"]


@dataclass
class Outcome:
    """What one action does from the current state (computed without changing it)."""

    kind: Literal["full", "stop", "region", "invalid_box", "malformed"]
    reward: float
    terminated: bool
    decision: int | None = None
    image_box: np.ndarray | None = None
    view: Image.Image | None = None
    """The crop a REGION outcome scored (kept so a step does not cut it twice)."""
    scores: np.ndarray | None = None
    stats: RankingStats | None = None
    terms: RewardTerms | None = None
    reason: str = ""


class RegionRerankEnv(gym.Env):
    """Crop the query image so a frozen image-text re-ranker puts the right candidate first.

    Each episode is one query of a multi-modal RAG re-ranking task: a question, a query
    image and a pool of K candidates (images, texts or both) of which some are relevant.
    A frozen scorer ranks the pool by cosine similarity to the query view. The baseline
    ranking uses the FULL image; the agent may instead crop a REGION of it (Region-R1),
    and with ``max_steps > 1`` zoom further into its own crops.

    ## Action Space
    ``Dict(decision=Discrete(2), box=Box(0, 1, (4,), float32))``: ``decision`` 0 is FULL
    (keep the current view and stop), 1 is REGION (crop ``box``). ``box`` is
    ``[x1, y1, x2, y2]`` normalized to the CURRENT view and is ignored for FULL. Actions
    are read by :func:`envs.actions.read_action`: the decision must be the integer 0 or
    1 (a Python or NumPy integer, not ``bool``/float/str) and a REGION box 4 finite
    numbers. Boxes are clamped to the view; a box of zero area or narrower or lower than
    ``min_box_side`` original pixels after clamping (inverted, outside the view) is an
    invalid box. Anything else (a NaN or overflowing box, ``decision=1.0``, ``"1"``, a
    non-dict, a :class:`MalformedAction` from a wrapper) is malformed. No action, of any
    Python type, makes :meth:`step` or :meth:`score_actions` raise. A valid box is cut
    as whole pixels (its :func:`envs.boxes.pixel_rect`, edges rounded outwards), and
    that rectangle becomes the next view, so the next step's box is relative to exactly
    the crop the policy is shown. Wrappers in :mod:`envs.wrappers` adapt a flat ``Box``,
    VLM text and a numeric question for libraries like Stable-Baselines3.

    ## Observation Space
    ``Dict(image=Box(0, 255, (obs_size, obs_size, 3), uint8), question=Text, step=Discrete(max_steps + 1))``:
    the current view resized (not letterboxed, so a normalized box means the same on the
    observation and on the view) to a fixed square, the question, and how many crops were
    taken. With ``policy_max_side`` set, the image shown to the policy is first
    downscaled so its longer side is at most that many pixels, while crops are cut and
    scored at full resolution (LFPC's "information gap"). Full-resolution data is in
    ``info``: ``view`` (PIL image of the current view), ``policy_image`` (what a VLM
    should be shown), ``view_box`` (the view in original pixels), ``box`` (the last crop
    in original pixels), ``baseline_rank`` / ``rank`` / ``scores`` / ``baseline_scores``,
    ``reward_terms`` and ``outcome``.

    Scores are cosine similarities computed in float64 from the scorer's embeddings.
    With a batch-invariant scorer (:class:`envs.scorer.OpenClipScorer` is one) the
    scores of a view do not depend on what else is scored with it: the reward
    :meth:`score_actions` predicts and the one :meth:`step` pays agree to 1e-6 at most
    (with the default scorer: exactly).

    ## Rewards
    From :mod:`rewards` with ``reward_config`` (:class:`rewards.RewardConfig`):
    FULL at the first step gives ``full_reward`` if the baseline already ranks a positive
    first, else 0. A REGION step gives the rank-improvement reward
    ``scale * max(w . (dMRR, dNDCG, dRank, dMargin), floor)``. An invalid box gives
    ``invalid_box_penalty``; a malformed action ``malformed_penalty`` (or is treated as
    FULL with ``malformed_as_full``). With ``max_steps > 1``, ``reward_mode`` says how zoom
    steps are paid: ``"terminal"`` (default) pays once, when the episode ends, the reward
    of the final view against the FULL baseline (every earlier step pays 0);
    ``"incremental"`` pays each REGION step against the view it replaces and a later
    FULL/stop pays 0. With ``max_steps=1`` the two modes coincide.

    ## Starting State
    ``reset`` draws a query uniformly from the dataset with the env's ``np_random``
    (``options={"query_index": i}`` or ``{"query_id": "..."}`` selects one). The view is
    the whole query image and the baseline ranking is computed once per query.

    ## Episode End
    Terminates on FULL/stop, on an invalid or malformed action, and after ``max_steps``
    REGION steps. There is no truncation.

    ## Arguments
    - ``pools``: the query pools (a sequence of :class:`envs.data.QueryPool`). Paths and
      the embedded default are resolved by :func:`envs.factory.make_env`, which is what
      ``gym.make("RegionRerank-v0")`` calls.
    - ``scorer``: a built :class:`envs.scorer.Scorer` (:func:`envs.factory.make_scorer`).
    - ``settings``: the episode's :class:`envs.settings.EnvSettings`; its fields may also
      be given one by one as keywords (``max_steps=2``, ``reward=RewardConfig(...)``,
      ``obs_size``, ``policy_max_side``, ``min_box_side``, ``reward_mode``):

      - ``max_steps``: REGION steps allowed (1 is the paper's setting; more is multi-step zoom);
      - ``reward``: the reward's weights, penalties and options (``reward_config`` is a
        deprecated spelling);
      - ``reward_mode``: ``"terminal"`` or ``"incremental"`` (see Rewards);
      - ``obs_size``: side of the square observation image;
      - ``policy_max_side``: information gap; ``None`` shows the policy the full-resolution view;
      - ``min_box_side``: smallest crop side, in original pixels, that counts as a valid
        box; ``None`` takes ``reward.min_box_side`` (4 px by default).
    - ``render_mode``: ``None`` or ``"rgb_array"`` (the query image with the view, the crop and the rank drawn on it).
    - ``image_cache``: an :class:`envs.data.ImageCache` shared with other envs, so envs of
      the same queries decode each image once (verl's agent loop builds one env per
      rollout); ``None`` decodes the query image at every ``reset``.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 1}
    _spec = None

    @property
    def spec(self):
        """Gymnasium's ``EnvSpec`` of this env (set by ``gym.make``). A built scorer in its
        kwargs is recorded as a :class:`envs.scorer.SharedScorer` reference, so copying or
        re-making the spec (``check_env``, ``wrapped.spec``) shares the scorer, never copies it."""
        return self._spec

    @spec.setter
    def spec(self, value) -> None:
        self._spec = shareable_spec(value)

    def __init__(
        self,
        pools: Sequence[QueryPool],
        scorer: Scorer,
        *,
        settings: EnvSettings | Mapping[str, Any] | None = None,
        render_mode: str | None = None,
        image_cache: ImageCache | None = None,
        **fields: Any,
    ):
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if isinstance(pools, (str, os.PathLike)) or pools is None:
            raise TypeError(
                f"RegionRerankEnv takes loaded query pools, got {pools!r}; "
                "use gym.make('RegionRerank-v0', dataset=...) or envs.factory.make_env for a path or the default"
            )
        if scorer is None:
            raise TypeError("RegionRerankEnv takes a built scorer; envs.factory.make_scorer() builds the default")
        # The Scorer contract: its members now; what they return at the first reset, on the
        # arrays the env fetches anyway (no extra forward; see envs.scorer.check_scorer).
        check_scorer_members(scorer)
        self._scorer_checked = False
        self.settings = _settings(settings, fields)
        self.pools = pools
        if len(self.pools) == 0:
            raise ValueError("RegionRerankEnv: the dataset holds no query pools")
        self.scorer = scorer
        self.max_steps = self.settings.max_steps
        self.reward_config = self.settings.reward
        self.reward_mode = self.settings.reward_mode
        self.obs_size = obs_size = self.settings.obs_size
        self.policy_max_side = self.settings.policy_max_side
        self.min_box_side = self.settings.box_side
        self.render_mode = render_mode
        self._load_image = load_image if image_cache is None else image_cache.load
        max_steps = self.max_steps

        self.action_space = spaces.Dict(
            {"decision": spaces.Discrete(2), "box": spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)}
        )
        # The charset covers every question in the data, so real (non-ASCII) questions fit.
        charset = sorted(set(string.printable) | {ch for p in self.pools for ch in p.question})
        max_question = max(64, max(len(p.question) for p in self.pools))
        self.observation_space = spaces.Dict(
            {
                "image": spaces.Box(0, 255, shape=(obs_size, obs_size, 3), dtype=np.uint8),
                "question": spaces.Text(max_length=max_question, min_length=0, charset="".join(charset)),
                "step": spaces.Discrete(max_steps + 1),
            }
        )

        self.pool: QueryPool | None = None
        self.image: Image.Image | None = None
        self.view_box = np.zeros(4)
        self.steps_taken = 0
        self.candidate_embeddings = np.zeros((0, 0), np.float64)
        self.baseline_scores = np.zeros(0)
        self.baseline_stats: RankingStats | None = None
        self.scores = np.zeros(0)
        self.stats: RankingStats | None = None
        self._view_image: Image.Image | None = None

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.pool = self.pools[self._query_index(options or {})]
        try:
            self.image = self._load_image(self.pool.image)
        except DataError as exc:  # name the record, not only the file: the image may have changed since loading
            where = self.pool.where or f"query {self.pool.query_id!r}"
            raise DataError(f"{where}: field 'image': {exc}") from exc
        self.view_box = np.array([0.0, 0.0, self.image.width, self.image.height])
        self.steps_taken = 0
        self._view_image = None
        # The pool's embeddings are fetched once per query; a step then costs one image forward.
        candidates = self.scorer.candidate_embeddings(self.pool)
        if not self._scorer_checked:
            check_embeddings(self.scorer, "candidate_embeddings", candidates, len(self.pool.candidates))
        self.candidate_embeddings = np.asarray(candidates, np.float64)
        self.baseline_scores = self._score_views([self.image])[0]
        self.baseline_stats = self._stats(self.baseline_scores)
        self.scores, self.stats = self.baseline_scores, self.baseline_stats
        return self._observation_and_info(None)

    def step(self, action):
        if self.pool is None:
            raise RuntimeError("call reset() before step()")
        outcome = self._outcomes([action])[0]
        if outcome.kind == "region":
            self.view_box = outcome.image_box
            self._view_image = outcome.view
            self.scores, self.stats = outcome.scores, outcome.stats
            self.steps_taken += 1
        observation, info = self._observation_and_info(outcome)
        return observation, outcome.reward, outcome.terminated, False, info

    def render(self):
        if self.render_mode != "rgb_array" or self.image is None:
            return None
        canvas = self.image.copy()
        draw = ImageDraw.Draw(canvas)
        line = max(2, round(min(canvas.size) / 150))
        if self.steps_taken:
            draw.rectangle(self.view_box.tolist(), outline=(255, 40, 40), width=line)
        label = f"rank {int(self.stats.rank)} (FULL {int(self.baseline_stats.rank)}) step {self.steps_taken}"
        draw.rectangle((0, 0, 8 + 7 * len(label), 16), fill=(0, 0, 0))
        draw.text((4, 2), label, fill=(255, 255, 255))
        return np.asarray(canvas, dtype=np.uint8)

    # ------------------------------------------------------------------ batched scoring
    def score_actions(self, actions: Sequence[Any]) -> list[Outcome]:
        """What each action would do from the current state, without taking it.

        All REGION crops are scored in one batched scorer call, so a group of n rollouts
        of a query (GRPO) costs one batch, not n steps. ``outcome.reward`` is the reward
        :meth:`step` would return for that action: with a batch-invariant scorer (the
        default :class:`envs.scorer.OpenClipScorer`) to 1e-6 at most (with it: exactly),
        whatever else is in the group. Each action may be any object (see Action Space); none raises.

        Raises:
            TypeError: if ``actions`` is not a sequence of actions (a str or a single
                dict action is refused rather than iterated).
        """
        if self.pool is None:
            raise RuntimeError("call reset() before score_actions()")
        if isinstance(actions, (str, bytes, dict)) or not isinstance(actions, (Sequence, np.ndarray)):
            raise TypeError(f"score_actions takes a sequence of actions, got {type(actions).__name__}")
        return self._outcomes(list(actions))

    @property
    def view(self) -> Image.Image:
        """The current view at full resolution (what crops are cut from and scored); a new
        image on every access, so callers may keep or modify it."""
        return (self.image if self._view_image is None else self._view_image).copy()

    @property
    def policy_image(self) -> Image.Image:
        """The current view as shown to the policy (downscaled under the information gap)."""
        return self._policy_image(self.view)

    def _policy_image(self, view: Image.Image) -> Image.Image:
        if self.policy_max_side is None or max(view.size) <= self.policy_max_side:
            return view
        scale = self.policy_max_side / max(view.size)
        size = (max(1, round(view.width * scale)), max(1, round(view.height * scale)))
        return view.resize(size, Image.Resampling.BILINEAR)

    @property
    def view_size(self) -> tuple[float, float]:
        """Width and height of the current view in original-image pixels."""
        return float(self.view_box[2] - self.view_box[0]), float(self.view_box[3] - self.view_box[1])

    # ------------------------------------------------------------------ internals
    def _query_index(self, options: dict[str, Any]) -> int:
        if "query_index" in options:
            index = int(options["query_index"])
            if not 0 <= index < len(self.pools):
                raise IndexError(f"options['query_index']={index} is outside the dataset (0..{len(self.pools) - 1})")
            return index
        if "query_id" in options:
            for index, pool in enumerate(self.pools):
                if pool.query_id == options["query_id"]:
                    return index
            raise KeyError(f"options['query_id']={options['query_id']!r} is not in the dataset")
        return int(self.np_random.integers(len(self.pools)))

    def _score_views(self, views: list[Image.Image]) -> np.ndarray:
        """Cosine similarities ``(len(views), K)``: one batched image call.

        One float64 matrix-vector product per view: a matrix product's rounding depends
        on how many rows it has, which would make a view's scores depend on its group.
        """
        embeddings = self.scorer.embed_images(views)
        if not self._scorer_checked:
            check_embeddings(self.scorer, "embed_images", embeddings, len(views), self.candidate_embeddings.shape[1])
            self._scorer_checked = True
        embeddings = np.asarray(embeddings, np.float64)
        return np.stack([self.candidate_embeddings @ row for row in embeddings]).reshape(len(views), -1)

    def _scored_image(self, view: Image.Image) -> Image.Image:
        """What the scorer sees of a REGION crop (resized first under ``resize_crop``)."""
        if not self.reward_config.resize_crop:
            return view
        return view.resize(region_r1_resized_size(view.width, view.height), Image.Resampling.BICUBIC)

    def _stats(self, scores: np.ndarray) -> RankingStats:
        return self.reward_config.stats(scores, self.pool.positives)

    def _outcomes(self, actions: list[Any]) -> list[Outcome]:
        outcomes: list[Outcome | None] = []
        crops: list[tuple[int, np.ndarray]] = []
        config = self.reward_config
        for i, action in enumerate(actions):
            read = read_action(action)
            decision = FULL if read.decision == MALFORMED and config.malformed_as_full else read.decision
            if read.invalid_box:
                outcomes.append(Outcome("invalid_box", config.invalid_box_penalty, True, REGION, reason=read.reason))
            elif decision == MALFORMED:
                outcomes.append(Outcome("malformed", config.malformed_penalty, True, reason=read.reason))
            elif decision == FULL:
                outcomes.append(self._stop_outcome())
            else:
                norm = clamp_norm_box(read.box)
                if not is_valid_box(norm, self.view_size, self.min_box_side):
                    reason = (
                        f"box {np.round(read.box, 4).tolist()} is empty or smaller than "
                        f"{self.min_box_side}px after clamping"
                    )
                    outcomes.append(Outcome("invalid_box", config.invalid_box_penalty, True, REGION, reason=reason))
                else:
                    outcomes.append(None)
                    image_box = pixel_rect(view_box_to_image(norm, self.view_box), self.image.width, self.image.height)
                    crops.append((i, image_box))
        if crops:
            views = [crop(self.image, image_box) for _, image_box in crops]
            all_scores = self._score_views([self._scored_image(view) for view in views])
            for (i, image_box), view, scores in zip(crops, views, all_scores):
                outcomes[i] = self._region_outcome(image_box, view, scores)
        return outcomes

    def _stop_outcome(self) -> Outcome:
        if self.steps_taken == 0:
            reward = float(full_reward(self.baseline_stats, self.reward_config))
            return Outcome("full", reward, True, FULL)
        if self.reward_mode == "terminal":
            terms = region_reward(self.baseline_stats, self.stats, self.reward_config, self._iou(self.view_box))
            return Outcome("stop", float(terms.reward), True, FULL, terms=terms)
        return Outcome("stop", 0.0, True, FULL)

    def _region_outcome(self, image_box: np.ndarray, view: Image.Image, scores: np.ndarray) -> Outcome:
        stats = self._stats(scores)
        last_step = self.steps_taken + 1 >= self.max_steps
        if self.reward_mode == "incremental":
            terms = region_reward(self.stats, stats, self.reward_config, self._iou(image_box))
            reward = float(terms.reward)
        else:
            terms = region_reward(self.baseline_stats, stats, self.reward_config, self._iou(image_box))
            reward = float(terms.reward) if last_step else 0.0
        return Outcome(
            "region", reward, last_step, REGION, image_box=image_box, view=view, scores=scores, stats=stats, terms=terms
        )

    def _iou(self, image_box: np.ndarray) -> float:
        if self.reward_config.w_iou == 0.0 or self.pool.box is None:
            return 0.0
        return float(box_iou(image_box, self.pool.box))

    def _observation(self, policy_image: Image.Image) -> dict[str, Any]:
        image = policy_image.resize((self.obs_size, self.obs_size), **_resize_filter(policy_image.size, self.obs_size))
        return {
            "image": np.asarray(image, dtype=np.uint8),
            "question": self.pool.question,
            "step": self.steps_taken,
        }

    def _observation_and_info(self, outcome: Outcome | None) -> tuple[dict[str, Any], dict[str, Any]]:
        view = self.view
        policy_image = self._policy_image(view)
        info: dict[str, Any] = {
            "query_id": self.pool.query_id,
            "question": self.pool.question,
            "view": view,
            "policy_image": policy_image,
            "view_box": self.view_box.copy(),
            "baseline_rank": int(self.baseline_stats.rank),
            "rank": int(self.stats.rank),
            "baseline_scores": self.baseline_scores.copy(),
            "scores": self.scores.copy(),
            "has_positive": self.pool.has_positive,
        }
        if outcome is not None:
            info["outcome"] = outcome.kind
            info["decision"] = MALFORMED if outcome.decision is None else outcome.decision
            if outcome.reason:
                info["reason"] = outcome.reason
            if outcome.image_box is not None:
                info["box"] = outcome.image_box.copy()
            if outcome.terms is not None:
                info["reward_terms"] = {k: float(v) for k, v in outcome.terms._asdict().items()}
        return self._observation(policy_image), info


def _resize_filter(size: tuple[int, int], target: int) -> dict[str, Any]:
    """PIL resize arguments for the observation: shrinking is antialiased (bilinear, with
    a box pre-reduction that makes large images ~1.6x cheaper); enlarging adds no
    information, so nearest is exact enough and ~8x cheaper than bilinear."""
    if max(size) > target:
        return {"resample": Image.Resampling.BILINEAR, "reducing_gap": 2.0}
    return {"resample": Image.Resampling.NEAREST}


def _settings(settings: EnvSettings | Mapping[str, Any] | None, fields: dict[str, Any]) -> EnvSettings:
    """The env's settings: ``settings`` with single ``fields`` given as keywords on top."""
    if "reward_config" in fields:  # the spelling before EnvSettings; one name per concept now
        warnings.warn("RegionRerankEnv(reward_config=...) is deprecated; pass reward=...", DeprecationWarning, stacklevel=3)
        fields["reward"] = fields.pop("reward_config")
    base = settings_from_dict(EnvSettings, settings, "settings")
    if not fields:
        return base
    known = {f.name for f in dataclasses.fields(EnvSettings)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"RegionRerankEnv got unknown keyword(s) {unknown}; env settings are {sorted(known)}")
    return dataclasses.replace(base, **fields)
