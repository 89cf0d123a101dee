"""Baseline policies of the paper's evaluation, and the policy interface they share.

A policy is any callable ``policy(obs, info, env) -> action`` returning a native action
``{"decision": 0|1, "box": [x1, y1, x2, y2]}`` (box normalized to the current view) or
an :class:`envs.text_actions.MalformedAction` (a VLM policy parses its own text with
:func:`envs.text_actions.parse_action_text`). ``env`` is the unwrapped :class:`envs.region_rerank.RegionRerankEnv`; learned
policies use only ``obs``/``info``, while the annotated-box and oracle baselines read
privileged state from it (the annotation; the scorer, via ``env.score_actions``).

With the env's SEARCH on (``search=True``) an action may carry ``"search": 1``; with
``max_regions >= 2`` a REGION ``box`` may hold several boxes. The search baselines
(``search-full``, ``search-annotated``, ``oracle-search``) need the first, the
multi-region oracle (``oracle-2box``) the second.
"""

from __future__ import annotations

import itertools
from typing import Any, Callable

import numpy as np

from envs.boxes import expand_box, image_box_to_view
from envs.actions import FULL, REGION
from envs.region_rerank import RegionRerankEnv
from envs.settings import EnvSettings, settings_of

Action = dict[str, Any]
Policy = Callable[[dict, dict, RegionRerankEnv], Any]


def full_action() -> Action:
    return {"decision": FULL, "box": np.zeros(4, np.float32)}


def region_action(box) -> Action:
    return {"decision": REGION, "box": np.asarray(box, np.float32)}


def searching(action: Action) -> Action:
    """``action`` that also re-retrieves the pool with its view (the env's SEARCH)."""
    return {**action, "search": 1}


def _require(env: RegionRerankEnv, name: str, search: bool = False, regions: int = 1) -> None:
    if search and not settings_of(env).search:
        raise ValueError(f"baseline {name!r} needs an env with search=True (--env.search)")
    if settings_of(env).max_regions < regions:
        raise ValueError(f"baseline {name!r} needs an env with max_regions >= {regions} (--env.max-regions {regions})")


def centered_box(scale: float) -> np.ndarray:
    """A 0-1 box of side ``scale`` (a fraction of each side) centred in the view."""
    if not 0.0 < scale <= 1.0:
        raise ValueError(f"center-crop scale must be in (0, 1], got {scale}")
    lo = (1.0 - scale) / 2.0
    return np.array([lo, lo, lo + scale, lo + scale])


def grid_boxes(scales=(0.3, 0.45, 0.6, 0.8), steps: int = 4) -> np.ndarray:
    """Square-ish 0-1 boxes of each ``scale``, slid over a ``steps x steps`` grid."""
    boxes = []
    for scale in scales:
        starts = np.linspace(0.0, 1.0 - scale, steps)
        for x, y in itertools.product(starts, starts):
            boxes.append([x, y, x + scale, y + scale])
    return np.array(boxes)


class FullPolicy:
    """Always keep the full image: the scorer alone."""

    name = "full"

    def __call__(self, obs, info, env) -> Action:
        return full_action()


class CenterCropPolicy:
    """Always crop the centre ``scale`` of the view (a heuristic the paper finds harmful)."""

    def __init__(self, scale: float = 0.5):
        self.box = centered_box(scale)
        self.name = f"center-{scale:g}"

    def __call__(self, obs, info, env) -> Action:
        return region_action(self.box)


class RandomCropPolicy:
    """Crop a random box whose sides are 30-80% of the view's, seeded."""

    name = "random"

    def __init__(self, seed: int = 0, min_side: float = 0.3, max_side: float = 0.8):
        self.rng = np.random.default_rng(seed)
        self.min_side, self.max_side = min_side, max_side

    def __call__(self, obs, info, env) -> Action:
        size = self.rng.uniform(self.min_side, self.max_side, size=2)
        corner = self.rng.uniform(0.0, 1.0 - size)
        return region_action(np.concatenate([corner, corner + size]))


class AnnotatedBoxPolicy:
    """Crop the annotated target box, grown by ``margin`` times its longer side; FULL when
    a query has none."""

    def __init__(self, margin: float = 0.0):
        self.margin = margin
        self.name = "annotated" if margin == 0 else f"annotated+{margin:g}"

    def __call__(self, obs, info, env: RegionRerankEnv) -> Action:
        if env.pool.box is None:
            return full_action()
        box = expand_box(env.pool.box, self.margin, env.image.width, env.image.height)
        return region_action(image_box_to_view(box, env.view_box))


class OraclePolicy:
    """The best of FULL and a grid of boxes, by the reward itself: the upper bound any
    cropping policy can reach with this scorer. All candidates cost one batched forward.
    With ``search=True`` (``oracle-search``) every candidate is also tried with SEARCH:
    the best of grid with search."""

    def __init__(self, boxes: np.ndarray | None = None, search: bool = False):
        self.boxes = grid_boxes() if boxes is None else np.asarray(boxes)
        self.search = search
        self.name = "oracle-search" if search else "oracle"

    def candidates(self, env: RegionRerankEnv) -> list[Action]:
        actions = [full_action()] + [region_action(b) for b in self.boxes]
        if env.pool.box is not None:  # the annotation is one more candidate box
            actions.append(region_action(image_box_to_view(env.pool.box, env.view_box)))
        if self.search:
            _require(env, self.name, search=True)
            actions += [searching(a) for a in actions]
        return actions

    def __call__(self, obs, info, env: RegionRerankEnv) -> Action:
        actions = self.candidates(env)
        rewards = [outcome.reward for outcome in env.score_actions(actions)]
        return actions[int(np.argmax(rewards))]


class SearchFullPolicy:
    """Re-retrieve the pool with the FULL image and stop (the retriever run again with the
    env's scorer: on pools mined by FULL-image similarity it mostly returns the same pool,
    plus a positive the original pool lacked when it is in the top-K)."""

    name = "search-full"

    def __call__(self, obs, info, env: RegionRerankEnv) -> Action:
        _require(env, self.name, search=True)
        return searching(full_action())


class SearchAnnotatedPolicy(AnnotatedBoxPolicy):
    """Crop the annotated box and re-retrieve the pool with the crop (search with FULL when
    a query has no box)."""

    def __init__(self, margin: float = 0.0):
        super().__init__(margin)
        self.name = "search-annotated" if margin == 0 else f"search-annotated+{margin:g}"

    def __call__(self, obs, info, env: RegionRerankEnv) -> Action:
        _require(env, self.name, search=True)
        return searching(super().__call__(obs, info, env))


class TwoBoxOraclePolicy:
    """The multi-region oracle: the best of FULL, every single grid box (and the annotated
    box) and every pair of them (two regions fused into one view), by the reward. Each distinct crop is
    embedded once per query (the env shares crops between actions), so the 2016 pairs of
    the default 64-box grid cost the 64 crops' forwards."""

    name = "oracle-2box"

    def __init__(self, boxes: np.ndarray | None = None):
        self.boxes = grid_boxes() if boxes is None else np.asarray(boxes)

    def __call__(self, obs, info, env: RegionRerankEnv) -> Action:
        _require(env, self.name, regions=2)
        boxes = list(self.boxes)
        if env.pool.box is not None:  # the annotation is one more box, as for the single-box oracle
            boxes.append(image_box_to_view(env.pool.box, env.view_box))
        singles = [region_action(b) for b in boxes]
        pairs = [region_action(np.stack([a, b])) for a, b in itertools.combinations(boxes, 2)]
        actions = [full_action(), *singles, *pairs]
        rewards = [outcome.reward for outcome in env.score_actions(actions)]
        return actions[int(np.argmax(rewards))]


BASELINES: dict[str, Callable[[], Policy]] = {
    "full": FullPolicy,
    "center": CenterCropPolicy,
    "random": RandomCropPolicy,
    "annotated": AnnotatedBoxPolicy,
    "oracle": OraclePolicy,
    "search-full": SearchFullPolicy,
    "search-annotated": SearchAnnotatedPolicy,
    "oracle-search": lambda: OraclePolicy(search=True),
    "oracle-2box": TwoBoxOraclePolicy,
}
"""Baseline name -> constructor with the evaluation's default settings."""


NEEDS: dict[str, dict[str, int | bool]] = {
    "search-full": {"search": True},
    "search-annotated": {"search": True},
    "oracle-search": {"search": True},
    "oracle-2box": {"regions": 2},
}
"""What a baseline needs of the episode beyond the paper's (SEARCH, several boxes)."""


def runnable_baselines(env: Any = None) -> tuple[str, ...]:
    """Names of the baselines ``env`` can run: an env (wrapped or not) or its
    :class:`envs.settings.EnvSettings`; ``None`` is the default episode (no SEARCH, one box)."""
    settings = env if isinstance(env, EnvSettings) else settings_of(env)
    search, regions = settings.search, settings.max_regions
    return tuple(
        name for name in BASELINES
        if (search or not NEEDS.get(name, {}).get("search")) and regions >= int(NEEDS.get(name, {}).get("regions", 1))
    )


def baseline_policies(
    names=None, *, env: Any = None, center_scale: float = 0.5, annotated_margin: float = 0.0, seed: int = 0
) -> dict[str, Policy]:
    """The named baselines, keyed by their display names (e.g. ``"center-0.5"``).

    ``names=None``: every baseline ``env`` (an env or its ``EnvSettings``; ``None``: the
    default episode) can run (:func:`runnable_baselines`), so
    ``evaluate_and_report(env, baseline_policies(env=env), ...)`` never asks for SEARCH on
    an env without it.
    """
    names = runnable_baselines(env) if names is None else names
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {sorted(BASELINES)}")
    settings = {
        "center": lambda: CenterCropPolicy(center_scale),
        "random": lambda: RandomCropPolicy(seed),
        "annotated": lambda: AnnotatedBoxPolicy(annotated_margin),
        "search-annotated": lambda: SearchAnnotatedPolicy(annotated_margin),
    }
    policies = [settings.get(name, BASELINES[name])() for name in names]
    return {policy.name: policy for policy in policies}
