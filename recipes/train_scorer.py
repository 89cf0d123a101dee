"""Train rr-tiny, the embedded default scorer, on the synthetic benchmark (CPU, minutes).

    python recipes/train_scorer.py                     # writes envs/assets/rr-tiny-scorer.pt
    python recipes/train_scorer.py --steps 100 --output /tmp/rr-tiny.pt

The scorer is a small open_clip CLIP (config ``envs/assets/model_configs/rr-tiny.json``:
open_clip's ModifiedResNet image tower at 64 px, which learned several times faster per
CPU-second here than a ViT of the same cost, and a 2-layer text tower), trained from
scratch with a CLIP-style contrastive loss: views of an entity (tight and loose crops of
it in train-split scenes, knowledge-base style renders, the candidate image itself)
against both parts of every candidate of the knowledge base, its text and its image.
So the scorer ranks with image, text or image+text candidates alike.

A view's target is the entity it shows: one-hot for a crop around an object, and for
the FULL scene or a wide crop a mix of the entities in it weighted by their visible
area, as a caption of a busy photo names what is in it. So a FULL-image embedding
is a blend of the scene's entities: right when the target dominates the picture, led
by larger distractors when the target is small, which is exactly the failure that
region cropping fixes.

The checkpoint is a plain fp16 state dict, which
``open_clip.create_model_and_transforms("rr-tiny", pretrained=<file>)`` loads (after
``envs.scorers.openclip`` registered the config, or ``open_clip.add_model_config``).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from envs.atomic import atomic_torch_save

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the config is local; never ask the hub

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from envs.threads import DEFAULT_THREADS, set_threads
from envs.boxes import crop, expand_box
from envs.data.synthetic import ENTITIES, BenchmarkConfig, reference_image, render_reference, render_scene, scene_spec

ASSETS = Path(__file__).resolve().parents[1] / "envs" / "assets"


@dataclass
class Args:
    seed: int = 0
    """seed of the data draws, initialisation and batch order"""
    benchmark_seed: int = 0
    """BenchmarkConfig.seed of the scenes and knowledge base to train on"""
    model: str = "rr-tiny"
    """open_clip model config name"""
    model_configs: str = str(ASSETS / "model_configs")
    """folder of extra open_clip model configs"""
    output: str = str(ASSETS / "rr-tiny-scorer.pt")
    """where to write the fp16 state dict"""
    train_scenes: int = 3000
    """train-split scenes whose objects (target and distractors) give views"""
    views_per_object: int = 2
    """random context crops per object per scene"""
    scene_views: int = 3
    """wide views per scene: the FULL image and random crops of 40-100% of it"""
    reference_views: int = 6
    """extra knowledge-base style renders per entity"""
    max_context: float = 1.0
    """largest context margin of a crop, as a fraction of the object's side"""
    steps: int = 1500
    """optimizer steps"""
    batch_size: int = 128
    """views per step"""
    lr: float = 4e-3
    """peak AdamW learning rate (cosine decay after warm-up)"""
    warmup_steps: int = 50
    """linear learning-rate warm-up steps"""
    weight_decay: float = 0.02
    """AdamW weight decay"""
    bank_every: int = 5
    """steps between refreshes of the knowledge-base image embeddings used as candidates"""
    image_loss_weight: float = 1.0
    """final weight of the view-vs-candidate-image loss, ramped up linearly from 0 (the view-vs-text loss has weight 1)"""
    eval_scenes: int = 250
    """val-split scenes for the held-out retrieval accuracy"""
    threads: int = DEFAULT_THREADS
    """torch CPU threads"""


def random_view_box(box, image_size: int, max_context: float, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A square-ish crop around ``box`` with random context, offset and aspect, the kind
    of box a cropping policy (or an annotator) produces."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * rng.uniform(0, max_context))
    w, h = side * np.exp(rng.uniform(-0.15, 0.15, size=2))
    cx = (x1 + x2) / 2 + rng.uniform(-0.12, 0.12) * side
    cy = (y1 + y2) / 2 + rng.uniform(-0.12, 0.12) * side
    return max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(float(image_size), cx + w / 2), min(float(image_size), cy + h / 2)


def visible_areas(view, boxes) -> np.ndarray:
    """Area of each box inside ``view`` (all ``[x1, y1, x2, y2]`` pixels)."""
    x1, y1, x2, y2 = view
    return np.array([max(0.0, min(x2, b[2]) - max(x1, b[0])) * max(0.0, min(y2, b[3]) - max(y1, b[1])) for b in boxes])


def random_wide_box(image_size: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """A crop of 40-100% of the image side at a random place."""
    side = image_size * rng.uniform(0.4, 1.0)
    left, top = rng.uniform(0, image_size - side, size=2)
    return left, top, left + side, top + side


def collect_views(args: Args, config: BenchmarkConfig, preprocess) -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed training views (fp16, to keep tens of thousands in memory) and their
    target distributions over the knowledge base, shape ``(n, len(ENTITIES))``."""
    rng = np.random.default_rng([args.seed, 1])
    views, mixes = [], []  # mixes: {entity index: weight} per view

    def add(image, mix: dict[int, float]) -> None:
        views.append(preprocess(image).half())
        mixes.append(mix)

    for i in tqdm(range(args.train_scenes), desc="scenes", mininterval=2):
        spec = scene_spec(config, "train", i)
        scene = render_scene(spec)
        for obj, box in zip(spec.objects, scene.boxes):
            for _ in range(args.views_per_object):
                add(crop(scene.image, random_view_box(box, spec.image_size, args.max_context, rng)), {obj.entity.index: 1.0})
        full = (0.0, 0.0, float(spec.image_size), float(spec.image_size))
        for k in range(args.scene_views):
            view = full if k == 0 else random_wide_box(spec.image_size, rng)
            areas = visible_areas(view, scene.boxes)
            if areas.sum() > 0:
                add(crop(scene.image, view), {o.entity.index: a / areas.sum() for o, a in zip(spec.objects, areas) if a > 0})
    for entity in tqdm(ENTITIES, desc="references", mininterval=2):
        add(reference_image(entity, config.seed, config.reference_size), {entity.index: 1.0})
        for _ in range(args.reference_views):
            add(render_reference(entity, config.reference_size, rng), {entity.index: 1.0})
    targets = torch.zeros(len(mixes), len(ENTITIES))
    for row, mix in enumerate(mixes):
        targets[row, list(mix)] = torch.tensor(list(mix.values()), dtype=targets.dtype)
    return torch.stack(views), targets


def encode(model, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Unit-norm image embeddings in batches."""
    return torch.cat([F.normalize(model.encode_image(images[i : i + batch].float()), dim=-1) for i in range(0, len(images), batch)])


@torch.no_grad()
def frozen_image_embeddings(model, images: torch.Tensor) -> torch.Tensor:
    """Embeddings of ``images`` in eval mode, without gradients (a candidate bank)."""
    model.eval()
    bank = encode(model, images)
    model.train()
    return bank


@torch.inference_mode()
def evaluate(
    model, preprocess, tokens: torch.Tensor, kb_images: torch.Tensor, config: BenchmarkConfig, n_scenes: int
) -> dict[str, float]:
    """Held-out retrieval over the whole knowledge base on val-split scenes: R@1 of the
    target crop (annotated box, 10% context) per candidate kind, and of the FULL image
    (which the scene's other entities often lead: what cropping fixes). ``tokens`` and
    ``kb_images`` are the knowledge base's texts and reference images, preprocessed."""
    model.eval()
    image_emb = encode(model, kb_images)
    text_emb = F.normalize(model.encode_text(tokens), dim=-1)
    candidates = {"image": image_emb, "text": text_emb, "image+text": F.normalize(image_emb + text_emb, dim=-1)}
    box_views, full_views, targets = [], [], []
    for i in range(n_scenes):
        spec = scene_spec(config, "val", i)
        scene = render_scene(spec)
        box_views.append(preprocess(crop(scene.image, expand_box(scene.target_box, 0.1, spec.image_size, spec.image_size))))
        full_views.append(preprocess(scene.image))
        targets.append(spec.target.entity.index)
    targets = torch.tensor(targets)
    box_emb, full_emb = encode(model, torch.stack(box_views)), encode(model, torch.stack(full_views))
    result = {f"box_r1[{kind}]": (box_emb @ c.T).argmax(1).eq(targets).float().mean().item() for kind, c in candidates.items()}
    result["full_r1[image+text]"] = (full_emb @ candidates["image+text"].T).argmax(1).eq(targets).float().mean().item()
    model.train()
    return result


def main(args: Args) -> None:
    print(asdict(args))
    torch.manual_seed(args.seed)
    set_threads(args.threads)
    open_clip.add_model_config(args.model_configs)
    model, _, preprocess = open_clip.create_model_and_transforms(args.model)
    tokenizer = open_clip.get_tokenizer(args.model)
    config = BenchmarkConfig(seed=args.benchmark_seed)
    tokens = tokenizer([e.text for e in ENTITIES])
    kb_images = torch.stack([preprocess(reference_image(e, config.seed, config.reference_size)) for e in ENTITIES])

    start = time.perf_counter()
    views, targets = collect_views(args, config, preprocess)
    print(f"{len(views)} views of {len(ENTITIES)} entities in {time.perf_counter() - start:.0f}s")

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min(1.0, (s + 1) / args.warmup_steps) * 0.5 * (1 + np.cos(np.pi * min(s, args.steps) / args.steps)),
    )
    generator = torch.Generator().manual_seed(args.seed)
    train_start = time.perf_counter()
    progress = tqdm(range(args.steps), desc="train", mininterval=2)
    for step in progress:
        index = torch.randint(len(views), (args.batch_size,), generator=generator)
        batch = views[index].float()
        flip = torch.rand(len(batch), generator=generator) < 0.5  # the shapes are left-right symmetric
        batch[flip] = batch[flip].flip(-1)
        if step % args.bank_every == 0:
            image_bank = frozen_image_embeddings(model, kb_images)
        view_emb = F.normalize(model.encode_image(batch), dim=-1)
        text_emb = F.normalize(model.encode_text(tokens), dim=-1)
        # Every candidate of the knowledge base is a negative, so the ranking task sees the
        # hard ones. Candidate images come from a bank refreshed every few steps (encoding
        # all of them with gradients each step would triple the cost); without this term a
        # cluttered FULL image drifts towards a few "hub" candidate images.
        scale = model.logit_scale.exp()
        loss = F.cross_entropy(scale * view_emb @ text_emb.T, targets[index])
        # Ramped in, so the text prototypes (quick to learn) place the candidate images first.
        image_weight = args.image_loss_weight * step / args.steps
        loss = loss + image_weight * F.cross_entropy(scale * view_emb @ image_bank.T, targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, np.log(100))
        if step % 10 == 0:
            progress.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    train_time = time.perf_counter() - train_start

    metrics = evaluate(model, preprocess, tokens, kb_images, config, args.eval_scenes)
    print("held-out (val split, whole knowledge base of", len(ENTITIES), "entities):", {k: round(v, 3) for k, v in metrics.items()})
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, out)
    print(f"training took {train_time:.0f}s ({time.perf_counter() - start:.0f}s with data); wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main(tyro.cli(Args, description=__doc__.split("\n\n")[0]))
