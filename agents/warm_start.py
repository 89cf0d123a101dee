"""Supervised warm start of a tiny Qwen-VL on the answer format, so sampled rollouts carry signal.

A randomly initialised policy almost never writes a parseable answer, so every reward is
the malformed penalty and every group-relative advantage is 0: RL then runs but teaches
nothing. This module fine-tunes the tiny model of :mod:`agents.tiny_qwen` with a plain
transformers loop on the agent loop's own prompt (:func:`agents.prompts.build_messages`,
the image resized by qwen-vl-utils exactly as the agent loop resizes it) and targets
drawn half FULL (``NO_CROP_NEEDED``) and half REGION (the tool call with the benchmark's
annotated box in the model family's frame, the frame the parser reads: ``"resized"`` for
Qwen2.5-VL, ``"norm1000"`` for Qwen3-VL, see :mod:`agents.model_family`). The decision is a
fair coin per query, so the warm-started policy knows *how* to answer and *where* the
target tends to be, and RL has to learn *when* cropping pays.

:func:`sample_answers` measures what matters for RL: the share of answers sampled at
temperature 1 that parse, and how often each decision appears.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.model_family import QWEN2_5_VL, ModelFamily, family_of, get_family, patch_size, resize_factor
from agents.prompts import build_messages
from envs.boxes import QWEN_MIN_PIXELS, qwen_resized_size
from envs.data import QueryPool
from envs.text_actions import FULL_MARKER, MalformedAction, format_action_text, parse_action_text

IGNORE = -100
"""Label of tokens without loss (the prompt)."""


@dataclass
class WarmStartConfig:
    """Warm start of the tiny policy (``recipes/warm_start_tiny_qwen.py`` exposes it as flags)."""

    out: Path = Path("agents/assets/tiny-qwen-rr")
    """output folder (a Hugging Face checkpoint folder); the default is the one --backend verl-cpu ships"""
    seed: int = 0
    """seed of the initial weights, the answer coin, batch order and evaluation sampling"""
    steps: int = 1200
    """optimizer steps"""
    batch_size: int = 8
    """examples per step"""
    lr: float = 3e-3
    """AdamW learning rate (cosine decay to 10%)"""
    region_share: float = 0.5
    """share of REGION (annotated box) targets; the rest answer NO_CROP_NEEDED"""
    max_pixels: int = 64 * 28 * 28
    """most pixels of the image shown (match the verl-cpu run's max_pixels)"""
    min_pixels: int = QWEN_MIN_PIXELS
    family: str = QWEN2_5_VL.name
    """model family of the tiny policy built and warm-started (qwen2_5_vl: the shipped one; qwen3_vl)"""
    """least pixels of the image shown"""
    train_queries: int | None = None
    """use only the first N training queries (default: all)"""
    eval_answers: int = 200
    """answers sampled at temperature 1 on validation queries to measure the parse rate"""
    threads: int = 1
    """torch threads (one: a tiny model gains nothing from more, and loses much on a busy machine)"""


@dataclass
class Example:
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


def shown_image(
    pool: QueryPool, min_pixels: int, max_pixels: int, processor: Any = None, family: str | ModelFamily | None = None
) -> tuple[list[dict], Any, tuple[int, int]]:
    """The first-turn messages of ``pool`` (worded for ``family``), the image as the policy
    sees it (qwen-vl-utils resize with ``processor``'s patch size; Qwen2.5-VL's without one)
    and the original view size."""
    from PIL import Image
    from qwen_vl_utils import process_vision_info

    with Image.open(pool.image) as image:
        view = image.convert("RGB")
    messages = build_messages(pool.question, view, min_pixels=min_pixels, max_pixels=max_pixels, family=family)
    images, _ = process_vision_info(messages, image_patch_size=patch_size(processor) if processor is not None else 14)
    return messages, images[0], view.size


def target_answer(
    pool: QueryPool, region: bool, view_size: tuple[int, int], resized: tuple[int, int], family: str | ModelFamily | None = None
) -> str:
    """``NO_CROP_NEEDED`` or the crop tool call on the annotated box, in the family's frame."""
    if not region or pool.box is None:
        return FULL_MARKER
    width, height = view_size
    x1, y1, x2, y2 = pool.box
    frame = get_family(family).frame
    return format_action_text(1, [x1 / width, y1 / height, x2 / width, y2 / height], frame, view_size, resized)


def _family_and_factor(processor, config: WarmStartConfig) -> tuple[ModelFamily, int]:
    return get_family(config.family), resize_factor(processor)


def build_example(processor, pool: QueryPool, region: bool, config: WarmStartConfig) -> Example:
    """Prompt and answer tokens with the loss on the answer (and its end-of-turn token) only."""
    family, factor = _family_and_factor(processor, config)
    messages, image, view_size = shown_image(pool, config.min_pixels, config.max_pixels, processor, family)
    resized = qwen_resized_size(*view_size, min_pixels=config.min_pixels, max_pixels=config.max_pixels, factor=factor)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    features = processor(text=[prompt], images=[image], return_tensors="pt")
    # Every answer starts with one of the tokenizer's added tokens, so its ids are the same
    # alone as after the prompt.
    answer = target_answer(pool, region, view_size, resized, family) + processor.tokenizer.eos_token
    answer_ids = torch.tensor(processor.tokenizer.encode(answer, add_special_tokens=False))
    prompt_ids = features["input_ids"][0]
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE), answer_ids])
    return Example(torch.cat([prompt_ids, answer_ids]), labels, features["pixel_values"], features["image_grid_thw"])


def collate(examples: Sequence[Example], pad_id: int, image_token_id: int) -> dict[str, torch.Tensor]:
    """A right-padded batch; every example's image patches in order."""
    length = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, e in enumerate(examples):
        ids[row, : len(e.input_ids)] = e.input_ids
        labels[row, : len(e.labels)] = e.labels
        mask[row, : len(e.input_ids)] = 1
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "labels": labels,
        "pixel_values": torch.cat([e.pixel_values for e in examples]),
        "image_grid_thw": torch.cat([e.image_grid_thw for e in examples]),
        "mm_token_type_ids": (ids == image_token_id).long(),
    }


def train_warm_start(model, processor, pools: Sequence[QueryPool], config: WarmStartConfig) -> list[float]:
    """Fine-tune ``model`` in place on ``pools``; returns the loss of every step."""
    coin = random.Random(config.seed)
    examples = [build_example(processor, pool, coin.random() < config.region_share, config) for pool in
                tqdm(pools, desc="tokenizing", leave=False)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / max(config.steps, 1), 1.0)))
    )
    order = random.Random(config.seed + 1)
    pad_id, image_id = processor.tokenizer.pad_token_id, model.config.image_token_id
    losses = []
    model.train()
    for _ in tqdm(range(config.steps), desc="warm start"):
        batch = collate(order.sample(examples, config.batch_size), pad_id, image_id)
        loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss))
    model.eval()
    return losses


def sample_answers(model, processor, pools: Sequence[QueryPool], n: int, config: WarmStartConfig) -> dict[str, Any]:
    """Sample ``n`` answers at temperature 1 (cycling over ``pools``) and parse each as the
    agent loop does; returns the parse rate, the decision counts and examples."""
    torch.manual_seed(config.seed)
    counts = {"full": 0, "region": 0, "malformed": 0}
    shown = []
    family, factor = _family_and_factor(processor, config)
    for i in range(n):
        pool = pools[i % len(pools)]
        messages, image, view_size = shown_image(pool, config.min_pixels, config.max_pixels, processor, family)
        resized = qwen_resized_size(*view_size, min_pixels=config.min_pixels, max_pixels=config.max_pixels, factor=factor)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], images=[image], return_tensors="pt")
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == model.config.image_token_id).long()
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=48, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        text = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        action = parse_action_text(text, family.frame, view_size, resized)
        key = "malformed" if isinstance(action, MalformedAction) else ("region" if action.decision == 1 else "full")
        counts[key] += 1
        if len(shown) < 6:
            shown.append(text)
    return {"answers": n, **counts, "parse_rate": (counts["full"] + counts["region"]) / n, "examples": shown}


def warm_start(config: WarmStartConfig, train_pools: Sequence[QueryPool], val_pools: Sequence[QueryPool]) -> dict:
    """Build the tiny Qwen2.5-VL (seed ``config.seed``), fine-tune it, measure sampled
    answers, and save the checkpoint and ``warm_start.json`` to ``config.out``."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from agents.tiny_qwen import build_tiny_qwen

    start = time.perf_counter()
    out = build_tiny_qwen(config.out, seed=config.seed, family=config.family)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    assert family_of(model.config) is get_family(config.family)
    processor = AutoProcessor.from_pretrained(out)
    pools = list(train_pools)[: config.train_queries]
    torch.manual_seed(config.seed)
    losses = train_warm_start(model, processor, pools, config)
    train_s = time.perf_counter() - start
    report = sample_answers(model, processor, list(val_pools), config.eval_answers, config)
    model.save_pretrained(out)
    record = {
        "config": {k: v for k, v in asdict(config).items() if k != "out"},
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_s, 1),
        "loss_first": losses[0],
        "loss_last_50": float(np.mean(losses[-50:])),
        "sampled": report,
    }
    (out / "warm_start.json").write_text(json.dumps(record, indent=2))
    return record
