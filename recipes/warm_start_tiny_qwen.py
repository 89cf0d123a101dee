"""Warm-start the tiny Qwen2.5-VL that ``--backend verl-cpu`` trains (see :mod:`agents.warm_start`).

    python recipes/warm_start_tiny_qwen.py                  # writes agents/assets/tiny-qwen-rr
    python recipes/warm_start_tiny_qwen.py --steps 300 --out runs/tiny-qwen-quick

Fine-tunes a freshly built tiny Qwen2.5-VL (seeded) on the embedded benchmark's train
split with the agent loop's prompt, then samples answers at temperature 1 on the
validation split and prints how many parse. The shipped checkpoint was made by the first
command; its ``warm_start.json`` records the settings and the measured parse rate.
"""

from __future__ import annotations

import json

import torch
import tyro

from agents.warm_start import WarmStartConfig, warm_start
from envs.default import default_dataset


def main(config: WarmStartConfig) -> dict:
    torch.set_num_threads(config.threads)  # the shipped checkpoint is bit-reproducible at this thread count
    train = default_dataset(split="train", purpose="train")
    val = default_dataset(split="val", purpose="train")
    record = warm_start(config, list(train), list(val))
    sampled = record["sampled"]
    print(json.dumps({k: v for k, v in record.items() if k != "sampled"}, indent=2))
    print(
        f"{sampled['answers']} answers sampled at temperature 1: {sampled['parse_rate']:.0%} parse "
        f"({sampled['full']} FULL, {sampled['region']} REGION, {sampled['malformed']} malformed) -> {config.out}"
    )
    return record


if __name__ == "__main__":
    main(tyro.cli(WarmStartConfig))
