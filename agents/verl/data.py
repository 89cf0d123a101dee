"""verl's training data: query pools as the parquet rows verl's ``RLHFDataset`` reads.

Each query becomes one row: the prompt of :func:`agents.qwen.prompts.to_verl_prompt` worded for
the policy's model family (system prompt, ``<image>`` placeholder, question; the family is
``ImageSettings.family``, else the checkpoint's when a ``model_path`` is given, else
Qwen2.5-VL, the family of the project's default policies), the query image, ``data_source``,
``agent_name="region_rerank"`` (so verl runs :mod:`agents.verl.agent_loop`),
``reward_model.ground_truth`` (the positive candidate ids, as JSON) and ``extra_info``
with ``query_id`` and ``pool_file``, the query-pool JSONL the agent loop rebuilds the
episode from (the loop rebuilds the prompt around the env's view; the row's copy serves
verl's prompt-length filter and its logs). Image and pool paths are absolute: the
parquet files stay valid wherever verl copies them, on machines that see the same file
system.

Training rows keep only queries with a positive in their pool (as the paper does);
validation rows keep every query.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from agents.qwen.family import ModelFamily, get_family, resolve_family
from agents.qwen.prompts import to_verl_prompt
from agents.verl.settings import AGENT_NAME
from envs.settings import ImageSettings
from envs.data.pools import QueryPool, load_query_pools, write_query_pools
from envs.data.default import default_dataset
from envs.atomic import atomic_open

Split = Literal["train", "val"]


def verl_rows(
    pools: Sequence[QueryPool],
    pool_file: str | os.PathLike,
    *,
    split: str,
    data_source: str,
    max_steps: int = 1,
    images: ImageSettings = ImageSettings(),
    family: str | ModelFamily | None = None,
) -> list[dict]:
    """One ``RLHFDataset`` row per pool, pointing back at ``pool_file`` (which holds them).

    The image item carries ``images``' ``min_pixels`` / ``max_pixels`` so verl's
    prompt-length filter resizes it as the agent loop does; the prompt is worded for
    ``family`` (default: ``images.family``, else Qwen2.5-VL).
    """
    family = get_family(family if family is not None else images.family)
    pool_file = os.path.abspath(pool_file)
    rows = []
    for index, pool in enumerate(pools):
        rows.append(
            {
                "data_source": data_source,
                "agent_name": AGENT_NAME,
                "prompt": to_verl_prompt(pool.question, max_steps, family),
                "images": [{"image": os.path.abspath(pool.image), "min_pixels": images.min_pixels, "max_pixels": images.max_pixels}],
                "ability": "region_rerank",
                "reward_model": {
                    "style": "rule",
                    "ground_truth": json.dumps([c.id for c in pool.candidates if c.positive]),
                },
                "extra_info": {
                    "index": index,
                    "split": split,
                    "query_id": pool.query_id,
                    "pool_file": pool_file,
                    "question": pool.question,
                },
            }
        )
    return rows


def write_parquet(rows: Sequence[dict], path: str | os.PathLike) -> Path:
    """Write rows as one parquet file (via a temporary name, so no half-written file remains)."""
    if not rows:
        raise ValueError(f"{path}: no rows to write")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as handle:
        pq.write_table(pa.Table.from_pylist(list(rows)), handle)
    return out


def split_pools(source: Path | None, split: Split, out: Path, max_queries: int | None) -> tuple[Sequence[QueryPool], Path, str]:
    """The pools of one split, the JSONL file that holds them, and a default data_source."""
    purpose = "train" if split == "train" else "eval"
    if source is not None:
        dataset = load_query_pools(source, purpose=purpose)
        if dataset.dropped_without_positive:
            print(f"{source}: dropped {dataset.dropped_without_positive} queries without a positive ({split})")
        pools = list(dataset)[:max_queries]
        return pools, source, f"region_rerank/{source.stem}"
    pools = list(default_dataset(split=split, purpose=purpose))[:max_queries]
    pool_file = write_query_pools(pools, out / f"{split}_pools.jsonl")
    return pools, pool_file, f"region_rerank/synthetic-{split}"


def export_verl_data(
    out: Path,
    train: Path | None = None,
    val: Path | None = None,
    *,
    max_steps: int = 1,
    images: ImageSettings = ImageSettings(),
    data_source: str | None = None,
    max_queries: int | None = None,
    val_queries: int | None = None,
    quiet: bool = False,
    model_path: str | os.PathLike | None = None,
) -> dict[str, Path]:
    """Write ``out/train.parquet`` and ``out/val.parquet`` (default sources: the embedded
    benchmark's train and val splits); returns their paths by split. The prompts are
    worded for ``images.family``, else for the family of ``model_path``'s config, else
    Qwen2.5-VL's (an unknown family is refused before anything is written)."""
    family = resolve_family(images.family, model_path)
    written = {}
    for split, source in (("train", train), ("val", val)):
        limit = val_queries if split == "val" and val_queries is not None else max_queries
        pools, pool_file, default_source = split_pools(source, split, out, limit)
        rows = verl_rows(
            pools, pool_file, split=split, data_source=data_source or default_source,
            max_steps=max_steps, images=images, family=family,
        )
        written[split] = write_parquet(rows, out / f"{split}.parquet")
        if not quiet:
            print(f"{split}: {len(rows)} rows -> {written[split]} (pools: {pool_file}; {family.label} prompt, boxes in {family.frame!r})")
    return written
