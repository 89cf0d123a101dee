"""A small cropping policy for CPU training: image + question -> decision and box.

The network reads the observation image with a few strided convolutions and the
question as a hashed bag of words and word pairs; the question modulates the image
features (FiLM), so "the striped object in the lower left" can move the box. Its action
is two "tokens", like a VLM's response:

- the **decision** token: ``Categorical(2)`` (0 FULL, 1 REGION);
- the **box** token (REGION only): a cell of a ``grid x grid`` partition of the view
  (where to centre the crop) and a side from ``box_scales`` (how much to keep), sampled
  jointly from ``Categorical(grid * grid * len(box_scales))``.

Log-probabilities come per token so a trainer can mask a token out of the loss (a
forced decision, the unused box of a FULL action) exactly as verl masks response tokens.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from envs.region_rerank import FULL, REGION


@dataclass(frozen=True)
class PolicyConfig:
    """Architecture of :class:`CropPolicyNet` (saved with every checkpoint)."""

    image_size: int = 64
    """observation images are resized to this square before the convolutions"""
    channels: int = 48
    """width of the convolutional trunk"""
    text_buckets: int = 4096
    """hash buckets of the bag-of-words question encoder"""
    hidden: int = 128
    """width of the question embedding and the heads"""
    grid: int = 4
    """box centres: cells of a grid x grid partition of the view"""
    box_scales: tuple[float, ...] = (0.3, 0.5)
    """box sides, as fractions of the view's sides (few options: RL explores them faster)"""


def question_features(question: str, buckets: int) -> list[int]:
    """Hashed ids of the question's lower-cased words and adjacent word pairs.

    crc32, not ``hash()``: Python salts string hashes per process, and a checkpoint must
    mean the same thing in the next one.
    """
    words = re.findall(r"[a-z0-9]+", question.lower())
    grams = words + [f"{a} {b}" for a, b in zip(words, words[1:])]
    return [zlib.crc32(g.encode()) % buckets for g in grams] or [0]


def cell_boxes(grid: int, scales: tuple[float, ...]) -> torch.Tensor:
    """``(grid * grid * S, 4)`` 0-1 boxes: each cell centre with each side, clamped to the view."""
    centres = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    half = torch.tensor(scales, dtype=torch.float32) / 2
    cx, cy = cx.reshape(-1, 1), cy.reshape(-1, 1)
    boxes = torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1)  # (cells, S, 4)
    return boxes.reshape(-1, 4).clamp(0.0, 1.0)


class PolicyOutput(NamedTuple):
    decision_logits: torch.Tensor  # (B, 2)
    box_logits: torch.Tensor  # (B, cells * S)


class CropPolicyNet(nn.Module):
    """Decision logits and box logits from a batch of observation images and questions."""

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        super().__init__()
        self.config = config
        c = config.channels
        # Stride-2 convolutions take image_size down to grid x grid: one feature vector per cell.
        strides = int(np.log2(config.image_size // config.grid))
        layers: list[nn.Module] = []
        in_channels = 3
        for _ in range(strides):
            layers += [nn.Conv2d(in_channels, c, 3, stride=2, padding=1), nn.GELU()]
            in_channels = c
        layers += [nn.Conv2d(c, c, 3, padding=1), nn.GELU()]
        self.trunk = nn.Sequential(*layers)
        self.position = nn.Parameter(torch.zeros(1, c, config.grid, config.grid))
        self.words = nn.EmbeddingBag(config.text_buckets, config.hidden, mode="mean")
        self.film = nn.Linear(config.hidden, 2 * c)
        self.cell_head = nn.Conv2d(c, len(config.box_scales), 1)
        self.decision_head = nn.Sequential(nn.Linear(2 * c + config.hidden, config.hidden), nn.GELU(), nn.Linear(config.hidden, 2))
        self.register_buffer("boxes", cell_boxes(config.grid, config.box_scales), persistent=False)

    def encode_questions(self, questions: list[str]) -> torch.Tensor:
        ids = [question_features(q, self.config.text_buckets) for q in questions]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        flat = torch.tensor([t for i in ids for t in i])
        return self.words(flat, offsets)

    def forward(self, images: torch.Tensor, questions: list[str]) -> PolicyOutput:
        """``images``: (B, H, W, 3) uint8 observations; ``questions``: B strings."""
        x = images.permute(0, 3, 1, 2).float() / 255.0
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        features = self.trunk(x) + self.position
        q = self.encode_questions(questions)
        gamma, beta = self.film(q).chunk(2, dim=-1)
        features = features * (1 + gamma[..., None, None]) + beta[..., None, None]
        # (B, S, grid, grid) -> (B, cells * S) in the order of cell_boxes: cell-major, then scale.
        box_logits = self.cell_head(F.gelu(features)).permute(0, 2, 3, 1).reshape(len(questions), -1)
        pooled = torch.cat([features.mean((2, 3)), features.amax((2, 3)), q], dim=-1)
        return PolicyOutput(self.decision_head(pooled), box_logits)


class SampledActions(NamedTuple):
    decisions: torch.Tensor  # (N,) long
    box_ids: torch.Tensor  # (N,) long
    boxes: torch.Tensor  # (N, 4) 0-1 boxes


def token_log_probs(out: PolicyOutput, decisions: torch.Tensor, box_ids: torch.Tensor) -> torch.Tensor:
    """``(N, 2)`` log-probs of the decision token and the box token of each action."""
    decision_lp = torch.distributions.Categorical(logits=out.decision_logits).log_prob(decisions)
    box_lp = torch.distributions.Categorical(logits=out.box_logits).log_prob(box_ids)
    return torch.stack([decision_lp, box_lp], dim=-1)


def token_entropy(out: PolicyOutput) -> torch.Tensor:
    """``(N, 2)`` entropies of the decision and box distributions."""
    decision = torch.distributions.Categorical(logits=out.decision_logits).entropy()
    box = torch.distributions.Categorical(logits=out.box_logits).entropy()
    return torch.stack([decision, box], dim=-1)


class LocalPolicy:
    """A trained :class:`CropPolicyNet` as an evaluation policy ``(obs, info, env) -> action``."""

    def __init__(self, net: CropPolicyNet, greedy: bool = True, seed: int = 0):
        self.net = net.eval()
        self.greedy = greedy
        self.generator = torch.Generator().manual_seed(seed)
        self.name = "trained"

    @torch.inference_mode()
    def __call__(self, obs, info, env) -> dict:
        out = self.net(torch.from_numpy(np.asarray(obs["image"]))[None], [str(obs["question"])])
        if self.greedy:
            decision = int(out.decision_logits.argmax(-1))
            box_id = int(out.box_logits.argmax(-1))
        else:
            decision = int(torch.multinomial(out.decision_logits.softmax(-1), 1, generator=self.generator))
            box_id = int(torch.multinomial(out.box_logits.softmax(-1), 1, generator=self.generator))
        box = self.net.boxes[box_id].numpy()
        return {"decision": REGION if decision == REGION else FULL, "box": box.astype(np.float32)}


def save_policy(net: CropPolicyNet, path: str | Path, **metadata) -> None:
    """Save weights, architecture and ``metadata`` (e.g. the training config) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(net.config), "state_dict": net.state_dict(), "metadata": metadata}, path)


def load_policy(path: str | Path, greedy: bool = True) -> LocalPolicy:
    """A :class:`LocalPolicy` from a checkpoint written by :func:`save_policy`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"policy checkpoint {path} does not exist")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a policy checkpoint from recipes/train_rgrpo.py (no 'config'/'state_dict')")
    config = dict(checkpoint["config"])
    config["box_scales"] = tuple(config["box_scales"])
    net = CropPolicyNet(PolicyConfig(**config))
    net.load_state_dict(checkpoint["state_dict"])
    return LocalPolicy(net, greedy=greedy)
