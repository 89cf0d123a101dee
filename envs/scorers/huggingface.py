"""A frozen transformers CLIP / SigLIP model (image and text towers) as a :class:`envs.scorers.openclip.Scorer`.

:class:`TransformersScorer` loads a local folder written by ``save_pretrained`` (the model,
its tokenizer and its image processor, e.g. ``openai/clip-vit-base-patch32`` or
``google/siglip-base-patch16-224`` downloaded once elsewhere) with ``transformers.AutoModel``,
``AutoTokenizer`` and ``AutoImageProcessor``, never from the hub. Any model with
``get_image_features`` and ``get_text_features`` works. It shares
:class:`envs.scorers.openclip.OpenClipScorer`'s candidate caches (:class:`envs.scorers.openclip.CachedScorer`)
and its batch invariance: every forward has one fixed shape (one row on CPU, ``batch_size``
rows elsewhere: :func:`envs.scorers.openclip.forward_rows`) and every text is padded to the same
length, so a view embeds the same alone and in a group.

``make_scorer(ScorerSettings(model="/path/to/folder"))`` (``--scorer.model /path/to/folder``)
builds it; ``--scorer.options batch_size 16`` passes its other arguments.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Callable, Sequence, get_args

import numpy as np
import torch
from PIL import Image

from envs.scorers.openclip import CachedScorer, Feature, ScorerStats, _chunks, file_digest, forward_rows, l2_normalize
from envs.settings import CandidateFeatures, Invariance

TEXT_INPUTS = ("input_ids", "attention_mask", "position_ids")
"""Tokenizer outputs passed to ``get_text_features`` (others, e.g. ``token_type_ids``, are not)."""


class TransformersScorer(CachedScorer):
    """A transformers dual-encoder (CLIP, SigLIP, ...) from a local folder, with cached candidates.

    Args:
        path: folder of ``save_pretrained`` files: ``config.json`` and weights, a tokenizer and
            an image processor (``preprocessor_config.json``).
        device: torch device for the model and its inputs.
        candidate_features: as for :class:`envs.scorers.openclip.OpenClipScorer` (``"auto"``, ``"image"``,
            ``"text"``, ``"image+text"``).
        cache_dir: folder of the on-disk candidate cache (a per-:attr:`name` subfolder), or ``None``.
        batch_size: rows of every padded forward pass (and of free batches).
        batch_invariant: keep every forward's shape fixed (padded rows repeat the chunk's
            last input; each row's result depends on that row only), so an embedding never
            depends on what else was embedded with it. ``False`` batches freely.
        invariance: the fixed shape, as for :class:`envs.scorers.openclip.OpenClipScorer`: ``"rows"``
            (one row per forward), ``"padded"`` (``batch_size`` rows) or ``"auto"`` (rows on
            CPU, padded elsewhere).
        max_text_tokens: length every text is padded or truncated to; ``None``: the smaller of
            the tokenizer's ``model_max_length`` and the text tower's ``max_position_embeddings``.

    :attr:`name` is ``hf:<folder name>@<digest>``, the digest covering every file of the
    folder (weights, configs, tokenizer), so two folders share caches only if identical.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        candidate_features: CandidateFeatures = "auto",
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 8,
        batch_invariant: bool = True,
        max_text_tokens: int | None = None,
        invariance: Invariance = "auto",
    ) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        if candidate_features not in get_args(CandidateFeatures):
            raise ValueError(f"candidate_features={candidate_features!r}; expected one of {get_args(CandidateFeatures)}")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}; expected >= 1")
        if invariance not in get_args(Invariance):
            raise ValueError(f"invariance={invariance!r}; expected one of {get_args(Invariance)}")
        folder = Path(path).expanduser()
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a transformers model folder (no config.json); write one with save_pretrained")
        self.path = folder
        self.device = torch.device(device)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).to(self.device).eval().requires_grad_(False)
        for method in ("get_image_features", "get_text_features"):
            if not callable(getattr(self.model, method, None)):
                raise TypeError(f"{type(self.model).__name__} from {folder} has no {method}: expected a dual encoder (CLIP, SigLIP, ...)")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.image_processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        text_config = getattr(self.model.config, "text_config", self.model.config)
        limits = [getattr(self.tokenizer, "model_max_length", None), getattr(text_config, "max_position_embeddings", None)]
        limits = [int(n) for n in limits if isinstance(n, int) and 0 < n < 1_000_000]
        self.max_text_tokens = int(max_text_tokens or (min(limits) if limits else 77))
        self.candidate_features: CandidateFeatures = candidate_features
        self.batch_size = batch_size
        self.batch_invariant = batch_invariant
        self.invariance: Invariance = invariance
        self.forward_rows = forward_rows(batch_size, batch_invariant, invariance, self.device)
        """rows of every forward, ``None`` for free batching"""
        self.dim = int(self._features(self.model.get_image_features, {"pixel_values": self._pixels([Image.new("RGB", (8, 8))])}).shape[1])
        self.stats = ScorerStats()
        digest = hashlib.sha256()
        for file in sorted(p for p in folder.iterdir() if p.is_file()):
            digest.update(f"{file.name}\0{file_digest(file)}\0".encode())
        self.name = f"hf:{folder.name}@{digest.hexdigest()[:12]}"
        self._init_cache(cache_dir)

    def __deepcopy__(self, memo: dict) -> "TransformersScorer":
        return self  # frozen weights are shared, never copied (see OpenClipScorer.__deepcopy__)

    def __repr__(self) -> str:
        return f"TransformersScorer(name={self.name!r}, candidate_features={self.candidate_features!r}, device={str(self.device)!r})"

    # ------------------------------------------------------------ embeddings
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """``(n, d)`` float32 L2-normalized image embeddings (fixed-shape forwards)."""
        return self._encode(list(images), lambda batch: {"pixel_values": self._pixels(batch)}, self.model.get_image_features, "image")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """``(n, d)`` float32 L2-normalized text embeddings (texts padded to ``max_text_tokens``)."""
        return self._encode([str(t) for t in texts], self._tokens, self.model.get_text_features, "text")

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return self.image_processor(images=[image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]

    def _tokens(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            list(texts), padding="max_length", max_length=self.max_text_tokens, truncation=True, return_tensors="pt"
        )
        return {key: encoded[key] for key in TEXT_INPUTS if key in encoded}

    def _features(self, forward: Callable, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            out = forward(**{key: value.to(self.device) for key, value in inputs.items()})
        # transformers 5 returns a model output whose pooler_output is the projected embedding
        features = out if isinstance(out, torch.Tensor) else out.pooler_output
        return torch.nn.functional.normalize(features.float(), dim=-1)

    def _encode(self, items: list, to_inputs: Callable, forward: Callable, kind: Feature) -> np.ndarray:
        out = [np.zeros((0, self.dim), dtype=np.float32)]
        rows = self.forward_rows
        for batch in _chunks(items, rows or self.batch_size):
            inputs = to_inputs(batch)
            if rows is not None and len(batch) < rows:
                extra = rows - len(batch)
                inputs = {key: torch.cat([value, value[-1:].expand(extra, *value.shape[1:])]) for key, value in inputs.items()}
            out.append(self._features(forward, inputs)[: len(batch)].cpu().numpy())
            self.stats.count_forward(kind, len(batch), max(len(batch), rows or 0))
        return l2_normalize(np.concatenate(out))
