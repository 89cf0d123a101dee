"""A small cropping policy for CPU training: image + question -> decision and box.

The network reads the observation image with a few strided convolutions down to one
feature vector per cell of a ``grid x grid`` partition, and the question as a hashed bag
of words and word pairs. The question picks the box the way a referring-expression
grounder does: each cell's logit is the dot product of its image feature with a key made
from the question ("the striped object" -> which features to look for), plus a per-cell
bias made from the question ("in the lower left" -> where to look). Coordinates enter the
trunk as two extra input channels (CoordConv), so features also know where they are.

Its action is two "tokens", like a VLM's response:

- the **decision** token: ``Categorical(2)`` (0 FULL, 1 REGION);
- the **box** token (REGION only): a cell of a ``grid x grid`` partition of the view
  (where to centre the crop) and a side from ``box_scales`` (how much to keep), sampled
  jointly from ``Categorical(grid * grid * len(box_scales))``.

Two optional tokens follow them when the env has the options on (``PolicyConfig``):

- the **second box** token (``max_regions=2``): another cell and side, or "none" (the
  last index), from a second question key; a REGION with a second box crops both
  regions, whose embeddings the env fuses;
- the **search** token (``search=True``): ``Categorical(2)``, 1 re-retrieves the pool
  with the action's view (the env's SEARCH), read from the same pooled features as the
  decision.

Log-probabilities come per token so a trainer can mask a token out of the loss (a
forced decision, the unused box of a FULL action) exactly as verl masks response tokens.
Token order: decision, box, [second box], [search].
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

from envs.actions import FULL, REGION
from envs.atomic import atomic_torch_save


GROUPS = 8
"""GroupNorm groups of the convolutional trunk."""


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
    grid: int = 8
    """box centres: cells of a grid x grid partition of the view (8 rather than 4: the grid
    box nearest an annotated object overlaps it much more, so a crop can match it)"""
    box_scales: tuple[float, ...] = (0.3, 0.5)
    """box sides, as fractions of the view's sides (few options: RL explores them faster)"""
    max_regions: int = 1
    """boxes per REGION: 1, or 2 (adds the second-box token; the env needs max_regions >= 2)"""
    search: bool = False
    """add the search token (the env needs search=True)"""

    def __post_init__(self) -> None:
        strides = self.image_size // self.grid
        if self.image_size % self.grid or strides < 2 or strides & (strides - 1):
            raise ValueError(f"PolicyConfig.image_size / grid must be a power of two >= 2, got {self.image_size} / {self.grid}")
        if self.channels % GROUPS:
            raise ValueError(f"PolicyConfig.channels must be a multiple of {GROUPS} (GroupNorm groups), got {self.channels}")
        if not self.box_scales or not all(0.0 < s <= 1.0 for s in self.box_scales):
            raise ValueError(f"PolicyConfig.box_scales must be fractions in (0, 1], got {self.box_scales}")
        if self.max_regions not in (1, 2):
            raise ValueError(f"PolicyConfig.max_regions must be 1 or 2, got {self.max_regions}")


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


def nearest_box(boxes: torch.Tensor, target) -> int:
    """Index of the row of ``boxes`` (``(N, 4)``, 0-1 of the view) that best overlaps
    ``target`` (0-1 of the same view) by IoU: the box token a grounding loss aims at."""
    from rewards import box_iou

    return int(np.argmax(box_iou(boxes.numpy(), np.asarray(target, np.float64))))


class PolicyOutput(NamedTuple):
    decision_logits: torch.Tensor  # (B, 2)
    box_logits: torch.Tensor  # (B, cells * S)
    box2_logits: torch.Tensor | None = None  # (B, cells * S + 1): the last is "no second box"
    search_logits: torch.Tensor | None = None  # (B, 2)

    def select(self, index: torch.Tensor) -> "PolicyOutput":
        """The rows ``index`` of every head (e.g. one row per action of a group)."""
        return PolicyOutput(*(None if t is None else t[index] for t in self))


class CropPolicyNet(nn.Module):
    """Decision logits and box logits from a batch of observation images and questions."""

    def __init__(self, config: PolicyConfig = PolicyConfig()):
        super().__init__()
        self.config = config
        c, h, scales = config.channels, config.hidden, len(config.box_scales)
        cells = config.grid * config.grid
        # Stride-2 convolutions take image_size down to grid x grid: one feature vector per cell.
        strides = int(np.log2(config.image_size // config.grid))
        layers: list[nn.Module] = []
        in_channels = 3 + 2  # RGB + (x, y) coordinates
        for _ in range(strides):
            layers += [nn.Conv2d(in_channels, c, 3, stride=2, padding=1), nn.GroupNorm(GROUPS, c), nn.GELU()]
            in_channels = c
        # Normalized features keep the key-feature dot products, and so the logits, in a
        # trainable range: policy gradients otherwise grow them without bound.
        layers += [nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(GROUPS, c)]
        self.trunk = nn.Sequential(*layers)
        self.words = nn.EmbeddingBag(config.text_buckets, h, mode="mean")
        self.question = nn.Sequential(nn.Linear(h, h), nn.LayerNorm(h), nn.GELU())
        self.key = nn.Linear(h, scales * c)
        self.where = nn.Linear(h, cells * scales)
        self.decision_head = nn.Sequential(nn.Linear(2 * c + h, h), nn.GELU(), nn.Linear(h, 2))
        if config.max_regions == 2:
            self.key2 = nn.Linear(h, scales * c)
            self.where2 = nn.Linear(h, cells * scales)
            self.none2 = nn.Sequential(nn.Linear(2 * c + h, h), nn.GELU(), nn.Linear(h, 1))
        if config.search:
            self.search_head = nn.Sequential(nn.Linear(2 * c + h, h), nn.GELU(), nn.Linear(h, 2))
        self.register_buffer("boxes", cell_boxes(config.grid, config.box_scales), persistent=False)
        ramp = torch.linspace(-1.0, 1.0, config.image_size)
        self.register_buffer("coords", torch.stack(torch.meshgrid(ramp, ramp, indexing="xy"))[None], persistent=False)

    def encode_questions(self, questions: list[str]) -> torch.Tensor:
        ids = [question_features(q, self.config.text_buckets) for q in questions]
        offsets = torch.tensor([0] + [len(i) for i in ids[:-1]]).cumsum(0)
        flat = torch.tensor([t for i in ids for t in i])
        return self.question(self.words(flat, offsets))

    def forward(self, images: torch.Tensor, questions: list[str]) -> PolicyOutput:
        """``images``: (B, H, W, 3) uint8 observations; ``questions``: B strings."""
        x = images.permute(0, 3, 1, 2).float() / 255.0
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = torch.cat([x, self.coords.expand(len(x), -1, -1, -1)], dim=1)
        cells = self.trunk(x).flatten(2)  # (B, c, cells), cells in row-major order
        q = self.encode_questions(questions)
        key = self.key(q).view(len(questions), -1, cells.shape[1])  # (B, S, c)
        what = torch.einsum("bsc,bcn->bns", key, cells) / cells.shape[1] ** 0.5
        where = self.where(q).view(len(questions), -1, key.shape[1])  # (B, cells, S)
        # (B, cells, S) -> (B, cells * S) in the order of cell_boxes: cell-major, then scale.
        box_logits = (what + where).reshape(len(questions), -1)
        # Attention over cells by the question's key summarises "is the named object visible
        # here, and how large" for the decision, next to the whole-image features.
        attended = torch.einsum("bn,bcn->bc", what.mean(-1).softmax(-1), cells)
        pooled = torch.cat([cells.mean(-1), attended, q], dim=-1)
        box2_logits = search_logits = None
        if self.config.max_regions == 2:
            key2 = self.key2(q).view(len(questions), -1, cells.shape[1])
            what2 = torch.einsum("bsc,bcn->bns", key2, cells) / cells.shape[1] ** 0.5
            where2 = self.where2(q).view(len(questions), -1, key2.shape[1])
            box2_logits = torch.cat([(what2 + where2).reshape(len(questions), -1), self.none2(pooled)], dim=-1)
        if self.config.search:
            search_logits = self.search_head(pooled)
        return PolicyOutput(self.decision_head(pooled), box_logits, box2_logits, search_logits)

    @property
    def no_second_box(self) -> int:
        """The second-box token's "none" index."""
        return len(self.boxes)


def _heads(out: PolicyOutput) -> list[torch.Tensor]:
    """The logits of every token the output has, in token order."""
    heads = [out.decision_logits, out.box_logits]
    return heads + [t for t in (out.box2_logits, out.search_logits) if t is not None]


def token_log_probs(
    out: PolicyOutput, decisions: torch.Tensor, box_ids: torch.Tensor, *extra_ids: torch.Tensor
) -> torch.Tensor:
    """``(N, T)`` log-probs of each action's tokens: decision, box, then the optional
    second box and search tokens (``extra_ids`` in that order, one per head the output has)."""
    ids = [decisions, box_ids, *extra_ids]
    heads = _heads(out)
    if len(ids) != len(heads):
        raise ValueError(f"the policy has {len(heads)} tokens, got ids for {len(ids)}")
    return torch.stack([torch.distributions.Categorical(logits=h).log_prob(i) for h, i in zip(heads, ids)], dim=-1)


def token_entropy(out: PolicyOutput) -> torch.Tensor:
    """``(N, T)`` entropies of the token distributions (decision, box, then the optional ones)."""
    return torch.stack([torch.distributions.Categorical(logits=h).entropy() for h in _heads(out)], dim=-1)


def native_action(net: "CropPolicyNet", decision: int, box_id: int, box2_id: int | None = None,
                  search: int | None = None) -> dict:
    """The env action of sampled tokens: one box, or two when a second box was chosen, plus
    the search flag when the policy has that token."""
    box = net.boxes[box_id].numpy().astype(np.float32)
    if box2_id is not None and box2_id != net.no_second_box and decision == REGION:
        box = np.stack([box, net.boxes[box2_id].numpy().astype(np.float32)])
    action = {"decision": REGION if decision == REGION else FULL, "box": box}
    if search is not None:
        action["search"] = int(search)
    return action


class LocalPolicy:
    """A trained :class:`CropPolicyNet` as an evaluation policy ``(obs, info, env) -> action``."""

    def __init__(self, net: CropPolicyNet, greedy: bool = True, seed: int = 0):
        self.net = net.eval()
        self.greedy = greedy
        self.generator = torch.Generator().manual_seed(seed)
        self.name = "trained"

    @torch.inference_mode()
    def __call__(self, obs, info, env) -> dict:
        out = self.net(torch.tensor(obs["image"])[None], [str(obs["question"])])  # a copy: the obs may be read-only
        tokens = [self._pick(h) for h in _heads(out)]
        if len(tokens) == 2:  # the paper's policy: exactly the action it always returned
            box = self.net.boxes[tokens[1]].numpy()
            return {"decision": REGION if tokens[0] == REGION else FULL, "box": box.astype(np.float32)}
        box2 = tokens[2] if out.box2_logits is not None else None
        search = tokens[-1] if out.search_logits is not None else None
        return native_action(self.net, tokens[0], tokens[1], box2, search)

    def _pick(self, logits: torch.Tensor) -> int:
        if self.greedy:
            return int(logits.argmax(-1))
        return int(torch.multinomial(logits.softmax(-1), 1, generator=self.generator))


def save_policy(net: CropPolicyNet, path: str | Path, **metadata) -> None:
    """Save weights, architecture and ``metadata`` (e.g. the training config) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save({"config": asdict(net.config), "state_dict": net.state_dict(), "metadata": metadata}, path)


def load_policy(path: str | Path, greedy: bool = True) -> LocalPolicy:
    """A :class:`LocalPolicy` from a checkpoint written by :func:`save_policy`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"policy checkpoint {path} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # truncated or not a torch file
        raise ValueError(f"policy checkpoint {path} is unreadable ({err}); delete it and train again") from err
    if not isinstance(checkpoint, dict) or "config" not in checkpoint or "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a policy checkpoint from recipes/train_rgrpo.py (no 'config'/'state_dict')")
    config = dict(checkpoint["config"])
    config["box_scales"] = tuple(config["box_scales"])
    net = CropPolicyNet(PolicyConfig(**config))
    net.load_state_dict(checkpoint["state_dict"])
    return LocalPolicy(net, greedy=greedy)
