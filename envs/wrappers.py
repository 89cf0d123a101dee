"""Wrappers: the same env driven by a flat ``Box``, by a VLM's text, or with a numeric question.

Every wrapper records its constructor arguments (``gymnasium.utils.RecordConstructorArgs``),
so ``wrapped.spec`` lists it and ``gym.make(wrapped.spec)`` rebuilds the whole stack, and
each passes ``gymnasium.utils.env_checker.check_env``. None raises on any action.

Stable-Baselines3 (or any library that wants only ``Box`` / ``Discrete`` spaces) runs the
env unchanged as ``FlatBoxAction(HashedQuestion(env))``.
"""

from __future__ import annotations

import re
import string
import zlib
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.actions import BOX_ENCODINGS, BoxEncoding, InvalidBoxAction, MalformedAction, read_flat_action
from envs.boxes import FRAMES, QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, QWEN_PATCH_FACTOR, Frame, qwen_resized_size
from envs.text_actions import MAX_TEXT_CHARS, RULES, text_to_action
from envs.settings import settings_of

__all__ = ["FlatBoxAction", "HashedQuestion", "TextAction", "hashed_bag_of_words"]


class FlatBoxAction(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """A flat 5-number ``Box`` action for libraries without ``Dict`` action spaces.

    ``encoding="center"`` (the default): ``Box(-1, 1, (5,))``, ``a = [d, cx, cy, w, h]``.
    ``d >= 0`` means REGION, otherwise FULL; the box's centre ``cx, cy`` maps from
    ``[-1, 1]`` onto the current view and its width and height ``w, h`` onto 10-100% of the
    view's sides, shifted inside the view where it would reach past an edge
    (:func:`envs.actions.center_box`). Every action is therefore a valid box (on views of
    at least 40 px with the default ``min_box_side``), and a Gaussian policy centred at 0
    starts from even decisions and mid-sized central crops.

    ``encoding="corners"``: ``Box(0, 1, (5,))``, ``a = [d, x1, y1, x2, y2]``, the native
    action's corners normalized to the current view, read as given (``x2 < x1`` is an
    inverted, invalid box: ~87% of ``N(0, 1)`` draws are); ``d >= 0.5`` means REGION. The
    encoding before ``"center"`` existed.

    The box is ignored for FULL. The 5 values must be finite numbers: a wrong shape, NaN,
    an overflowing integer, strings or a ragged list are passed on as
    :class:`envs.actions.MalformedAction` (the malformed penalty), never raised (see
    :func:`envs.actions.read_flat_action`).

    Args:
        env: a ``RegionRerank-v0`` env (or a wrapper of one with the native action space).
        encoding: ``"center"`` or ``"corners"`` (above).
    """

    def __init__(self, env: gym.Env, encoding: BoxEncoding = "center"):
        if encoding not in BOX_ENCODINGS:
            raise ValueError(f"FlatBoxAction: encoding={encoding!r}; choose from {BOX_ENCODINGS}")
        gym.utils.RecordConstructorArgs.__init__(self, encoding=encoding)
        gym.ActionWrapper.__init__(self, env)
        self.encoding: BoxEncoding = encoding
        low = -1.0 if encoding == "center" else 0.0
        self.action_space = spaces.Box(low, 1.0, shape=(5,), dtype=np.float32)

    def action(self, action: Any) -> dict | MalformedAction:
        return read_flat_action(action, encoding=self.encoding)


class TextAction(gym.ActionWrapper, gym.utils.RecordConstructorArgs):
    """Text actions from a VLM, parsed with :func:`envs.text_actions.parse_action_text`.

    Region-R1's ``image_zoom_in_tool`` call, ``<box>``/``<bbox>`` tags and the FULL
    marker ``NO_CROP_NEEDED`` are understood. Text that does not parse, or an action
    that is not a ``str``, is passed on as a :class:`envs.actions.MalformedAction`, which
    the env pays with the malformed penalty (or as FULL, by
    ``RewardConfig.malformed_as_full``): it never raises.

    Args:
        env: a ``RegionRerank-v0`` env (or a wrapper of one with the native action space).
        frame: what the box numbers mean: ``"resized"`` (pixels of the image the VLM saw,
            i.e. ``info["policy_image"]`` after the Qwen-VL resize with
            ``min_pixels``/``max_pixels`` and ``factor``; Qwen2.5-VL's own frame),
            ``"pixel"`` (original pixels of the current view), ``"norm"`` (0-1) or
            ``"norm1000"`` (0-1000, Qwen3-VL's own frame). ``None`` takes the env's
            ``reward_config.text_frame`` (``"resized"`` by default).
            :attr:`agents.qwen.family.ModelFamily.frame` names a family's frame.
        min_pixels, max_pixels: the resize bounds (the ``"resized"`` frame).
        factor: the resize factor, patch size x merge size of the model's image processor
            (the ``"resized"`` frame; :func:`agents.qwen.family.resize_factor`): 28 for
            Qwen2.5-VL (the default), 32 for Qwen3-VL.
        max_length: longest text of the ``Text`` action space (what ``sample()`` draws).
        rules: ``"project"`` or ``"region_r1_public"`` text rules (see
            :func:`envs.text_actions.parse_action_text`); ``None`` takes the env's
            ``reward_config.text_rules``.
        max_chars: longest text that is parsed; longer text is malformed unread.

    Extreme views: the Qwen-VL resize rule refuses images with an aspect ratio over 200
    (multi-step zoom can reach a 1920 x 5 px view), so in the ``"resized"`` frame such a
    view has no box frame. There a FULL answer is still FULL, unparseable text is still
    malformed, and a REGION answer is an invalid box (``invalid_box_penalty``), with a
    reason naming the view's size.
    """

    def __init__(
        self,
        env: gym.Env,
        frame: Frame | None = None,
        min_pixels: int = QWEN_MIN_PIXELS,
        max_pixels: int = QWEN_MAX_PIXELS,
        max_length: int = 8192,
        rules: str | None = None,
        max_chars: int = MAX_TEXT_CHARS,
        factor: int = QWEN_PATCH_FACTOR,
    ):
        gym.utils.RecordConstructorArgs.__init__(
            self, frame=frame, min_pixels=min_pixels, max_pixels=max_pixels, max_length=max_length, rules=rules,
            max_chars=max_chars, factor=factor,
        )
        gym.ActionWrapper.__init__(self, env)
        config = settings_of(env).reward
        self.frame = frame if frame is not None else config.text_frame
        self.rules = rules if rules is not None else config.text_rules
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.max_chars = max_chars
        if int(factor) != factor or factor < 1:
            raise ValueError(f"factor must be a positive integer, got {factor!r}")
        self.factor = int(factor)
        if self.frame not in FRAMES:  # bad arguments fail here, not at step time
            raise ValueError(f"unknown frame {self.frame!r}; choose from {FRAMES}")
        if self.rules not in RULES:
            raise ValueError(f"unknown text rules {self.rules!r}; choose from {RULES}")
        self.action_space = spaces.Text(max_length=max_length, min_length=0, charset=TEXT_CHARSET)

    def step(self, action: Any):
        observation, reward, terminated, truncated, info = super().step(action)
        if info.get("outcome") == "invalid_box" and "reason" in info:
            # The env knows the view; only this wrapper knows what frame the numbers were in.
            info["reason"] = f"{info['reason']}; the answer's numbers were read in the {self.frame!r} frame ({self._frame_note()})"
        return observation, reward, terminated, truncated, info

    def _frame_note(self) -> str:
        """What a box's numbers meant in :attr:`frame` for the current view."""
        width, height = (round(v) for v in self.env.unwrapped.view_size)
        if self.frame == "resized":
            try:
                shown = "x".join(map(str, self.resized_size()))
            except ValueError:
                shown = "none"
            return f"pixels of the {shown} image the model was shown for the {width}x{height} px view"
        return {"pixel": f"pixels of the {width}x{height} px view", "norm": f"0-1 of the {width}x{height} px view",
                "norm1000": f"0-1000 of the {width}x{height} px view"}.get(self.frame, self.frame)

    def resized_size(self) -> tuple[int, int]:
        """Size of the image the VLM sees for the current view (the ``"resized"`` frame).

        Raises:
            ValueError: if the Qwen-VL resize rule refuses the view (aspect ratio > 200).
        """
        image = self.env.unwrapped.policy_image
        return qwen_resized_size(image.width, image.height, self.min_pixels, self.max_pixels, self.factor)

    def action(self, text: Any) -> dict | MalformedAction | InvalidBoxAction:
        env = self.env.unwrapped
        shown, refused = None, ""
        if self.frame == "resized":
            try:
                shown = self.resized_size()
            except ValueError as err:  # qwen_vl_utils refuses extreme aspect ratios
                width, height = env.policy_image.size
                refused = f"the {width}x{height} view has no Qwen-VL resized frame ({err})"
        return text_to_action(
            text, frame=self.frame, view_size=env.view_size, shown_size=shown, no_frame_reason=refused,
            rules=self.rules, max_chars=self.max_chars, max_regions=settings_of(env).max_regions,
            search=settings_of(env).search,
        )


TEXT_CHARSET = frozenset(string.printable)
"""Characters of :class:`TextAction`'s ``Text`` space: printable ASCII (letters, digits,
punctuation, space, tab, newline), which covers every syntax the parser reads (tool-call
JSON, ``<box>`` tags, ``NO_CROP_NEEDED``). The parser also accepts answers with other
characters around the action (reasoning in any script); the env takes them, a finite
``Text`` charset cannot list them."""

_WORD = re.compile(r"\w+")


def hashed_bag_of_words(text: str, dim: int) -> np.ndarray:
    """``(dim,)`` float32 0/1 vector: 1 at ``crc32(word) % dim`` for each lower-cased word.

    crc32, not ``hash()``: Python salts string hashes per process, so a policy trained in
    one process would read other features in the next.
    """
    features = np.zeros(dim, dtype=np.float32)
    for word in _WORD.findall(text.lower()):
        features[zlib.crc32(word.encode("utf-8")) % dim] = 1.0
    return features


class HashedQuestion(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """The question as numbers: a hashed bag of words, for libraries without ``Text`` spaces.

    Replaces ``obs["question"]`` (a ``Text`` space) with
    ``Box(0, 1, (dim,), float32)``: 1 at ``crc32(word) % dim`` for every lower-cased word
    of the question (see :func:`hashed_bag_of_words`), 0 elsewhere. The image and step
    entries are unchanged, so the observation is a ``Dict`` of ``Box`` / ``Discrete``
    spaces that Stable-Baselines3's ``MultiInputPolicy`` reads as it is::

        env = FlatBoxAction(HashedQuestion(gym.make("RegionRerank-v0", obs_size=64)))

    Args:
        env: a ``RegionRerank-v0`` env (or a wrapper of one with its observation space).
        dim: number of hash buckets. Words sharing a bucket look the same to a policy:
            ``n`` distinct words share about ``n**2 / (2 * dim)`` buckets, so the embedded
            benchmark's 49 words collide in 6 buckets at 256 (``top`` with ``striped``,
            ``right`` with ``star``) and in 1 at the default 2048 (``is`` with ``cyan``).
    """

    def __init__(self, env: gym.Env, dim: int = 2048):
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        gym.utils.RecordConstructorArgs.__init__(self, dim=dim)
        gym.ObservationWrapper.__init__(self, env)
        self.dim = dim
        self.observation_space = spaces.Dict(
            {**env.observation_space.spaces, "question": spaces.Box(0.0, 1.0, shape=(dim,), dtype=np.float32)}
        )

    def observation(self, observation: dict) -> dict:
        return {**observation, "question": hashed_bag_of_words(observation["question"], self.dim)}
