"""A Qwen-VL checkpoint (Qwen2.5-VL or Qwen3-VL) as a RegionRerank policy (zero-shot, or trained with verl).

:class:`QwenVLPolicy` is a policy callable ``policy(obs, info, env) -> action`` (see
:mod:`agents.evaluation.baselines`), so ``recipes/evaluate.py --vlm PATH`` and
:func:`agents.evaluation.runner.evaluate_policy` run it like any baseline. It shows the model
exactly what the verl agent loop shows it during training: the prompt of
:mod:`agents.qwen.prompts` around ``info["policy_image"]``, resized by qwen-vl-utils with
``min_pixels`` / ``max_pixels`` and the processor's resize factor; and it reads the answer
with the same parser, in the model family's frame (:mod:`agents.qwen.family`: pixels of
the image the model saw for Qwen2.5-VL, 0-1000 of it for Qwen3-VL). The family is read
from the checkpoint's config unless ``images.family`` names it. Multi-step zoom needs no
memory: each step is a fresh conversation about the current view that says how many
crops are left (``obs["step"]``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from agents.qwen.family import patch_size, resize_factor, resolve_family
from agents.qwen.prompts import build_messages
from agents.qwen.vision import check_pixel_limits
from envs.settings import ImageSettings, settings_of
from envs.wrappers import TextAction


class QwenVLPolicy:
    """A Qwen-VL checkpoint as a cropping policy, generating with transformers.

    Args:
        model_path: a Qwen2.5-VL or Qwen3-VL folder (or hub id where the hub is reachable).
        max_new_tokens: most tokens per answer.
        device: torch device; default ``cuda`` when available, else ``cpu``.
        images: pixel limits of the view as shown to the model (bound its image tokens), and
            the model family when it must override the checkpoint's config.
        greedy: greedy decoding (default); otherwise sample with ``temperature``.
        temperature: sampling temperature when not greedy.
        answer_prefix: text every answer starts with, forced before the model writes
            (e.g. :data:`agents.qwen.prompts.REGION_ANSWER_PREFIX`: the model always crops and
            chooses only the box, an evaluation of its boxes alone).

    The model loads once; ``last_text`` holds the latest answer, for inspection.
    """

    def __init__(
        self,
        model_path: str | os.PathLike,
        max_new_tokens: int = 128,
        device: str | None = None,
        images: ImageSettings = ImageSettings(),
        greedy: bool = True,
        temperature: float = 1.0,
        answer_prefix: str = "",
    ):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.family = resolve_family(images.family, model_path)  # refuses an unknown family first
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.processor = AutoProcessor.from_pretrained(model_path)
        check_pixel_limits(self.processor, images)
        self.factor = resize_factor(self.processor)
        dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype).to(self.device).eval()
        self.max_new_tokens = max_new_tokens
        self.images = images
        self.greedy, self.temperature = greedy, temperature
        self.answer_prefix = answer_prefix
        self.name = f"{self.family.label.lower()}:{Path(model_path).name}"
        self.last_text = ""

    def messages(self, obs: dict, info: dict, env) -> list[dict]:
        """The chat for the current step: the view the policy sees and the question."""
        settings = settings_of(env)
        return build_messages(
            info["question"], info["policy_image"], int(obs["step"]), settings.max_steps,
            min_pixels=self.images.min_pixels, max_pixels=self.images.max_pixels, family=self.family,
            search=settings.search, max_regions=settings.max_regions,
        )

    def generate(self, messages: list[dict]) -> str:
        """The model's answer to ``messages`` (special tokens removed)."""
        import torch
        from qwen_vl_utils import process_vision_info

        text = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + self.answer_prefix
        images, _ = process_vision_info(messages, image_patch_size=patch_size(self.processor))
        inputs = self.processor(text=[text], images=images, return_tensors="pt").to(self.device)
        sampling = {"do_sample": False} if self.greedy else {"do_sample": True, "temperature": self.temperature}
        with torch.no_grad():
            output = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling)
        answer = output[:, inputs["input_ids"].shape[1] :]
        return self.answer_prefix + self.processor.batch_decode(answer, skip_special_tokens=True)[0]

    def action_from_text(self, text: str, env) -> Any:
        """The env action for ``text``: a box in the family's frame of the image the model saw
        becomes a 0-1 box of the current view; unparseable text a ``MalformedAction``."""
        wrapper = TextAction(
            env.unwrapped, frame=self.family.frame, min_pixels=self.images.min_pixels,
            max_pixels=self.images.max_pixels, factor=self.factor,
        )
        return wrapper.action(text)

    def __call__(self, obs: dict, info: dict, env) -> Any:
        self.last_text = self.generate(self.messages(obs, info, env))
        return self.action_from_text(self.last_text, env)


def vlm_policies(specs: Sequence[str], images: ImageSettings = ImageSettings()) -> dict[str, QwenVLPolicy]:
    """Greedy :class:`QwenVLPolicy` of each ``PATH`` or ``NAME=PATH`` in ``specs``, by name
    (a bare path is named after its family and folder)."""
    policies = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep:
            name, path = "", spec
        if not Path(path).exists():
            raise ValueError(f"no checkpoint folder at {path!r} (in {spec!r})")
        policy = QwenVLPolicy(path, images=images)
        policies[name.strip() or policy.name] = policy
    return policies
