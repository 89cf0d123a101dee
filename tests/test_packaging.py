"""The light core: the env runs without the trainer frameworks, and imports change nothing
process-wide.

``pip install -e .`` brings the env, rewards, scorers and the embedded default only;
verl, Ray and transformers come with extras (pyproject.toml). Each check runs in a fresh
interpreter, where importing the blocked packages raises as if they were not installed.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCK_IMPORTS = """
import sys

class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        return None

sys.meta_path.insert(0, NotInstalled())
"""


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                                                       "OMP_NUM_THREADS": "1", "HOME": str(Path.home())})


def test_the_env_builds_and_steps_without_verl_ray_or_transformers():
    run = run_python("BLOCKED = {'verl', 'ray', 'transformers', 'agents'}\n" + BLOCK_IMPORTS + """
import gymnasium as gym

env = gym.make("envs:RegionRerank-v0")
obs, info = env.reset(seed=0)
obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"verl", "ray", "transformers"})
print("stepped", float(reward), terminated or truncated, loaded)
""")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().endswith("[]")  # nothing of the trainer stack was even attempted
    assert "stepped" in run.stdout


def test_importing_agents_installs_no_warning_or_log_filter():
    # Only the project's own filters are checked: torch, numpy and gymnasium add theirs on import.
    run = run_python("""
import logging
import warnings

import agents, agents.evaluation.runner, agents.evaluation.baselines  # noqa: E401,F401
from agents.verl.quiet import ENGINE_WARNING

platform_logger = logging.getLogger("verl.plugin.platform.platform_manager")
ours = [f for f in warnings.filters if f[1] is not None and f[1].pattern == ENGINE_WARNING]
print(ours == [], platform_logger.filters == [])
""")
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["True", "True"]
