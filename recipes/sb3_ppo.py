"""Stable-Baselines3 PPO on the embedded benchmark, with the env used unchanged.

The env is wrapped only by the project's own wrappers, ``FlatBoxAction(HashedQuestion(env))``
(a ``Box(0, 1, (5,))`` action and the question as a hashed bag of words), and trained
with SB3's ``MultiInputPolicy``. The box is the wrapper's default ``"center"`` encoding
(centre and size in ``[-1, 1]``, valid by construction; ``--box-encoding corners`` is the
old one). The trained policy is then evaluated greedily on the test split next to FULL
and the question-blind crops (center-0.5, random); writes ``results.md``, ``results.json``, the plots and
``ppo.zip`` to ``--out``.

    python recipes/sb3_ppo.py
    python recipes/sb3_ppo.py --timesteps 50000 --seed 1
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tyro

from agents.evaluation.baselines import baseline_policies
from agents.evaluation.runner import evaluate_and_report
from envs.threads import DEFAULT_THREADS, set_threads
from envs.actions import BoxEncoding, read_flat_action
from envs.data.pools import DataError
from envs.region_rerank import RegionRerankEnv
from envs.factory import make_env, make_scorer
from envs.settings import EnvSettings
from envs.wrappers import FlatBoxAction, HashedQuestion, hashed_bag_of_words


@dataclass
class Args:
    timesteps: int = 32_768
    """PPO environment steps (one step is one episode with max_steps=1)"""
    seed: int = 0
    """seed of PPO and of the training env's query draws"""
    question_dim: int = 2048
    """hash buckets of the question's bag of words"""
    n_steps: int = 256
    """PPO rollout length per update"""
    batch_size: int = 64
    """PPO minibatch size"""
    n_epochs: int = 10
    """PPO epochs per update"""
    learning_rate: float = 3e-4
    """Adam learning rate"""
    ent_coef: float = 0.0
    """entropy bonus"""
    log_std_init: float = -1.0
    """initial log standard deviation of the Gaussian action (SB3's default is 0: std 1 on a [-1, 1] box)"""
    test_queries: int | None = None
    """evaluate on the first N test queries only (default: all)"""
    threads: int = DEFAULT_THREADS
    """torch intra-op threads"""
    box_encoding: BoxEncoding = "center"
    """FlatBoxAction's box: "center" (centre and size, valid by construction) or "corners" (x1, y1, x2, y2 as given)"""
    out: Path = Path("runs/sb3_ppo")
    """output folder: ppo.zip, results.md, results.json and the plots"""
    env: EnvSettings = field(default_factory=lambda: EnvSettings(obs_size=64))
    """the episode: observation size (SB3's CNN needs at least 36 px), reward weights and penalties (training and the mean reward column)"""


class SB3Policy:
    """A trained SB3 model as a project policy ``policy(obs, info, env) -> action`` (greedy)."""

    def __init__(self, model, question_dim: int, encoding: BoxEncoding):
        self.model = model
        self.question_dim = question_dim
        self.encoding = encoding

    def __call__(self, obs: dict, info: dict, env: RegionRerankEnv):
        numeric = {**obs, "question": hashed_bag_of_words(obs["question"], self.question_dim)}
        action, _ = self.model.predict(numeric, deterministic=True)
        space = self.model.action_space  # SB3 clips to it when it steps, so the policy is read the same
        return read_flat_action(np.clip(action, space.low, space.high), encoding=self.encoding)


def main(args: Args) -> dict[str, dict]:
    from stable_baselines3 import PPO

    set_threads(args.threads)
    scorer = make_scorer()
    train_env = FlatBoxAction(
        HashedQuestion(make_env(None, scorer, split="train", purpose="train", settings=args.env), dim=args.question_dim),
        encoding=args.box_encoding,
    )
    train_env.reset(seed=args.seed)
    model = PPO(
        "MultiInputPolicy",
        train_env,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        learning_rate=args.learning_rate,
        ent_coef=args.ent_coef,
        policy_kwargs={"log_std_init": args.log_std_init},
        seed=args.seed,
        device="cpu",
        verbose=1,
    )
    model.learn(total_timesteps=args.timesteps, progress_bar=False)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / "ppo.zip")

    test_env = make_env(None, scorer, split="test", purpose="eval", settings=args.env)
    n = len(test_env.pools) if args.test_queries is None else min(args.test_queries, len(test_env.pools))
    policies = {**baseline_policies(("full", "center", "random")), "sb3-ppo": SB3Policy(model, args.question_dim, args.box_encoding)}
    source = f"embedded benchmark, test split; SB3 PPO {args.timesteps} steps, seed {args.seed}, {args.box_encoding} boxes"
    return evaluate_and_report(test_env, policies, range(n), args.out, source)


if __name__ == "__main__":
    try:
        main(tyro.cli(Args, args=sys.argv[1:]))
    except DataError as err:  # bad input data: say which file/line/field, no traceback
        raise SystemExit(f"error: {err}") from None
