"""Warm-start a tiny Qwen2.5-VL policy on fresh scenes (see :mod:`agents.qwen.sft`).

    python recipes/warm_start_tiny_qwen.py                        # the learner verl-cpu trains, into the cache
    python recipes/warm_start_tiny_qwen.py --seed 1               # another seed
    python recipes/warm_start_tiny_qwen.py --size toy --steps 300 --out agents/qwen/assets/tiny-qwen-rr

Builds the tiny model (seeded), fine-tunes it on scenes drawn fresh from the embedded
benchmark's generator, then reports greedy on the validation split: the IoU of its boxes
with the annotated box, its MRR with its own decisions and always cropping, and the share
of answers sampled at temperature 1 that parse. Without ``--out`` the checkpoint goes to
the cache folder ``python recipes/train_rgrpo.py verl-cpu`` reads it from.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import tyro

from agents.qwen.sft import WarmStartConfig, cache_path, describe, warm_start, warm_started_policy


@dataclass
class Args:
    warm_start: tyro.conf.OmitArgPrefixes[WarmStartConfig] = field(default_factory=WarmStartConfig)
    out: Path | None = None
    """output folder (a Hugging Face checkpoint); default: the cache folder of this config"""
    force: bool = False
    """rebuild even when the cache already holds this config's checkpoint"""


def main(args: Args) -> dict:
    config = args.warm_start
    if args.out is None:
        if args.force:
            shutil.rmtree(cache_path(config), ignore_errors=True)
        path = warm_started_policy(config)
        record = json.loads((path / "warm_start.json").read_text())
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        path, record = args.out, warm_start(config, args.out)
    print(describe(record))
    print(f"checkpoint: {path}")
    return record


if __name__ == "__main__":
    main(tyro.cli(Args))
