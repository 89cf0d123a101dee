"""RegionRerank-v0: decide whether (and where) to crop a query image before re-ranking."""

from __future__ import annotations

import os
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Mapping, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from PIL import Image, ImageDraw

from envs.actions import FULL, MALFORMED, REGION, MalformedAction, describe, read_action
from envs.boxes import clamp_norm_box, crop, is_valid_box, pixel_rect, region_r1_resized_size, view_box_to_image
from envs.data.pools import DataError, ImageCache, QueryPool, load_image
from envs.scorers.openclip import Scorer, check_embeddings, check_scorer_members, combine_features, shareable_spec
from envs.settings import EnvSettings, merged_env_settings
from envs.vector import QuestionText
from rewards import (
    RankingStats,
    RewardConfig,
    RewardTerms,
    box_iou,
    full_reward,
    kb_recall_at_k,
    positives_by_id,
    region_reward,
    search_reward,
)

if TYPE_CHECKING:
    from envs.data.kb_index import KnowledgeBaseIndex

__all__ = ["Outcome", "RegionRerankEnv", "StrictActionError"]


class StrictActionError(ValueError):
    """What ``step`` raises with ``strict=True`` for a malformed action or an invalid box;
    the message names the action and the reason."""


@dataclass
class Outcome:
    """What one action does from the current state (computed without changing it)."""

    kind: Literal["full", "stop", "region", "search", "invalid_box", "malformed"]
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
    image_boxes: np.ndarray | None = None
    """All ``(n, 4)`` crops of a REGION, original pixels (``image_box`` is the first)."""
    embedding: np.ndarray | None = None
    """The view's float64 embedding (the fused crops' for several boxes)."""
    search: "SearchResult | None" = None
    """The re-retrieved pool, for an action that searched."""


@dataclass
class SearchResult:
    """What one SEARCH retrieved: the new pool (ids, their index vectors, gold labels)."""

    ids: tuple[str, ...]
    candidate_embeddings: np.ndarray
    positives: np.ndarray
    recall: float
    """KB recall@K of the search: a gold entity is among the retrieved."""
    note: str = ""
    """Why a text rewrite was not used, if one was given and could not be."""


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
    ``reward.min_box_side`` original pixels after clamping (inverted, outside the view) is an
    invalid box. Anything else (a NaN or overflowing box, ``decision=1.0``, ``"1"``, a
    non-dict, a :class:`MalformedAction` from a wrapper) is malformed. No action, of any
    Python type, makes :meth:`step` or :meth:`score_actions` raise, unless ``strict=True``
    (for debugging an agent): then :meth:`step` raises :class:`StrictActionError` naming the
    action and the reason instead of paying a malformed or invalid-box penalty. A valid box is cut
    as whole pixels (its :func:`envs.boxes.pixel_rect`, edges rounded outwards), and
    that rectangle becomes the next view, so the next step's box is relative to exactly
    the crop the policy is shown. Wrappers in :mod:`envs.wrappers` adapt a flat ``Box``,
    VLM text and a numeric question for libraries like Stable-Baselines3.

    Two opt-in extensions (off by default: the space and every reward above are then
    exactly the paper's):

    - ``search=True`` adds ``search=Discrete(2)``: 1 re-retrieves the pool with the
      step's view, i.e. the top-K (K: the query's own pool size) entities of the KB index
      ``kb_index`` by inner product with the view's embedding (FULL + search: the current
      view, then stop; REGION + search: the crop). The new pool replaces the old one and
      later steps re-rank it; its candidate vectors are the index's rows (the index is
      built with the scorer's candidate features), so the scorer is never asked for
      another pool's candidates. An optional ``"query"`` string in the action is a text
      rewrite: embedded by the scorer's text tower and added to the view's embedding,
      re-normalized, for the retrieval only (the pool is ranked by the view). A search
      over ``search_budget`` is malformed.
    - ``max_regions=M > 1`` makes ``box`` a fixed ``Box(0, 1, (M, 4))`` plus
      ``count=Discrete(M, start=1)``: a REGION crops the first ``count`` boxes (a native
      action may also give 4 numbers, or 1..M rows), all scored in one scorer call; the
      view's embedding is the re-normalized mean of the crops' (each region weighs the
      same and the scores stay cosines). Such a fused view is no image to zoom into, so
      a REGION with two or more boxes ends the episode.

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
    ``reward_terms`` and ``outcome``. With SEARCH or several regions on, ``info`` also has
    ``pool_ids`` (the pool ranked now), ``pool_has_positive`` (coverage), ``searches``,
    ``searched`` and ``search_recall`` (a gold entity among the retrieved) and, for a
    multi-box REGION, ``boxes``.

    Scores are cosine similarities computed in float64 from the scorer's embeddings.
    With a batch-invariant scorer (:class:`envs.scorers.openclip.OpenClipScorer` is one) the
    scores of a view do not depend on what else is scored with it: the reward
    :meth:`score_actions` predicts and the one :meth:`step` pays agree to 1e-6 at most
    (with the default scorer: exactly).

    ## Rewards
    From :mod:`rewards` with ``settings.reward`` (:class:`rewards.RewardConfig`):
    FULL at the first step gives ``full_reward`` if the baseline already ranks a positive
    first, else 0. A REGION step gives the rank-improvement reward
    ``scale * max(w . (dMRR, dNDCG, dRank, dMargin), floor)``. An invalid box gives
    ``invalid_box_penalty``; a malformed action ``malformed_penalty`` (or is treated as
    FULL with ``malformed_as_full``). With ``max_steps > 1``, ``reward_mode`` says how zoom
    steps are paid: ``"terminal"`` (default) pays once, when the episode ends, the reward
    of the final view against the FULL baseline (every earlier step pays 0);
    ``"incremental"`` pays each REGION step against the view it replaces and a later
    FULL/stop pays 0. With ``max_steps=1`` the two modes coincide.

    With SEARCH the final ranking (last view, last pool) is paid against the ORIGINAL
    pool's FULL baseline, minus ``search_cost`` per search (:func:`rewards.search_reward`;
    incremental mode: each step against the ranking it replaces, a searching step minus
    the cost). A pool without a positive ranks it at K + 1, so bringing a missing positive
    into the pool pays. Positives of a re-retrieved pool are the query's gold entity ids
    (:attr:`envs.data.pools.QueryPool.gold`), never anything the index returns.

    ## Starting State
    ``reset`` draws a query uniformly from the dataset with the env's ``np_random``
    (``options={"query_index": i}`` or ``{"query_id": "..."}`` selects one). The view is
    the whole query image and the baseline ranking is computed once per query.

    ## Episode End
    Terminates on FULL/stop (with or without a search), on an invalid or malformed
    action, after ``max_steps`` REGION steps, and after a REGION of two or more boxes.
    There is no truncation.

    ## Arguments
    - ``pools``: the query pools (a sequence of :class:`envs.data.pools.QueryPool`). Paths and
      the embedded default are resolved by :func:`envs.factory.make_env`, which is what
      ``gym.make("RegionRerank-v0")`` calls.
    - ``scorer``: a built :class:`envs.scorers.openclip.Scorer` (:func:`envs.factory.make_scorer`).
    - ``settings``: the episode's :class:`envs.settings.EnvSettings`; its fields may also
      be given one by one as keywords (``max_steps=2``, ``reward=RewardConfig(...)``,
      ``obs_size``, ``policy_max_side``, ``reward_mode``):

      - ``max_steps``: REGION steps allowed (1 is the paper's setting; more is multi-step zoom);
      - ``reward``: the reward's weights, penalties and options;
      - ``reward_mode``: ``"terminal"`` or ``"incremental"`` (see Rewards);
      - ``obs_size``: side of the square observation image;
      - ``policy_max_side``: information gap; ``None`` shows the policy the full-resolution view;
      - ``search``, ``search_budget``, ``search_cost``: the SEARCH flag, searches per
        episode, reward per search (see Action Space and Rewards);
      - ``max_regions``: boxes per REGION (1: the paper's single crop).
      - ``strict``: raise :class:`StrictActionError` on a malformed action or an invalid box (debugging).
    - ``render_mode``: ``None`` or ``"rgb_array"`` (the query image with the view, the crop and the rank drawn on it).
    - ``image_cache``: an :class:`envs.data.pools.ImageCache` shared with other envs, so envs of
      the same queries decode each image once (verl's agent loop builds one env per
      rollout); ``None`` decodes the query image at every ``reset``.
    - ``kb_index``: the :class:`envs.data.kb_index.KnowledgeBaseIndex` SEARCH queries (required
      with ``search=True``; built with the env's scorer: its name must match and its rows
      must equal the scorer's candidate embeddings, checked at the first reset);
      :func:`envs.factory.make_env` builds it from the pools' ``kb`` file.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 1}
    _spec = None

    @property
    def spec(self):
        """Gymnasium's ``EnvSpec`` of this env (set by ``gym.make``). A built scorer in its
        kwargs is recorded as a :class:`envs.scorers.openclip.SharedScorer` reference, so copying or
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
        kb_index: "KnowledgeBaseIndex | None" = None,
        **fields: Any,
    ):
        _check_env_arguments(pools, scorer, render_mode, self.metadata["render_modes"])
        # The Scorer contract: its members now; what they return at the first reset, on the
        # arrays the env fetches anyway (no extra forward; see envs.scorers.openclip.check_scorer).
        check_scorer_members(scorer)
        self._scorer_checked = False
        self.settings = merged_env_settings(settings, fields)
        self.pools = pools
        if len(self.pools) == 0:
            raise ValueError("RegionRerankEnv: the dataset holds no query pools")
        self.scorer = scorer
        self.render_mode = render_mode
        self._load_image = load_image if image_cache is None else image_cache.load
        self.kb_index = kb_index
        if self.settings.search:
            _check_index(kb_index, scorer)
        self._index_checked = False

        self.action_space = spaces.Dict(_action_spaces(self.settings.max_regions, self.settings.search))
        self.observation_space = spaces.Dict(
            _observation_spaces(self.pools, self.settings.obs_size, self.settings.max_steps)
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
        self.pool_ids: tuple[str, ...] = ()
        """Ids of the pool the current ranking ranks (the query's pool until a SEARCH replaces it)."""
        self.positives = np.zeros(0, bool)
        """Labels of :attr:`pool_ids`: the pool's own, then judged by the query's gold ids."""
        self.searches = 0
        self.search_log: list[dict[str, Any]] = []
        """One entry per search taken this episode: ``ids``, ``recall``, ``has_positive``."""
        self._view_embedding: np.ndarray | None = None
        self._final_view = False

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.pool = self.pools[self._query_index(options or {})]
        self.image = self._pool_image(self.pool)
        self.view_box = np.array([0.0, 0.0, self.image.width, self.image.height])
        self.steps_taken = 0
        self._view_image = None
        # The pool's embeddings are fetched once per query; a step then costs one image forward.
        candidates = self.scorer.candidate_embeddings(self.pool)
        if not self._scorer_checked:
            check_embeddings(self.scorer, "candidate_embeddings", candidates, len(self.pool.candidates))
        self.candidate_embeddings = np.asarray(candidates, np.float64)
        self.pool_ids = tuple(c.id for c in self.pool.candidates)
        self.positives = self.pool.positives
        self.searches, self.search_log, self._final_view = 0, [], False
        full_embedding = self._embed_views([self.image])
        self._view_embedding = full_embedding[0]
        self.baseline_scores = self._scores_of(full_embedding)[0]
        self.baseline_stats = self._stats(self.baseline_scores)
        self.scores, self.stats = self.baseline_scores, self.baseline_stats
        if self.settings.search and not self._index_checked:
            _check_index_vectors(self.kb_index, self.pool_ids, self.candidate_embeddings)
            self._index_checked = True
        return self._observation_and_info(None)

    def step(self, action):
        if self.pool is None:
            raise RuntimeError("call reset() before step()")
        outcome = self._outcomes([action])[0]
        if self.settings.strict and outcome.kind in ("malformed", "invalid_box"):
            raise StrictActionError(
                f"strict=True: {'a malformed action' if outcome.kind == 'malformed' else 'an invalid box'} "
                f"({describe(action)}): {outcome.reason or 'no reason given'}; strict=False pays "
                f"{'malformed_penalty' if outcome.kind == 'malformed' else 'invalid_box_penalty'} instead"
            )
        if outcome.kind == "region":
            self.view_box = outcome.image_box
            self._view_image = outcome.view
            self.steps_taken += 1
            self._final_view = outcome.image_boxes is not None and len(outcome.image_boxes) > 1
        if outcome.kind in ("region", "search"):
            self.scores, self.stats = outcome.scores, outcome.stats
            self._view_embedding = outcome.embedding
        if outcome.search is not None:
            found = outcome.search
            self.pool_ids, self.positives = found.ids, found.positives
            self.candidate_embeddings = found.candidate_embeddings
            self.searches += 1
            self.search_log.append({"ids": list(found.ids), "recall": found.recall,
                                    "has_positive": bool(found.positives.any())})
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
        default :class:`envs.scorers.openclip.OpenClipScorer`) to 1e-6 at most (with it: exactly),
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
        return policy_image(view, self.settings.policy_max_side)

    @property
    def view_size(self) -> tuple[float, float]:
        """Width and height of the current view in original-image pixels."""
        return float(self.view_box[2] - self.view_box[0]), float(self.view_box[3] - self.view_box[1])

    def first_observation(self, index: int) -> tuple[dict[str, Any], np.ndarray]:
        """``(obs, view_box)`` of ``reset(options={"query_index": index})`` without scoring the
        pool or changing the env: for supervised passes over a split (a warm start), where
        ``reset`` would embed every FULL image for nothing."""
        pool = self.pools[self._query_index({"query_index": index})]
        image = self._pool_image(pool)
        obs = {"image": self._observation_image(self._policy_image(image)), "question": pool.question, "step": 0}
        return obs, np.array([0.0, 0.0, image.width, image.height])

    # ------------------------------------------------------------------ internals
    def _pool_image(self, pool: QueryPool) -> Image.Image:
        try:
            return self._load_image(pool.image)
        except DataError as exc:  # name the record, not only the file: the image may have changed since loading
            where = pool.where or f"query {pool.query_id!r}"
            raise DataError(f"{where}: field 'image': {exc}") from exc

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

    def _embed_views(self, views: list[Image.Image]) -> np.ndarray:
        """float64 embeddings ``(len(views), d)`` of the views: one batched image call."""
        embeddings = self.scorer.embed_images(views)
        if not self._scorer_checked:
            check_embeddings(self.scorer, "embed_images", embeddings, len(views), self.candidate_embeddings.shape[1])
            self._scorer_checked = True
        return np.asarray(embeddings, np.float64)

    def _scores_of(self, embeddings: np.ndarray, candidates: np.ndarray | None = None) -> np.ndarray:
        """Cosine similarities ``(len(embeddings), K)`` against ``candidates`` (default: the current pool's).

        One float64 matrix-vector product per view: a matrix product's rounding depends
        on how many rows it has, which would make a view's scores depend on its group.
        """
        candidates = self.candidate_embeddings if candidates is None else candidates
        return np.stack([candidates @ row for row in embeddings]).reshape(len(embeddings), -1)

    def _score_views(self, views: list[Image.Image]) -> np.ndarray:
        """Cosine similarities ``(len(views), K)`` of the views with the current pool: one batched image call."""
        return self._scores_of(self._embed_views(views))

    def _scored_image(self, view: Image.Image) -> Image.Image:
        """What the scorer sees of a REGION crop (resized first under ``resize_crop``)."""
        if not self.settings.reward.resize_crop:
            return view
        return view.resize(region_r1_resized_size(view.width, view.height), Image.Resampling.BICUBIC)

    def _stats(self, scores: np.ndarray, positives: np.ndarray | None = None) -> RankingStats:
        return self.settings.reward.stats(scores, self.positives if positives is None else positives)

    def _image_box(self, norm_box: np.ndarray) -> np.ndarray | str:
        """A REGION box's whole-pixel rectangle in the original image, or why it is invalid."""
        norm = clamp_norm_box(norm_box)
        if not is_valid_box(norm, self.view_size, self.settings.reward.min_box_side):
            width, height = (round(v) for v in self.view_size)
            return (f"box {np.round(norm_box, 4).tolist()} (0-1 of the current {width}x{height} px view) is empty "
                    f"or smaller than {self.settings.reward.min_box_side}px after clamping")
        return pixel_rect(view_box_to_image(norm, self.view_box), self.image.width, self.image.height)

    def _read_group(self, actions: list[Any]) -> tuple[list[Outcome | None], list[tuple[int, np.ndarray]], list[tuple[int, Any]]]:
        """Read each action: the outcomes settled without scoring (FULL, malformed, invalid
        boxes, a spent search budget), the crops to cut ``(action, image box)`` in action
        order, and the actions that need a view embedding ``(action, read action)``."""
        config = self.settings.reward
        outcomes: list[Outcome | None] = [None] * len(actions)
        crops: list[tuple[int, np.ndarray]] = []  # (action, image box), in action order
        jobs: list[tuple[int, Any]] = []  # actions that need a view embedding
        for i, action in enumerate(actions):
            read = read_action(action, search=self.settings.search, max_regions=self.settings.max_regions)
            decision = FULL if read.decision == MALFORMED and config.malformed_as_full else read.decision
            if read.invalid_box:
                outcomes[i] = Outcome("invalid_box", config.invalid_box_penalty, True, REGION, reason=read.reason)
            elif decision == MALFORMED:
                outcomes[i] = Outcome("malformed", config.malformed_penalty, True, reason=read.reason)
            elif read.search and self.searches >= self.settings.search_budget:
                reason = f"search budget of {self.settings.search_budget} per episode is spent"
                outcomes[i] = Outcome("malformed", config.malformed_penalty, True, decision, reason=reason)
            elif decision == FULL and not read.search:
                outcomes[i] = self._stop_outcome()
            elif decision == FULL:
                jobs.append((i, read))
            elif self._final_view:
                reason = "the view is fused from several regions: it cannot be cropped again"
                outcomes[i] = Outcome("invalid_box", config.invalid_box_penalty, True, REGION, reason=reason)
            else:
                boxes = [self._image_box(box) for box in read.boxes]
                bad = next((b for b in boxes if isinstance(b, str)), None)
                if bad is not None:
                    outcomes[i] = Outcome("invalid_box", config.invalid_box_penalty, True, REGION, reason=bad)
                else:
                    crops += [(i, box) for box in boxes]
                    jobs.append((i, read))
        return outcomes, crops, jobs

    def _outcomes(self, actions: list[Any]) -> list[Outcome]:
        """The outcome of each action from the current state (the one path: FULL, REGION with
        one or several boxes, SEARCH, and every malformed or invalid action).

        Every crop of the group goes through ONE scorer call, every search through one
        index call (and every text rewrite through one text call), so a GRPO group still
        costs one batch.
        """
        outcomes, crops, jobs = self._read_group(actions)
        # Each distinct rectangle is cut and embedded once (a multi-region oracle's pairs
        # share their crops); with a batch-invariant scorer that changes no score.
        unique: dict[tuple, int] = {}
        for _, image_box in crops:
            unique.setdefault(tuple(image_box.tolist()), len(unique))
        distinct = [crop(self.image, np.array(key)) for key in unique]
        embedded_distinct = self._embed_views([self._scored_image(view) for view in distinct]) if distinct else None
        slot = [unique[tuple(image_box.tolist())] for _, image_box in crops]
        views = [distinct[n] for n in slot]
        embedded = embedded_distinct[slot] if distinct else None
        rows: dict[int, list[int]] = {}
        for row, (i, _) in enumerate(crops):
            rows.setdefault(i, []).append(row)
        searches = [(i, read) for i, read in jobs if read.search]
        view_embeddings = {i: self._fused(embedded, rows[i]) if i in rows else self._view_embedding for i, _ in jobs}
        found = self._search([view_embeddings[i] for i, _ in searches], [read.query for _, read in searches])
        results = dict(zip([i for i, _ in searches], found))
        for i, read in jobs:
            embedding, result = view_embeddings[i], results.get(i)
            if result is None:
                scores, stats = self._scores_of(embedding[None])[0], None
            else:
                scores = self._scores_of(embedding[None], result.candidate_embeddings)[0]
                stats = self._stats(scores, result.positives)
            if i in rows:
                first = rows[i][0]
                image_boxes = np.stack([crops[r][1] for r in rows[i]])
                outcomes[i] = self._region_outcome(
                    crops[first][1], views[first], scores, embedding=embedding, image_boxes=image_boxes,
                    stats=stats, search=result,
                )
            else:
                outcomes[i] = self._search_outcome(scores, stats, embedding, result)
        return outcomes

    @staticmethod
    def _fused(embedded: np.ndarray, rows: list[int]) -> np.ndarray:
        """The view embedding of a REGION's crops: the crop's own for one box; for several,
        their re-normalized mean (:func:`envs.scorers.openclip.combine_features`, Region-R1's rule for
        image+text): every crop is a unit vector in the same space, so the mean weighs each
        region equally and re-normalizing keeps the scores cosines."""
        if len(rows) == 1:
            return embedded[rows[0]]
        return np.asarray(combine_features(embedded[rows].astype(np.float32)), np.float64)

    def _search(self, embeddings: list[np.ndarray], queries: list[str | None]) -> list[SearchResult]:
        """Re-retrieve the top-K (K: the query's own pool size) for each view embedding.

        A text rewrite is embedded by the scorer's text tower and combined with the view
        by the same re-normalized sum (equal weight: both are unit vectors in the shared
        space, so neither dominates, and the result is again a unit query). The pool is
        still ranked by the view alone: the rewrite only steers what is retrieved.
        """
        if not embeddings:
            return []
        queries_vectors = np.stack(embeddings)
        notes = [""] * len(embeddings)
        texts = [(n, q) for n, q in enumerate(queries) if q]
        if texts:
            try:
                text_vectors = np.asarray(self.scorer.embed_texts([q for _, q in texts]), np.float64)
            except (AttributeError, NotImplementedError) as exc:  # e.g. a scorer client without a text tower
                text_vectors = None
                for n, _ in texts:
                    notes[n] = f"text rewrite not used: the scorer cannot embed texts ({type(exc).__name__})"
            if text_vectors is not None:
                for (n, _), vector in zip(texts, text_vectors):
                    queries_vectors[n] = np.asarray(combine_features([queries_vectors[n], vector]), np.float64)
        k = len(self.pool.candidates)
        indices, _ = self.kb_index.search_indices(queries_vectors, k)
        gold = self.pool.gold
        results = []
        for row, note in zip(indices, notes):
            row = row[row >= 0]
            ids = tuple(self.kb_index.ids[j] for j in row)
            vectors = np.asarray(self.kb_index.vectors[row], np.float64)
            results.append(SearchResult(ids, vectors, positives_by_id(ids, gold), kb_recall_at_k(ids, gold, k), note))
        return results

    def _search_outcome(self, scores: np.ndarray, stats: RankingStats, embedding: np.ndarray,
                        result: SearchResult) -> Outcome:
        """FULL with SEARCH: re-retrieve with the current view, re-rank, and stop."""
        if self.settings.reward_mode == "incremental":
            terms = region_reward(self.stats, stats, self.settings.reward)
            terms = terms._replace(reward=terms.reward - self.settings.search_cost)
        else:
            terms = search_reward(self.baseline_stats, stats, self.searches + 1, self.settings.reward,
                                  self.settings.search_cost, self._iou(self.view_box) if self.steps_taken else 0.0)
        return Outcome("search", float(terms.reward), True, FULL, scores=scores, stats=stats, terms=terms,
                       embedding=embedding, search=result, reason=result.note)

    def _stop_outcome(self) -> Outcome:
        if self.steps_taken == 0 and self.searches == 0:
            reward = float(full_reward(self.baseline_stats, self.settings.reward))
            return Outcome("full", reward, True, FULL)
        if self.settings.reward_mode == "terminal":
            terms = self._final_terms(self.stats, self.searches, self.view_box)
            return Outcome("stop", float(terms.reward), True, FULL, terms=terms)
        return Outcome("stop", 0.0, True, FULL)

    def _final_terms(self, stats: RankingStats, searches: int, image_box) -> RewardTerms:
        """Terminal reward terms of ending on ``stats``: against the FULL baseline (of the
        ORIGINAL pool), minus the cost of the episode's searches when SEARCH is on."""
        if not self.settings.search:
            return region_reward(self.baseline_stats, stats, self.settings.reward, self._iou(image_box))
        return search_reward(self.baseline_stats, stats, searches, self.settings.reward, self.settings.search_cost,
                             self._iou(image_box))

    def _region_outcome(self, image_box: np.ndarray, view: Image.Image, scores: np.ndarray, *,
                        embedding: np.ndarray | None = None, image_boxes: np.ndarray | None = None,
                        stats: RankingStats | None = None, search: SearchResult | None = None) -> Outcome:
        stats = self._stats(scores) if stats is None else stats
        several = image_boxes is not None and len(image_boxes) > 1
        # A fused view of several regions is no single image to zoom into: it ends the episode.
        last_step = self.steps_taken + 1 >= self.settings.max_steps or several
        iou_box = image_box if not several else max(image_boxes, key=self._iou)
        if self.settings.reward_mode == "incremental":
            terms = region_reward(self.stats, stats, self.settings.reward, self._iou(iou_box))
            if search is not None:
                terms = terms._replace(reward=terms.reward - self.settings.search_cost)
            reward = float(terms.reward)
        else:
            terms = self._final_terms(stats, self.searches + (search is not None), iou_box)
            reward = float(terms.reward) if last_step else 0.0
        return Outcome(
            "region", reward, last_step, REGION, image_box=image_box, view=view, scores=scores, stats=stats, terms=terms,
            image_boxes=image_boxes, embedding=embedding, search=search, reason=search.note if search else "",
        )

    def _iou(self, image_box: np.ndarray) -> float:
        if self.settings.reward.w_iou == 0.0 or self.pool.box is None:
            return 0.0
        return float(box_iou(image_box, self.pool.box))

    def _observation_image(self, policy_image: Image.Image) -> np.ndarray:
        image = policy_image.resize((self.settings.obs_size, self.settings.obs_size), **_resize_filter(policy_image.size, self.settings.obs_size))
        return np.asarray(image, dtype=np.uint8)

    def _observation(self, policy_image: Image.Image) -> dict[str, Any]:
        return {
            "image": self._observation_image(policy_image),
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
            if outcome.image_boxes is not None and self.settings.max_regions > 1:
                info["boxes"] = outcome.image_boxes.copy()
        if self.settings.search or self.settings.max_regions > 1:
            # Only with the extensions on, so the paper's episode keeps its info exactly.
            info["pool_ids"] = list(self.pool_ids)
            info["pool_has_positive"] = bool(self.positives.any())
            info["searches"] = self.searches
            info["searched"] = outcome is not None and outcome.search is not None
            if info["searched"]:
                info["search_recall"] = outcome.search.recall
        return self._observation(policy_image), info


def _check_env_arguments(pools: Any, scorer: Any, render_mode: str | None, render_modes: list[str]) -> None:
    """Refuse what :class:`RegionRerankEnv` cannot take: an unknown render mode, a path (or
    nothing) instead of loaded pools, no scorer."""
    if render_mode is not None and render_mode not in render_modes:
        raise ValueError(f"render_mode must be one of {render_modes} or None, got {render_mode!r}")
    if isinstance(pools, (str, os.PathLike)) or pools is None:
        raise TypeError(
            f"RegionRerankEnv takes loaded query pools, got {pools!r}; "
            "use gym.make('RegionRerank-v0', dataset=...) or envs.factory.make_env for a path or the default"
        )
    if scorer is None:
        raise TypeError("RegionRerankEnv takes a built scorer; envs.factory.make_scorer() builds the default")


def _observation_spaces(pools: Sequence[QueryPool], obs_size: int, max_steps: int) -> dict[str, spaces.Space]:
    """The observation space's members: the ``obs_size`` square view, the question and the
    crops taken so far."""
    # The charset covers every question in the data, so real (non-ASCII) questions fit.
    charset = sorted(set(string.printable) | {ch for p in pools for ch in p.question})
    max_question = max(64, max(len(p.question) for p in pools))
    return {
        "image": spaces.Box(0, 255, shape=(obs_size, obs_size, 3), dtype=np.uint8),
        "question": QuestionText(max_length=max_question, min_length=0, charset="".join(charset)),
        "step": spaces.Discrete(max_steps + 1),
    }


def _action_spaces(max_regions: int, search: bool) -> dict[str, spaces.Space]:
    """The action space's members: today's ``decision`` and ``box`` (one box), a fixed
    ``(M, 4)`` box plus a ``count`` for ``max_regions = M > 1``, and ``search`` when on."""
    members: dict[str, spaces.Space] = {"decision": spaces.Discrete(2)}
    if max_regions == 1:
        members["box"] = spaces.Box(0.0, 1.0, shape=(4,), dtype=np.float32)
    else:
        members["box"] = spaces.Box(0.0, 1.0, shape=(max_regions, 4), dtype=np.float32)
        members["count"] = spaces.Discrete(max_regions, start=1)
    if search:
        members["search"] = spaces.Discrete(2)
    return members


def _check_index(index: Any, scorer: Scorer) -> None:
    """SEARCH needs an index of the KB built with the env's scorer (the vectors must be
    comparable with its view embeddings and equal to its candidate embeddings)."""
    if index is None:
        raise ValueError(
            "search=True needs a kb_index (an envs.data.kb_index.KnowledgeBaseIndex of the pools' knowledge base, "
            "built with the env's scorer): envs.factory.make_env builds it from the pools' 'kb' file, "
            "recipes/build_index.py caches it on disk"
        )
    for member in ("ids", "vectors", "search_indices", "rows_of"):
        if not hasattr(index, member):
            raise TypeError(f"kb_index {type(index).__name__} has no {member!r}; pass an envs.data.kb_index.KnowledgeBaseIndex")
    name = getattr(index, "scorer_name", "")
    if name and name != scorer.name:
        raise ValueError(f"kb_index was built with scorer {name!r}, but the env scores with {scorer.name!r}")


def _check_index_vectors(index: "KnowledgeBaseIndex", ids: Sequence[str], candidates: np.ndarray) -> None:
    """The index's rows of a pool's candidates must equal the scorer's candidate embeddings
    (same scorer and features), else a re-retrieved pool would be ranked on other vectors."""
    rows = index.rows_of(ids)
    shared = [(n, int(r)) for n, r in enumerate(rows) if r >= 0]
    if not shared:
        return
    pool_rows, index_rows = (list(t) for t in zip(*shared))
    gap = float(np.max(np.abs(np.asarray(index.vectors[index_rows], np.float64) - candidates[pool_rows])))
    if gap > 1e-4:
        raise ValueError(
            f"kb_index vectors differ from the scorer's candidate embeddings by up to {gap:.3g} "
            f"(index features {getattr(index, 'features', '?')!r}); build the index with the scorer's "
            "candidate features (envs.data.kb_index.index_features)"
        )


def policy_image(view: Image.Image, max_side: int | None) -> Image.Image:
    """What the policy is shown of ``view`` under the information gap: shrunk so its longer
    side is at most ``max_side`` (``None``: the view itself)."""
    if max_side is None or max(view.size) <= max_side:
        return view
    scale = max_side / max(view.size)
    size = (max(1, round(view.width * scale)), max(1, round(view.height * scale)))
    return view.resize(size, Image.Resampling.BILINEAR)


def _resize_filter(size: tuple[int, int], target: int) -> dict[str, Any]:
    """PIL resize arguments for the observation: shrinking is antialiased (bilinear, with
    a box pre-reduction that makes large images ~1.6x cheaper); enlarging adds no
    information, so nearest is exact enough and ~8x cheaper than bilinear."""
    if max(size) > target:
        return {"resample": Image.Resampling.BILINEAR, "reducing_gap": 2.0}
    return {"resample": Image.Resampling.NEAREST}
