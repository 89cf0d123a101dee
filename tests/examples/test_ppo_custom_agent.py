"""examples/ppo_custom_agent.py runs a few PPO updates end to end and reports what a user reads."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ppo_custom_agent.py"


def load_example():
    spec = importlib.util.spec_from_file_location("ppo_custom_agent", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(600)
def test_a_few_updates_give_finite_losses_and_a_test_table(scene_pool_files, capsys):
    example = load_example()
    args = example.Args(updates=2, episodes=8, epochs=2, data=scene_pool_files["train"],
                        test_data=scene_pool_files["val"], test_queries=3)
    results = example.main(args)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("update ")]
    assert [line.split(" |")[0] for line in lines] == ["update 1/2", "update 2/2"]
    for line in lines:
        for field in ("reward", "policy loss", "value loss", "entropy"):
            value = float(line.split(f"| {field} ")[1].split()[0])
            assert math.isfinite(value), line
    assert "test MRR on 3 queries: ppo " in out and "center-0.5" in out
    assert set(results) == {"ppo", "full", "center-0.5"} and all(0.0 < v <= 1.0 for v in results.values())
