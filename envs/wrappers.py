"""Action wrappers: the same env driven by a flat ``Box`` or by a VLM's text."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from envs.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS, Frame, qwen_resized_size
from envs.region_rerank import FULL, REGION
from envs.text_actions import ParsedAction, parse_action_text


class FlatBoxAction(gym.ActionWrapper):
    """``Box(0, 1, (5,))`` actions for libraries without ``Dict`` action spaces.

    ``a[0] >= 0.5`` means REGION, otherwise FULL; ``a[1:5]`` is the box
    ``[x1, y1, x2, y2]`` normalized to the current view (ignored for FULL).
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.action_space = spaces.Box(0.0, 1.0, shape=(5,), dtype=np.float32)

    def action(self, action):
        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if a.shape != (5,):
            # A wrong-shaped action is a policy bug, not an env crash: pass it on as malformed.
            return {"decision": -1, "box": np.full(4, np.nan, np.float32)}
        return {"decision": REGION if a[0] >= 0.5 else FULL, "box": a[1:]}


class TextAction(gym.ActionWrapper):
    """Text actions from a VLM, parsed with :func:`envs.text_actions.parse_action_text`.

    Region-R1's ``image_zoom_in_tool`` call, ``<box>``/``<bbox>`` tags and the FULL
    marker ``NO_CROP_NEEDED`` are understood. ``frame`` says what the box numbers mean:
    ``"resized"`` (pixels of the image the VLM saw, i.e. ``info["policy_image"]`` after
    Qwen2.5-VL's resize with ``min_pixels``/``max_pixels``; Qwen2.5-VL's own frame),
    ``"pixel"`` (original pixels of the current view), ``"norm"`` (0-1) or
    ``"norm1000"`` (0-1000). Text that does not parse is passed on as a
    :class:`envs.text_actions.MalformedAction`, which the env pays with the malformed
    penalty (or as FULL, by ``RewardConfig.malformed_as_full``): it never raises.
    """

    def __init__(
        self,
        env: gym.Env,
        frame: Frame = "resized",
        min_pixels: int = QWEN_MIN_PIXELS,
        max_pixels: int = QWEN_MAX_PIXELS,
        max_length: int = 8192,
    ):
        super().__init__(env)
        self.frame = frame
        self.min_pixels = min_pixels
        self.max_pixels = max_pixels
        self.action_space = spaces.Text(max_length=max_length)

    def resized_size(self) -> tuple[int, int]:
        """Size of the image the VLM sees for the current view (the ``"resized"`` frame)."""
        image = self.env.unwrapped.policy_image
        return qwen_resized_size(image.width, image.height, self.min_pixels, self.max_pixels)

    def action(self, text):
        env = self.env.unwrapped
        parsed = parse_action_text(
            str(text), frame=self.frame, view_size=env.view_size, resized_size=self.resized_size()
        )
        if isinstance(parsed, ParsedAction):
            box = parsed.box if parsed.box is not None else np.zeros(4)
            return {"decision": parsed.decision, "box": np.asarray(box, dtype=np.float64)}
        return parsed
