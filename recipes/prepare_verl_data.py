"""Export query pools as the parquet files verl's ``RLHFDataset`` reads for training
(the row format is described in :mod:`agents.verl.data`).

    python recipes/prepare_verl_data.py                          # embedded benchmark, train + val
    python recipes/prepare_verl_data.py --train data/evqa/train.jsonl --val data/evqa/val.jsonl \\
        --out data/verl/evqa --images.max-pixels 401408
    python recipes/prepare_verl_data.py --model-path runs/tiny-qwen3 # prompts worded for that model's family
    python recipes/prepare_verl_data.py --images.family qwen3_vl     # or name the family

Writes ``train.parquet`` and ``val.parquet`` to ``--out`` (and, for the embedded
benchmark, the pool files they point to). The prompts are worded for the policy's model
family (:mod:`agents.qwen.family`): ``--images.family``, else the family of
``--model-path``'s config, else Qwen2.5-VL. ``--max-steps`` and ``--images.*``
must match the training run's (``recipes/train_rgrpo.py`` exports the
embedded benchmark itself with its own settings when no data files are given).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import tyro

from agents.verl.data import export_verl_data
from envs.data.pools import DataError
from envs.settings import ImageSettings


@dataclass
class Args:
    train: Path | None = None
    """query-pool JSONL for training (queries without a positive are dropped); default: the embedded train split"""
    val: Path | None = None
    """query-pool JSONL for validation (every query is kept); default: the embedded val split"""
    out: Path = Path("data/verl")
    """output folder for train.parquet and val.parquet"""
    max_steps: int = 1
    """REGION steps per episode the prompt announces (must match the agent loop's max_steps)"""
    images: ImageSettings = field(default_factory=ImageSettings)
    """pixel limits of the query image as shown to the policy (must match the agent loop's)"""
    data_source: str | None = None
    """data_source column (verl groups validation metrics by it); default: region_rerank/<file stem or split>"""
    max_queries: int | None = None
    """export only the first N queries of each split (quick runs)"""
    model_path: str | None = None
    """policy checkpoint whose config's model_type picks the prompt's family (qwen2_5_vl, qwen3_vl);
    default: --images.family, else qwen2_5_vl"""


def main(args: Args) -> dict[str, Path]:
    """Write ``train.parquet`` and ``val.parquet``; returns their paths by split."""
    return export_verl_data(
        args.out, args.train, args.val, max_steps=args.max_steps, images=args.images, data_source=args.data_source,
        max_queries=args.max_queries, model_path=args.model_path,
    )


if __name__ == "__main__":
    try:
        main(tyro.cli(Args))
    except (DataError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
