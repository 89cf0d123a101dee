"""A custom agent in one file: PPO in plain torch on RegionRerank-v0's native Dict action.

CleanRL-style: everything is here, top to bottom. The policy sees the observation image
and the question (a hashed bag of words) and outputs a Bernoulli decision (REGION or FULL)
and a box as four Beta-distributed numbers: centre x, y and width, height, mapped into the
view by ``envs.actions.center_box`` (so every box is valid). Episodes are one step
(``max_steps=1``, the paper's setting), so the advantage is the reward minus the value.
Each update prints the training reward and losses; at the end the greedy policy's test MRR
is printed next to FULL and center-0.5 on the same queries.

    python examples/ppo_custom_agent.py                       # embedded benchmark
    python examples/ppo_custom_agent.py --updates 5 --episodes 32 --test-queries 20
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro
from torch.distributions import Bernoulli, Beta

import envs  # noqa: F401  (registers RegionRerank-v0)
from envs.actions import FULL, REGION, center_box
from envs.threads import set_threads
from envs.wrappers import hashed_bag_of_words
from rewards.metrics import reciprocal_of_rank


@dataclass
class Args:
    updates: int = 120
    """PPO updates (one batch of episodes each)"""
    episodes: int = 128
    """episodes (one step each) per update"""
    epochs: int = 10
    """passes over each batch"""
    minibatch: int = 32
    """episodes per gradient step"""
    lr: float = 3e-4
    """Adam learning rate"""
    clip: float = 0.2
    """PPO ratio clip"""
    entropy_coef: float = 0.0
    """entropy bonus (0: the box's spread shrinks only as fast as the rewards ask)"""
    box_concentration: float = 8.0
    """initial alpha + beta of each box number's Beta (2 is uniform; 8 starts around the centre with std 0.17)"""
    question_dim: int = 2048
    """hash buckets of the question's bag of words"""
    obs_size: int = 64
    """side of the observation image"""
    data: Path | None = None
    """training query pools (JSONL); default: the embedded benchmark's train split"""
    test_data: Path | None = None
    """test query pools (JSONL); default: the embedded benchmark's test split"""
    test_queries: int = 250
    """greedy test episodes at the end (the first N test queries)"""
    seed: int = 0
    """seed of torch, the env and the action sampling"""
    threads: int = 1
    """torch intra-op threads"""


class Agent(nn.Module):
    """Image CNN + question MLP -> decision logit, Beta box means and a value.

    Each box number is ``Beta(m * k, (1 - m) * k)``: its mean ``m`` depends on the
    observation, its concentration ``k`` is one learned number per box coordinate (as
    a Gaussian policy's log std is), starting at ``box_concentration``.
    """

    def __init__(self, question_dim: int, box_concentration: float):
        super().__init__()
        self.image = nn.Sequential(
            nn.Conv2d(3, 16, 5, stride=2), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
            nn.Conv2d(32, 32, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        )
        self.question = nn.Sequential(nn.Linear(question_dim, 64), nn.ReLU())
        self.trunk = nn.Sequential(nn.Linear(32 * 16 + 64, 128), nn.ReLU())
        self.actor = nn.Linear(128, 1 + 4)  # decision logit, box means (logits)
        self.critic = nn.Linear(128, 1)
        # CleanRL's initialisation: every state starts from the same even decision and centred box.
        nn.init.orthogonal_(self.actor.weight, 0.01)
        nn.init.zeros_(self.actor.bias)
        # Uniform boxes are mostly far from anything the question names, and their rewards
        # too noisy to follow; starting concentrated lets PPO move the boxes' means.
        self.log_concentration = nn.Parameter(torch.full((4,), float(np.log(box_concentration))))

    def forward(self, image: torch.Tensor, question: torch.Tensor):
        x = self.trunk(torch.cat([self.image(image.float() / 255.0), self.question(question)], dim=1))
        out = self.actor(x)
        decision = Bernoulli(logits=out[:, 0])
        mean, concentration = torch.sigmoid(out[:, 1:]), self.log_concentration.exp()
        box = Beta(mean * concentration, (1 - mean) * concentration)
        return decision, box, self.critic(x)[:, 0]


def to_tensors(obs: dict, question_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    image = torch.from_numpy(np.array(obs["image"])).permute(2, 0, 1)[None]  # a copy: observations may be read-only
    return image, torch.as_tensor(hashed_bag_of_words(obs["question"], question_dim))[None]


def env_action(decision: float, box01: np.ndarray) -> dict:
    """The native action: the Beta's 0-1 numbers are centre and size (``center_box`` takes [-1, 1])."""
    return {"decision": REGION if decision >= 0.5 else FULL, "box": center_box(2.0 * box01 - 1.0).astype(np.float32)}


def collect(env: gym.Env, agent: Agent, args: Args) -> dict[str, torch.Tensor]:
    """One batch of one-step episodes sampled from the current policy."""
    rows = {k: [] for k in ("image", "question", "decision", "box", "logp", "value", "reward")}
    for _ in range(args.episodes):
        obs, _ = env.reset()
        image, question = to_tensors(obs, args.question_dim)
        with torch.no_grad():
            decision_dist, box_dist, value = agent(image, question)
            decision, box = decision_dist.sample(), box_dist.sample().clamp(1e-4, 1 - 1e-4)
            logp = decision_dist.log_prob(decision) + decision * box_dist.log_prob(box).sum(-1)
        _, reward, _, _, _ = env.step(env_action(float(decision), box[0].numpy()))
        for key, value_ in zip(rows, (image, question, decision, box, logp, value, torch.tensor([reward]))):
            rows[key].append(value_)
    return {key: torch.cat(values).float() for key, values in rows.items()}


def update(agent: Agent, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor], args: Args) -> dict[str, float]:
    """PPO's clipped objective, ``args.epochs`` passes over shuffled minibatches; the box counts
    only where REGION was chosen."""
    advantage = batch["reward"] - batch["value"]
    batch["advantage"] = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
    for _ in range(args.epochs):
        for rows in torch.randperm(len(batch["reward"])).split(args.minibatch):
            mb = {key: values[rows] for key, values in batch.items()}
            advantage = mb["advantage"]
            decision_dist, box_dist, value = agent(mb["image"], mb["question"])
            logp = decision_dist.log_prob(mb["decision"]) + mb["decision"] * box_dist.log_prob(mb["box"]).sum(-1)
            ratio = torch.exp(logp - mb["logp"])
            policy_loss = -torch.min(ratio * advantage, ratio.clamp(1 - args.clip, 1 + args.clip) * advantage).mean()
            value_loss = 0.5 * (value - mb["reward"]).pow(2).mean()
            entropy = (decision_dist.entropy() + box_dist.entropy().sum(-1)).mean()
            loss = policy_loss + 0.5 * value_loss - args.entropy_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), 0.5)
            optimizer.step()
    return {"policy_loss": policy_loss.item(), "value_loss": value_loss.item(), "entropy": entropy.item()}


def test_mrr(env: gym.Env, act, n: int) -> float:
    """Mean reciprocal rank of the positive after ``act(obs)`` on the first ``n`` queries."""
    ranks = []
    for i in range(n):
        obs, _ = env.reset(options={"query_index": i})
        _, _, _, _, info = env.step(act(obs))
        ranks.append(float(reciprocal_of_rank(info["rank"], len(info["scores"]))))
    return float(np.mean(ranks))


def main(args: Args) -> dict[str, float]:
    set_threads(args.threads)
    torch.manual_seed(args.seed)
    env = gym.make("RegionRerank-v0", dataset=args.data, split="train", purpose="train", obs_size=args.obs_size)
    env.reset(seed=args.seed)
    agent = Agent(args.question_dim, args.box_concentration)
    optimizer = torch.optim.Adam(agent.parameters(), lr=args.lr)
    start = time.perf_counter()
    for n in range(1, args.updates + 1):
        batch = collect(env, agent, args)
        losses = update(agent, optimizer, batch, args)
        print(f"update {n}/{args.updates} | reward {batch['reward'].mean():.3f} | crop rate "
              f"{batch['decision'].mean():.2f} | policy loss {losses['policy_loss']:.3f} | value loss "
              f"{losses['value_loss']:.3f} | entropy {losses['entropy']:.2f} | {time.perf_counter() - start:.0f} s", flush=True)

    def greedy(obs):
        with torch.no_grad():
            decision_dist, box_dist, _ = agent(*to_tensors(obs, args.question_dim))
        return env_action(float(decision_dist.probs[0]), box_dist.mean[0].numpy())

    test = gym.make("RegionRerank-v0", dataset=args.test_data, split="test", obs_size=args.obs_size)
    n = min(args.test_queries, len(test.unwrapped.pools))
    results = {
        "ppo": test_mrr(test, greedy, n),
        "full": test_mrr(test, lambda obs: {"decision": FULL, "box": np.zeros(4, np.float32)}, n),
        "center-0.5": test_mrr(test, lambda obs: {"decision": REGION, "box": np.array([0.25, 0.25, 0.75, 0.75], np.float32)}, n),
    }
    print(f"test MRR on {n} queries: " + ", ".join(f"{name} {mrr:.3f}" for name, mrr in results.items()))
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
