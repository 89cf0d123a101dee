"""The embedded default: the synthetic benchmark and the small scorer trained on it.

``gym.make("RegionRerank-v0")`` with no data or scorer uses these, so the whole
Region-R1 mechanism runs anywhere on CPU without a model hub:

- :func:`default_scorer`: the ``rr-tiny`` open_clip model with the checkpoint shipped in
  ``envs/assets/rr-tiny-scorer.pt`` (trained by ``recipes/train_scorer.py``);
- :func:`default_dataset`: a split of the :mod:`envs.data.synthetic` benchmark, written once
  as PNGs plus query-pool JSONL into a cache folder and loaded from there afterwards.

The cache folder is ``$REGION_RERANK_CACHE`` (default ``~/.cache/region-rerank``) /
``v<version>-<hash>/<split>``, the hash covering the benchmark config and the scorer
that mined the hard negatives, so a changed config or checkpoint never reuses stale
files. A split is written to a temporary folder and renamed into place, so an
interrupted run never leaves half a dataset behind.

Each loaded pool also names the split's knowledge base (``kb.jsonl``: the 400 entities,
what SEARCH re-retrieves from) and its gold entity (``gold_ids``, from the scene's target,
so a pool the retriever mined without its positive still knows what to look for). Both
are written beside ``pools.jsonl`` on first use (:func:`write_search_files`); they change
nothing for an env without SEARCH.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from envs.data.pools import Candidate, Purpose, QueryDataset, QueryPool, load_query_pools, write_query_pools
from envs.scorers.openclip import OpenClipScorer, Scorer, cosine_scores, embed_candidates
from envs.data.synthetic import ENTITIES, BenchmarkConfig, check_split, mine_pools, reference_image, render_scene, split_specs
from envs.atomic import atomic_dir, atomic_write_json


SCORER_MODEL = "rr-tiny"
"""open_clip config name of the default scorer (``envs/assets/model_configs/rr-tiny.json``)."""
SCORER_CHECKPOINT = Path(__file__).parents[1] / "assets" / "rr-tiny-scorer.pt"
"""The shipped default scorer weights."""
BENCHMARK_VERSION = 1
"""Bump when generation changes in a way the config does not capture (it keys the cache)."""
DEFAULT_CONFIG = BenchmarkConfig()
"""The benchmark ``default_dataset`` materializes unless given another config."""
CACHE_ENV = "REGION_RERANK_CACHE"
"""Environment variable naming the cache root (default ``~/.cache/region-rerank``)."""
POOLS_FILE = "pools.jsonl"
KB_FILE = "kb.jsonl"
"""The split's knowledge base as a KB file (:func:`envs.data.kb_index.load_kb_file`)."""
GOLD_FILE = "gold_ids.json"
"""``{query_id: [gold entity id]}`` of the split (the target of each scene)."""


def default_scorer(**kwargs) -> OpenClipScorer:
    """The embedded default scorer; ``kwargs`` go to :class:`envs.scorers.openclip.OpenClipScorer`
    (``device``, ``candidate_features``, ``cache_dir``, ``batch_size``, ``num_threads``)."""
    return OpenClipScorer(SCORER_MODEL, SCORER_CHECKPOINT, **kwargs)


@functools.cache
def default_scorer_name() -> str:
    """:attr:`default_scorer`'s name (it keys the cache), computed once per process: a
    dataset lookup should not load a model it does not use."""
    return default_scorer().name


def cache_root() -> Path:
    """Root folder of materialized benchmarks: ``$REGION_RERANK_CACHE`` or ``~/.cache/region-rerank``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "region-rerank").expanduser()


def benchmark_dir(config: BenchmarkConfig, scorer_name: str) -> Path:
    """Cache folder of ``config`` mined with the scorer named ``scorer_name``."""
    key = json.dumps({"config": asdict(config), "scorer": scorer_name}, sort_keys=True)
    return cache_root() / f"v{BENCHMARK_VERSION}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def knowledge_base(root: Path) -> tuple[Candidate, ...]:
    """Every entity of the knowledge base as a candidate (what the retriever searches)."""
    return tuple(Candidate(e.id, False, root / "kb" / f"{e.id}.png", e.text) for e in ENTITIES)


def write_split(
    root: str | os.PathLike, split: str, config: BenchmarkConfig = DEFAULT_CONFIG, scorer: Scorer | None = None,
    batch: int = 64, progress: bool = True,
) -> Path:
    """Render ``split`` of the benchmark into ``root`` and return its JSONL path.

    Writes ``kb/<entity>.png`` (the knowledge base), ``images/<query_id>.png`` and
    ``pools.jsonl``. Hard negatives are mined like a retriever would, by the FULL-image
    similarity under ``scorer`` (default: :func:`default_scorer` with the padded forwards
    the benchmark was first mined with, so every machine writes the same pools: one-row
    forwards round differently by ~1e-7, which could reorder a near tie). ``progress``
    shows a progress bar over the scenes on a terminal.
    """
    root = Path(root)
    scorer = scorer if scorer is not None else default_scorer(invariance="padded")
    (root / "kb").mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(parents=True, exist_ok=True)
    kb = knowledge_base(root)
    for entity, candidate in zip(ENTITIES, kb):
        reference_image(entity, config.seed, config.reference_size).save(candidate.image)
    kb_vectors = embed_candidates(scorer, kb)
    specs = split_specs(config, split)
    similarity = np.zeros((len(specs), len(ENTITIES)), dtype=np.float32)
    boxes = []
    bar = tqdm(total=len(specs), desc=f"rendering and mining the {split} split", unit=" scenes", disable=None if progress else True)
    for start in range(0, len(specs), batch):
        scenes = [render_scene(spec) for spec in specs[start : start + batch]]
        for spec, scene in zip(specs[start : start + batch], scenes):
            scene.image.save(root / "images" / f"{spec.query_id}.png")
            boxes.append(tuple(float(v) for v in scene.target_box))
        similarity[start : start + len(scenes)] = cosine_scores(scorer.embed_images([s.image for s in scenes]), kb_vectors)
        bar.update(len(scenes))
    bar.close()
    candidates = {c.id: c for c in kb}
    pools = [
        QueryPool(
            query_id=spec.query_id,
            question=spec.question,
            image=root / "images" / f"{spec.query_id}.png",
            candidates=tuple(
                Candidate(ENTITIES[e].id, positive, candidates[ENTITIES[e].id].image, ENTITIES[e].text)
                for e, positive in zip(pool.entities, pool.positive)
            ),
            box=box,
        )
        for spec, pool, box in zip(specs, mine_pools(specs, similarity, config, split), boxes)
    ]
    return write_query_pools(pools, root / POOLS_FILE, root)


def default_dataset(split: str = "test", purpose: Purpose = "eval", *, config: BenchmarkConfig | None = None) -> QueryDataset:
    """A split of the embedded benchmark, materialized into the cache on first use.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"`` (disjoint scenes, shared knowledge base).
        purpose: ``"train"`` drops pools without a positive, ``"eval"`` keeps them (see
            :func:`envs.data.pools.load_query_pools`).
        config: the benchmark to build (default :data:`DEFAULT_CONFIG`), e.g. with fewer
            queries for a quick check.
    """
    check_split(split)
    config = config if config is not None else DEFAULT_CONFIG
    scorer_name = default_scorer_name()
    folder = benchmark_dir(config, scorer_name) / split
    if not (folder / POOLS_FILE).is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        # A library that works silently for a minute on first use looks hung: say what it does, once.
        print(f"first use: generating the embedded benchmark's {split} split ({config.queries(split)} scenes, "
              f"their hard-negative pools and the {len(ENTITIES)}-entity knowledge base) into {folder}; "
              "later runs load it from there", file=sys.stderr, flush=True)
        # Built beside the final folder and renamed into place: a killed build leaves no
        # folder a later run would trust, and of two concurrent builds one whole one stays.
        with atomic_dir(folder) as partial:
            write_split(partial, split, config, default_scorer(invariance="padded"))
    dataset = load_query_pools(folder / POOLS_FILE, purpose=purpose)
    kb_file, gold = write_search_files(folder, split, config)
    dataset.pools = [replace(pool, gold_ids=tuple(gold[pool.query_id]), kb=kb_file) for pool in dataset.pools]
    return dataset


def write_search_files(folder: Path, split: str, config: BenchmarkConfig = DEFAULT_CONFIG) -> tuple[Path, dict[str, list[str]]]:
    """The split's KB file and gold ids (``{query_id: [entity id]}``), written into ``folder``
    (a materialized split) the first time and read back afterwards. The gold id is the
    scene's target entity, a pure function of the config: no scorer and no search is involved."""
    from envs.data.kb_index import KbItem, write_kb_file  # kb_index imports the scorer; only here

    kb_file, gold_file = folder / KB_FILE, folder / GOLD_FILE
    if not kb_file.is_file():
        write_kb_file([KbItem(c.id, image=c.image, text=c.text) for c in knowledge_base(folder)], kb_file)
    if gold_file.is_file():
        gold = json.loads(gold_file.read_text(encoding="utf-8"))
    else:
        gold = {spec.query_id: [spec.target.entity.id] for spec in split_specs(config, split)}
        atomic_write_json(gold_file, gold)
    return kb_file, gold
