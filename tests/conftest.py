"""Shared fixtures: a tiny random open_clip scorer and a small candidate pool.

The tiny model is an open_clip config registered from a temporary folder; its random
weights are saved to a checkpoint file and loaded through ``pretrained=<file>``, the same
path users take for EVA-CLIP. It encodes a batch of 32 px images in milliseconds.
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before open_clip imports huggingface_hub

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import pytest
from PIL import Image

from envs.data.pools import Candidate, QueryPool

if TYPE_CHECKING:
    from envs.scorers.openclip import OpenClipScorer

# torch and open_clip are imported inside the fixtures: they take seconds to import,
# and test files that need no scorer should not pay for them.

TINY_MODEL = "rr-tiny-test"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 1, "width": 32, "head_width": 16},
    # vocab_size must match open_clip's built-in tokenizer
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_model_name(tmp_path_factory) -> str:
    """Name of the tiny open_clip config, registered with ``open_clip.add_model_config``."""
    config_path = tmp_path_factory.mktemp("model_configs") / f"{TINY_MODEL}.json"
    config_path.write_text(json.dumps(TINY_CONFIG))
    import open_clip

    open_clip.add_model_config(config_path)
    return TINY_MODEL


@pytest.fixture(scope="session")
def make_tiny_checkpoint(tiny_model_name, tmp_path_factory) -> Callable[[int], Path]:
    """``make(seed) -> path``: random tiny-model weights (seeded) saved as a checkpoint file."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("checkpoints")

    def make(seed: int = 0) -> Path:
        path = folder / f"{tiny_model_name}-seed{seed}.pt"
        if not path.exists():
            with torch.random.fork_rng():  # leave the caller's global RNG untouched
                torch.manual_seed(seed)
                torch.save(open_clip.create_model(tiny_model_name, pretrained=None).state_dict(), path)
        return path

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(make_tiny_checkpoint) -> Path:
    return make_tiny_checkpoint(0)


@pytest.fixture(scope="session")
def make_tiny_scorer(tiny_model_name, tiny_checkpoint) -> Callable[..., OpenClipScorer]:
    """``make(checkpoint=None, **kwargs)``: a fresh tiny scorer (own caches and stats).

    One torch thread: tiny forwards are dominated by thread start-up, and on a busy
    2-core machine two threads make them ~50x slower.
    """

    from envs.scorers.openclip import OpenClipScorer

    import torch

    torch.set_num_threads(1)  # process-wide: set once here, as a recipe sets it at its entry point

    def make(checkpoint: Path | None = None, **kwargs) -> OpenClipScorer:
        return OpenClipScorer(tiny_model_name, checkpoint or tiny_checkpoint, **kwargs)

    return make


@pytest.fixture(scope="session")
def tiny_scorer(make_tiny_scorer) -> OpenClipScorer:
    """A session-wide tiny scorer. Its caches and ``stats`` are shared: use ``make_tiny_scorer`` to count work."""
    return make_tiny_scorer()


def random_image(rng: np.random.Generator, size: tuple[int, int] = (48, 40)) -> Image.Image:
    """A noisy RGB image with a bright random rectangle, so images differ visibly."""
    pixels = rng.integers(0, 80, size=(size[1], size[0], 3), dtype=np.uint8)
    x, y = rng.integers(0, size[0] // 2), rng.integers(0, size[1] // 2)
    pixels[y : y + size[1] // 2, x : x + size[0] // 2] = rng.integers(100, 256, size=3, dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="session")
def tiny_pool(tmp_path_factory) -> QueryPool:
    """A 5-candidate pool: image+text, image-only and text-only candidates, one positive."""
    root = tmp_path_factory.mktemp("tiny_pool")
    rng = np.random.default_rng(0)

    def image_file(name: str) -> Path:
        path = root / f"{name}.png"
        random_image(rng).save(path)
        return path

    candidates = (
        Candidate("c0", True, image=image_file("c0"), text="a red square on a gray wall"),
        Candidate("c1", False, image=image_file("c1"), text="a blue car"),
        Candidate("c2", False, image=image_file("c2")),
        Candidate("c3", False, text="a green tree in a park"),
        Candidate("c/4 ünïcode?", False, image=image_file("c4"), text="odd id"),
    )
    return QueryPool("q0", "What is this?", image_file("query"), candidates)


@pytest.fixture()
def tiny_views() -> list[Image.Image]:
    """Five distinct query views of different sizes."""
    rng = np.random.default_rng(1)
    return [random_image(rng, (32 + 8 * i, 40)) for i in range(5)]


COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30), (200, 30, 200), (30, 200, 200)]


def make_scene_pools(root: Path, n: int, seed: int, prefix: str, size: tuple[int, int] = (160, 120)) -> list[QueryPool]:
    """``n`` queries: a coloured 50 px square at a random spot of a noisy scene, with its
    annotated box; pools of one solid-colour candidate per colour (the last query's pool
    has no positive, so evaluation sees the "absent" case)."""
    rng = np.random.default_rng(seed)
    for c, colour in enumerate(COLOURS):
        if not (root / f"cand{c}.png").exists():
            Image.new("RGB", (48, 48), colour).save(root / f"cand{c}.png")
    pools = []
    for q in range(n):
        scene = rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
        target = int(rng.integers(len(COLOURS)))
        x, y = int(rng.integers(0, size[0] - 50)), int(rng.integers(0, size[1] - 50))
        scene[y : y + 50, x : x + 50] = COLOURS[target]
        path = root / f"{prefix}{q}.png"
        Image.fromarray(scene).save(path)
        candidates = tuple(
            Candidate(f"c{c}", c == target and q != n - 1, image=root / f"cand{c}.png", text=f"colour {c}")
            for c in range(len(COLOURS))
        )
        pools.append(QueryPool(f"{prefix}{q}", f"What colour is the square of scene {q}?", path, candidates, (x, y, x + 50, y + 50)))
    return pools


@pytest.fixture(scope="session")
def scene_pools(tmp_path_factory) -> list[QueryPool]:
    """Six small scene queries (see :func:`make_scene_pools`)."""
    return make_scene_pools(tmp_path_factory.mktemp("scenes"), 6, seed=0, prefix="q")


@pytest.fixture(scope="session")
def scene_pool_files(tmp_path_factory) -> dict[str, Path]:
    """``{"train": path, "val": path}``: JSONL query-pool files of scene queries."""
    from envs.data.pools import write_query_pools

    root = tmp_path_factory.mktemp("scene-files")
    files = {}
    for split, n, seed in (("train", 12, 1), ("val", 6, 2)):
        files[split] = write_query_pools(make_scene_pools(root, n, seed, split), root / f"{split}.jsonl", root)
    return files


@pytest.fixture(scope="session")
def load_recipe():
    """``load_recipe(name)``: import ``recipes/<name>.py`` as a module (recipes are scripts, not a package)."""
    return _load_recipe


def _load_recipe(name: str):
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "recipes" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"recipes_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module
