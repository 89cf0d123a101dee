"""The settings objects that travel from a recipe to where they are used.

One object per concern, each a frozen dataclass with documented fields:

- :class:`ScorerSettings`: which frozen re-ranker, on which device, with which cache;
- :class:`EnvSettings`: the episode (steps, reward and how it is paid, what the policy sees);
- :class:`ImageSettings`: the pixel limits of an image shown to a Qwen-VL policy.

The recipes nest them (so their flags read ``--scorer.model``, ``--env.max-steps``), the
verl agent loop receives them in its config file, and :mod:`envs.factory` builds scorers
and envs from them. They are serialized once (:func:`settings_to_dict`: plain JSON/YAML
types) and parsed once (:func:`settings_from_dict`, which names the unknown or mistyped
key). Adding an env knob is one change: a field of :class:`EnvSettings` (its default and
docstring), which every recipe's CLI, the agent-loop config and ``gym.make`` then accept,
plus the code in :class:`envs.region_rerank.RegionRerankEnv` that uses it.

This module depends only on :mod:`rewards` and :mod:`envs.boxes`, so anything may import it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar, get_args

import numpy as np

from envs.boxes import QWEN_MIN_PIXELS
from rewards import RewardConfig

RewardMode = Literal["terminal", "incremental"]
CandidateFeatures = Literal["auto", "image", "text", "image+text"]
Invariance = Literal["auto", "rows", "padded"]
"""How a built-in scorer keeps every forward one shape (:func:`envs.scorers.openclip.forward_rows`)."""

S = TypeVar("S")


OptionValue = int | float | bool | str | None
"""A scorer option's value as the command line reads it (tyro tries the types in this order)."""


@dataclass(frozen=True)
class ScorerSettings:
    """The frozen image-text re-ranker an env scores with."""

    model: str | None = None
    """which re-ranker: ``module:attr`` naming a scorer factory or class of your own (called
    with ``options``, see ``examples/custom_scorer.py``); a local folder of a transformers
    CLIP / SigLIP model (``save_pretrained``); an open_clip model name (e.g. ``ViT-B-16``,
    ``EVA02-L-14``); ``None``: the embedded rr-tiny scorer"""
    pretrained: str | None = None
    """open_clip zoo tag or local checkpoint file of ``model``; ``None``: random weights
    (for a named open_clip model) or the shipped checkpoint (for the default)"""
    device: str = "cpu"
    """torch device of the scorer"""
    candidate_features: CandidateFeatures = "auto"
    """how a candidate becomes a vector: its image, its text, both (summed and re-normalized,
    Region-R1's image+text), or ``auto`` (both when it has both)"""
    cache_dir: str | None = None
    """folder of an on-disk candidate-embedding cache shared by processes; ``None``: memory only"""
    invariance: Invariance = "auto"
    """the built-in scorers' fixed forward shape: ``rows`` (one row per image: a single view
    costs one image), ``padded`` (``batch_size`` rows: a group costs one forward) or ``auto``
    (rows on CPU, padded elsewhere); both keep a view's scores bitwise the same alone and in a group"""
    options: dict[str, OptionValue] = field(default_factory=dict)
    """keyword arguments of a ``module:attr`` scorer factory or of the transformers scorer
    (``--scorer.options bins 8 name hist``: values read as int, float, bool, None, else str;
    from Python or a config file any value); ignored for open_clip models"""

    def __post_init__(self) -> None:
        if self.candidate_features not in get_args(CandidateFeatures):
            raise ValueError(
                f"candidate_features={self.candidate_features!r}; expected one of {get_args(CandidateFeatures)}"
            )
        if self.invariance not in get_args(Invariance):
            raise ValueError(f"invariance={self.invariance!r}; expected one of {get_args(Invariance)}")
        if self.model is None and self.pretrained is not None:
            raise ValueError("pretrained= needs a model name; model=None means the embedded default scorer")

    def __hash__(self) -> int:  # ``options`` is a dict; settings key per-process scorer caches
        return hash(repr(settings_to_dict(self)))


@dataclass(frozen=True)
class EnvSettings:
    """One RegionRerank episode: how many crops, how they are paid, what the policy sees."""

    max_steps: int = 1
    """REGION steps allowed per episode (1 is the paper's setting; more is multi-step zoom)"""
    reward_mode: RewardMode = "terminal"
    """how zoom steps are paid: ``terminal`` (the final view against FULL, once) or
    ``incremental`` (each step against the view it replaces)"""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """reward weights, penalties and options (:class:`rewards.RewardConfig`)"""
    obs_size: int = 224
    """side of the square observation image"""
    policy_max_side: int | None = None
    """information gap: longest side of the view shown to the policy (crops are still cut and
    scored at full resolution); ``None``: the full-resolution view"""
    search: bool = False
    """add the SEARCH flag to the action space: re-retrieve the top-K of the pools' knowledge
    base with the step's view, replacing the pool (off: the paper's re-ranking-only episode)"""
    search_budget: int = 1
    """searches allowed per episode (with ``search``); a search beyond it is malformed"""
    search_cost: float = 0.05
    """reward subtracted per search performed (with ``search``)"""
    max_regions: int = 1
    """boxes a REGION action may hold; their crops' embeddings are fused into one view
    (1: the paper's single crop, and today's action space)"""
    strict: bool = False
    """debugging: ``step`` raises :class:`envs.region_rerank.StrictActionError` (naming the
    action and why) on a malformed action or an invalid box instead of paying its penalty
    (``False``, the default: the penalty, and no action raises)"""

    def __post_init__(self) -> None:
        if self.search_budget < 1:
            raise ValueError(f"search_budget must be >= 1, got {self.search_budget}")
        if not np.isfinite(self.search_cost) or self.search_cost < 0:
            raise ValueError(f"search_cost must be finite and >= 0, got {self.search_cost}")
        if not 1 <= self.max_regions <= 16:
            raise ValueError(f"max_regions must be in 1..16, got {self.max_regions}")
        if self.max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.reward_mode not in get_args(RewardMode):
            raise ValueError(f"reward_mode must be 'terminal' or 'incremental', got {self.reward_mode!r}")
        if self.obs_size < 8:
            raise ValueError(f"obs_size must be >= 8, got {self.obs_size}")
        if self.policy_max_side is not None and self.policy_max_side < 8:
            raise ValueError(f"policy_max_side must be >= 8 or None, got {self.policy_max_side}")


@dataclass(frozen=True)
class ImageSettings:
    """How an image is shown to a Qwen-VL policy: qwen-vl-utils' ``min_pixels`` /
    ``max_pixels``, and the model family that fixes the prompt and the box frame.

    A Qwen2.5-VL policy writes its boxes in pixels of the resized image (the ``"resized"``
    frame of :mod:`envs.boxes`), a Qwen3-VL policy in 0-1000 of it (``"norm1000"``), so
    the prompt builder, the parser and the data export must all use the same limits and
    family: they all take this object (:mod:`agents.qwen.family` resolves ``family``).
    """

    min_pixels: int = QWEN_MIN_PIXELS
    """least pixels of an image shown to the policy"""
    max_pixels: int = 1024 * 28 * 28
    """most pixels of an image shown to the policy; bounds its tokens to ``max_pixels / 784``
    (the default, 1024 tokens, keeps a Qwen2.5-VL prompt on one GPU; the model allows 16384);
    Qwen3-VL's tokens are 32 x 32 px, so it makes at most ``max_pixels / 1024`` of them"""
    family: str | None = None
    """policy model family (``qwen2_5_vl``, ``qwen3_vl``): its prompt wording, box frame and
    resize rule; ``None``: read from the checkpoint's config (``model_type``). Set it to
    override what the checkpoint says (see :mod:`agents.qwen.family`)"""

    def __post_init__(self) -> None:
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"need 0 < min_pixels <= max_pixels, got min_pixels={self.min_pixels}, max_pixels={self.max_pixels}"
            )
        if self.family is not None and (not isinstance(self.family, str) or not self.family.strip()):
            raise ValueError(f"family must be a family name or None, got {self.family!r}")


def settings_to_dict(settings: Any) -> dict[str, Any]:
    """A settings dataclass (nested ones included) as plain JSON/YAML types; paths become strings."""
    return _plain(dataclasses.asdict(settings))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def settings_from_dict(cls: type[S], data: Mapping[str, Any] | S | None, where: str = "") -> S:
    """``cls`` from a mapping of its fields (nested settings as nested mappings).

    ``data`` may already be a ``cls`` (returned as is) or ``None`` (the defaults). Values are
    taken as given; the dataclass's own checks run on construction.

    Raises:
        ValueError: naming ``where`` and the key, for an unknown key or a nested value
            that is not a mapping.
    """
    if data is None:
        return cls()
    if isinstance(data, cls):
        return data
    label = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{label}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{label}: unknown key(s) {unknown}; known: {sorted(names)}")
    values = {}
    for key, value in data.items():
        nested = _dataclass_of(hints[key])
        if nested is not None and value is not None:
            value = settings_from_dict(nested, value, f"{label}.{key}")
        values[key] = value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{label}: {exc}") from exc


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass a field annotation names (``X`` or ``X | None``), else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [arg for arg in typing.get_args(hint) if dataclasses.is_dataclass(arg)]
        return found[0] if len(found) == 1 else None
    return None



def settings_of(env: Any) -> EnvSettings:
    """The :class:`EnvSettings` of ``env`` (through any wrappers): the one place callers
    read an env's settings; an env that is not a RegionRerankEnv has the defaults."""
    settings = getattr(getattr(env, "unwrapped", env), "settings", None)
    return settings if isinstance(settings, EnvSettings) else EnvSettings()


def merged_env_settings(settings: EnvSettings | Mapping[str, Any] | None, fields: Mapping[str, Any]) -> EnvSettings:
    """``settings`` (an :class:`EnvSettings`, a mapping of its fields or ``None``) with single
    ``fields`` given as keywords on top: the one merge rule of the env and its factory. An
    unknown keyword is a ``TypeError`` naming it and the known ones."""
    base = settings_from_dict(EnvSettings, settings, "settings")
    if not fields:
        return base
    known = {f.name for f in dataclasses.fields(EnvSettings)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise TypeError(f"RegionRerankEnv got unknown keyword(s) {unknown}; env settings are {sorted(known)}")
    return dataclasses.replace(base, **fields)
