"""Supervised warm start of a tiny Qwen-VL policy: the answer format, and *where* to crop.

A randomly initialised policy almost never writes a parseable answer, so every reward is
the malformed penalty and every group-relative advantage is 0: RL runs but teaches
nothing. And a policy that writes the format but crops at random gives RL a signal too
weak to find the target in a CPU budget. This module fine-tunes the tiny model of
:mod:`agents.qwen.tiny` on the agent loop's own prompt (:func:`agents.qwen.prompts.build_messages`,
the image resized by qwen-vl-utils exactly as the agent loop resizes it), so that:

- **the data teaches where, not which scene**: every example is a scene drawn fresh
  from the embedded benchmark's generator (:func:`envs.data.synthetic.fresh_scene`, a stream no
  split holds), in one of its four mirror images (left-right, top-bottom; the question's
  position words swapped with it), so no scene repeats and nothing can be memorised;
- **both decisions are present, and neither is taught**: the first answer token learns
  ``decision_prior`` for REGION against FULL on every example (a soft target), while the
  rest of the answer is the crop tool call on the annotated box (``region_share`` of the
  examples) or ``NO_CROP_NEEDED`` and the end of turn. *When* cropping pays is left to RL;
- **boxes are the ones the model can see**: the annotated box, in the family's frame of
  the shown image, is widened to the next multiples of ``box_grid`` pixels (the patch
  grid of Qwen2.5-VL), so the target always lies inside the crop and a coordinate is one
  of a few values per image token.

:func:`evaluate_warm_start` measures, greedy on the validation split, what RL starts
from: the mean IoU of the policy's boxes with the annotated box, the MRR with its own
decisions and with every query cropped, and the share of answers sampled at temperature
1 that parse. :func:`warm_started_policy` builds the checkpoint on first use into the
cache (``$REGION_RERANK_CACHE/policies``), keyed by the config, with a progress bar.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from agents.qwen.family import get_family
from agents.qwen.prompts import REGION_ANSWER_PREFIX, build_messages
from envs.boxes import QWEN_MIN_PIXELS
from envs.settings import ImageSettings
from envs.threads import DEFAULT_THREADS
from envs.text_actions import FULL_MARKER, MalformedAction, format_action_text, parse_action_text
from envs.atomic import atomic_dir, atomic_write_json

IGNORE = -100
"""Label of tokens without loss (the prompt)."""
WARM_START_VERSION = 2
"""Bump when the warm start changes in a way its config does not capture (it keys the cache)."""
LEARNER_IMAGES = ImageSettings(min_pixels=QWEN_MIN_PIXELS, max_pixels=64 * 28 * 28, family="qwen2_5_vl")
"""How the learner sees an image: at most 64 image tokens (224 x 224 px for the benchmark's scenes)."""


@dataclass(frozen=True)
class WarmStartConfig:
    """The warm start of a tiny Qwen-VL policy (``recipes/warm_start_tiny_qwen.py`` exposes it as flags)."""

    size: str = "learner"
    """model size (agents.qwen.tiny.SIZES: learner, toy)"""
    seed: int = 0
    """seed of the initial weights and of the fresh scenes (their draws, mirrors and answers)"""
    steps: int = 600
    """optimizer steps (each on batch_size fresh examples; more steps gave smaller, less often
    correct boxes on the validation split: 600 steps IoU 0.225, 2000 steps 0.180)"""
    batch_size: int = 16
    """examples per step"""
    lr: float = 2e-3
    """AdamW peak learning rate (linear warm-up, cosine decay to 10%)"""
    warmup_steps: int = 100
    """steps of linear learning-rate warm-up"""
    region_share: float = 0.85
    """share of examples whose answer is the crop tool call (the rest: NO_CROP_NEEDED)"""
    decision_prior: float = 0.5
    """probability of REGION the first answer token is taught on every example"""
    box_grid: int = 14
    """target boxes are widened to multiples of this many pixels of the shown image (0: exact)"""
    mirror: bool = True
    """show each scene in a random one of its four mirror images"""
    images: ImageSettings = LEARNER_IMAGES
    """pixel limits of the shown image and the model family"""
    val_queries: int = 200
    """validation queries of the greedy report (IoU, MRR)"""
    sampled_answers: int = 200
    """answers sampled at temperature 1 on validation queries to measure the parse rate"""
    threads: int = DEFAULT_THREADS
    """torch threads of the training process (the scene renderer runs beside it)"""
    render_workers: int = 1
    """processes drawing and tokenizing fresh scenes while the model trains (0: in the training process)"""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "val_queries", "sampled_answers", "threads"):
            if getattr(self, name) < (0 if name in ("val_queries", "sampled_answers") else 1):
                raise ValueError(f"WarmStartConfig.{name} must be positive, got {getattr(self, name)}")
        for name in ("region_share", "decision_prior"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"WarmStartConfig.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.box_grid < 0:
            raise ValueError(f"WarmStartConfig.box_grid must be >= 0, got {self.box_grid}")

    def key(self) -> str:
        """What the checkpoint depends on (not the threads or workers), hashed: its cache name."""
        values = {k: v for k, v in asdict(self).items() if k not in ("threads", "render_workers", "val_queries", "sampled_answers")}
        text = json.dumps({"version": WARM_START_VERSION, **values}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class Example:
    input_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values: torch.Tensor
    image_grid_thw: torch.Tensor


# --------------------------------------------------------------------------- the data
def snapped_box(box: Sequence[float], view_size: tuple[int, int], shown: tuple[int, int], grid: int) -> list[float]:
    """``box`` (pixels of the view) as a 0-1 box of the view, widened so its corners in the
    shown image's pixels are multiples of ``grid`` (0: unchanged)."""
    (width, height), (shown_w, shown_h) = view_size, shown
    x1, y1, x2, y2 = box[0] / width, box[1] / height, box[2] / width, box[3] / height
    if grid:
        def down(v: float, side: int) -> float:
            return math.floor(v * side / grid + 1e-9) * grid / side

        def up(v: float, side: int) -> float:
            return min(1.0, math.ceil(v * side / grid - 1e-9) * grid / side)

        x1, y1, x2, y2 = down(x1, shown_w), down(y1, shown_h), up(x2, shown_w), up(y2, shown_h)
    return [x1, y1, x2, y2]


def target_answer(region: bool, box, view_size, shown, family, grid: int) -> str:
    """``NO_CROP_NEEDED``, or the crop tool call on ``box`` in the family's frame of the shown image."""
    if not region:
        return FULL_MARKER
    return format_action_text(1, snapped_box(box, view_size, shown, grid), get_family(family).frame, view_size, shown)


def shown_messages(question: str, image: Any, images: ImageSettings, processor) -> tuple[list[dict], Any]:
    """The first-turn messages and the image as the policy sees it (the agent loop's resize
    with ``processor``'s patch size)."""
    from qwen_vl_utils import process_vision_info

    from agents.qwen.family import patch_size

    messages = build_messages(question, image, min_pixels=images.min_pixels, max_pixels=images.max_pixels, family=images.family)
    shown, _ = process_vision_info(messages, image_patch_size=patch_size(processor))
    return messages, shown[0]


def build_example(processor, question: str, image, box, region: bool, config: WarmStartConfig) -> Example:
    """Prompt and answer tokens with the loss on the answer (and its end-of-turn token) only."""
    messages, shown = shown_messages(question, image, config.images, processor)
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    features = processor(text=[prompt], images=[shown], return_tensors="pt")
    # Every answer starts with one of the tokenizer's added tokens, so its ids are the same
    # alone as after the prompt.
    answer = target_answer(region, box, image.size, shown.size, config.images.family, config.box_grid)
    answer_ids = torch.tensor(processor.tokenizer.encode(answer + processor.tokenizer.eos_token, add_special_tokens=False))
    prompt_ids = features["input_ids"][0]
    labels = torch.cat([torch.full_like(prompt_ids, IGNORE), answer_ids])
    return Example(torch.cat([prompt_ids, answer_ids]), labels, features["pixel_values"], features["image_grid_thw"])


def fresh_example(processor, config: WarmStartConfig, index: int) -> Example:
    """Example ``index`` of the seed's fresh-scene stream: a new scene, a random mirror
    image of it, and a crop or keep answer drawn with ``region_share``."""
    from PIL import ImageOps

    from envs.data.synthetic import BenchmarkConfig, fresh_scene, mirror_question, render_scene

    spec = fresh_scene(BenchmarkConfig(), config.seed, index)
    scene = render_scene(spec)
    rng = np.random.default_rng([config.seed, index])
    image, question, (x1, y1, x2, y2) = scene.image, spec.question, scene.target_box
    horizontal, vertical = (bool(rng.random() < 0.5), bool(rng.random() < 0.5)) if config.mirror else (False, False)
    width, height = image.size
    if horizontal:
        image, (x1, x2) = ImageOps.mirror(image), (width - x2, width - x1)
    if vertical:
        image, (y1, y2) = ImageOps.flip(image), (height - y2, height - y1)
    region = bool(rng.random() < config.region_share)
    return build_example(processor, mirror_question(question, horizontal, vertical), image, (x1, y1, x2, y2), region, config)


class FreshExamples(torch.utils.data.IterableDataset):
    """The endless fresh-example stream; worker ``w`` of ``n`` makes examples ``w, w + n, ...``,
    and the loader takes them round-robin, so the order does not depend on timing."""

    def __init__(self, processor, config: WarmStartConfig):
        self.processor, self.config = processor, config

    def __iter__(self) -> Iterator[Example]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        torch.set_num_threads(1)
        index = worker
        while True:
            yield fresh_example(self.processor, self.config, index)
            index += workers


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


class _Collate:
    """Picklable collate function (the loader's workers are separate processes)."""

    def __init__(self, pad_id: int, image_token_id: int):
        self.pad_id, self.image_token_id = pad_id, image_token_id

    def __call__(self, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        return collate(examples, self.pad_id, self.image_token_id)


# --------------------------------------------------------------------------- the loss
def answer_loss(logits: torch.Tensor, labels: torch.Tensor, region_id: int, full_id: int, prior: float) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens, where the first answer token
    (the decision) is taught the soft target ``prior`` REGION / ``1 - prior`` FULL."""
    log_probs = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = labels[:, 1:]
    mask = targets != IGNORE
    nll = -log_probs.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    first = mask & ~torch.cat([torch.zeros_like(mask[:, :1]), mask[:, :-1]], dim=1)
    decision = -(prior * log_probs[..., region_id] + (1.0 - prior) * log_probs[..., full_id])
    nll = torch.where(first, decision, nll)
    return (nll * mask).sum() / mask.sum()


def learning_rate(step: int, config: WarmStartConfig) -> float:
    """Multiplier of the peak rate: linear warm-up, then cosine decay to 10%."""
    warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
    return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(step / config.steps, 1.0))))


def train_warm_start(model, processor, config: WarmStartConfig, progress: bool = True) -> list[float]:
    """Fine-tune ``model`` in place on ``config.steps`` batches of fresh examples; returns the losses."""
    tokenizer = processor.tokenizer
    region_id = tokenizer.convert_tokens_to_ids(REGION_ANSWER_PREFIX)
    full_id = tokenizer.convert_tokens_to_ids(FULL_MARKER)
    loader = torch.utils.data.DataLoader(
        FreshExamples(processor, config),
        batch_size=config.batch_size,
        num_workers=config.render_workers,
        collate_fn=_Collate(tokenizer.pad_token_id, model.config.image_token_id),
        prefetch_factor=4 if config.render_workers else None,
        persistent_workers=False,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: learning_rate(step, config))
    losses: list[float] = []
    model.train()
    bar = tqdm(total=config.steps, desc="warm start", disable=None if progress else True)
    for step, batch in enumerate(loader):
        labels = batch.pop("labels")
        loss = answer_loss(model(**batch).logits, labels, region_id, full_id, config.decision_prior)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        losses.append(float(loss.detach()))
        bar.update()
        bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", refresh=False)
        if step + 1 >= config.steps:
            break
    bar.close()
    model.eval()
    return losses


# --------------------------------------------------------------------------- the report
def sample_answers(model, processor, pools: Sequence, n: int, config: WarmStartConfig) -> dict[str, Any]:
    """Sample ``n`` answers at temperature 1 (cycling over ``pools``) and parse each as the
    agent loop does; returns the parse rate, the decision counts and a few answers."""
    from PIL import Image

    generator = torch.Generator().manual_seed(config.seed)
    counts = {"full": 0, "region": 0, "malformed": 0}
    shown_texts = []
    frame = get_family(config.images.family).frame
    for i in range(n):
        pool = pools[i % len(pools)]
        with Image.open(pool.image) as image:
            view = image.convert("RGB")
        messages, shown = shown_messages(pool.question, view, config.images, processor)
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[prompt], images=[shown], return_tensors="pt")
        inputs["mm_token_type_ids"] = (inputs["input_ids"] == model.config.image_token_id).long()
        torch.manual_seed(int(torch.randint(2**31, (1,), generator=generator)))
        with torch.inference_mode():
            output = model.generate(**inputs, max_new_tokens=24, do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        text = processor.tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        action = parse_action_text(text, frame, view.size, shown.size)
        key = "malformed" if isinstance(action, MalformedAction) else ("region" if action.decision == 1 else "full")
        counts[key] += 1
        if len(shown_texts) < 6:
            shown_texts.append(text)
    return {"answers": n, **counts, "parse_rate": (counts["full"] + counts["region"]) / max(n, 1), "examples": shown_texts}


def mean_iou(traces) -> float:
    """Mean IoU of each episode's first crop with the annotated box (0 for an episode without a valid crop)."""
    from rewards.region import box_iou

    values = [float(box_iou(t.views[0], t.annotated_box)) if t.views and t.annotated_box else 0.0 for t in traces]
    return float(np.mean(values)) if values else float("nan")


def evaluate_warm_start(path: Path, config: WarmStartConfig, progress: bool = True) -> dict[str, Any]:
    """Greedy on the first ``val_queries`` validation queries: IoU of the boxes with the
    annotation and MRR with the policy's own decisions and with every query cropped
    (the crop prefix forced, the box the policy's); plus the sampled parse rate."""
    from agents.evaluation.runner import trace_policy
    from agents.qwen.policy import QwenVLPolicy
    from envs.factory import make_env, make_scorer
    from envs.settings import ScorerSettings
    from rewards.evaluation import summarize_episodes

    env = make_env(None, make_scorer(ScorerSettings()), split="val", purpose="eval")
    indices = range(min(config.val_queries, len(env.pools)))
    report: dict[str, Any] = {"val_queries": len(indices)}
    own = QwenVLPolicy(path, images=config.images, max_new_tokens=24)
    crop = QwenVLPolicy(path, images=config.images, max_new_tokens=24, answer_prefix=REGION_ANSWER_PREFIX)
    if len(indices):
        records, _ = trace_policy(env, own, indices, name="warm start", progress=progress)
        crop_records, crop_traces = trace_policy(env, crop, indices, name="warm start, always crop", progress=progress)
        summary, crop_summary = summarize_episodes(records), summarize_episodes(crop_records)
        report.update(
            iou=mean_iou(crop_traces), mrr=summary["MRR"], crop_rate=summary["RC"], mrr_always_crop=crop_summary["MRR"],
            valid_crops=float(np.mean([bool(t.views) for t in crop_traces])),
        )
    if config.sampled_answers:
        report["sampled"] = sample_answers(own.model, own.processor, list(env.pools), config.sampled_answers, config)
    return report


# --------------------------------------------------------------------------- build and cache
def warm_start(config: WarmStartConfig, out: Path, progress: bool = True) -> dict[str, Any]:
    """Build the tiny policy (seed ``config.seed``), fine-tune it, evaluate it, and save the
    checkpoint and ``warm_start.json`` to ``out``; returns the record."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from agents.qwen.tiny import build_tiny_qwen

    torch.set_num_threads(config.threads)
    start = time.perf_counter()
    build_tiny_qwen(out, seed=config.seed, family=config.images.family, size=config.size)
    model = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32)
    processor = AutoProcessor.from_pretrained(out)
    torch.manual_seed(config.seed)
    losses = train_warm_start(model, processor, config, progress)
    train_seconds = time.perf_counter() - start
    model.save_pretrained(out)
    report = evaluate_warm_start(out, config, progress)
    record = {
        "config": asdict(config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_seconds": round(train_seconds, 1),
        "eval_seconds": round(time.perf_counter() - start - train_seconds, 1),
        "loss_first_50": float(np.mean(losses[:50])),
        "loss_last_50": float(np.mean(losses[-50:])),
        "validation": report,
    }
    atomic_write_json(out / "warm_start.json", record, indent=2)
    return record


def cache_path(config: WarmStartConfig) -> Path:
    """Where :func:`warm_started_policy` keeps the checkpoint of ``config``."""
    from envs.data.default import cache_root

    return cache_root() / "policies" / f"tiny-qwen-{config.size}-seed{config.seed}-{config.key()}"


def warm_started_policy(config: WarmStartConfig = WarmStartConfig(), progress: bool = True) -> Path:
    """The warm-started checkpoint of ``config``, built into the cache on first use.

    Building writes into a temporary folder beside the final one and renames it into place,
    so an interrupted build leaves nothing a later run would take for a checkpoint, and two
    processes building at once both end with one complete folder.
    """
    path = cache_path(config)
    if (path / "warm_start.json").is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if progress:
        print(f"Warm-starting the tiny Qwen2.5-VL {config.size} policy on fresh scenes (first use; "
              f"{config.steps} steps, then a validation report) into {path}")
    with atomic_dir(path) as partial:
        warm_start(config, partial, progress)
    return path


def describe(record: dict[str, Any]) -> str:
    """One paragraph of a warm-start record: size, time, and what RL starts from."""
    val = record["validation"]
    lines = [f"{record['parameters'] / 1e6:.2f} M parameters, {record['train_seconds']:.0f} s of training, "
             f"loss {record['loss_first_50']:.2f} -> {record['loss_last_50']:.2f}"]
    if "iou" in val:
        lines.append(f"greedy on {val['val_queries']} validation queries: box IoU {val['iou']:.3f}, MRR {val['mrr']:.3f} "
                     f"with its own decisions (crops {val['crop_rate']:.0%}), {val['mrr_always_crop']:.3f} always cropping")
    if "sampled" in val:
        s = val["sampled"]
        lines.append(f"{s['answers']} answers sampled at temperature 1: {s['parse_rate']:.0%} parse "
                     f"({s['full']} FULL, {s['region']} REGION, {s['malformed']} malformed)")
    return "\n".join(lines)
