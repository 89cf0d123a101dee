"""Train a small cropping policy on CPU with verl's advantage estimators (r-GRPO by default).

The loop is GRPO's: for each query of a batch, sample a group of ``group_size`` actions
from the policy, make the group decision-balanced (:func:`agents.rgrpo.balance_group`:
extra on-policy draws first, a forced decision with its token masked only when the
budget is spent), score the whole group with ONE batched scorer call
(:meth:`envs.region_rerank.RegionRerankEnv.score_actions`), and compute advantages with
verl's own dispatch function, ``verl.trainer.ppo.ray_trainer.compute_advantage``, on a
verl ``DataProto``, exactly as verl's trainer does. So ``estimator`` is any name in verl's
estimator registry (``rgrpo``, ``grpo``, ``rloo``, ``reinforce_plus_plus``, ...), one switch,
as in the verl recipe.

An action is two tokens (decision, box; see :mod:`agents.local.policy`), plus a second-box
token and a search token when the env has ``max_regions >= 2`` / ``search`` on (the
policy gets the matching heads automatically). The reward sits on the last unmasked
token, as verl places a sequence reward on the last response token.
Each batch is used for one gradient step, so the update is on-policy and PPO's ratio
clipping would be the identity; the loss is verl's ``agg_loss`` of ``-A * log pi``
("token-mean") minus an entropy bonus.

Grounding from the annotated boxes of the training split (as LFPC's supervised stage): by
default RL starts from a **warm start**, ``warm_start_steps`` supervised steps of the
cross-entropy of the box token toward the grid box nearest the annotation
(:func:`grounding_loss`), each example shown in a random mirror image with its
question's position words swapped (:func:`envs.data.synthetic.scenes.mirror_question`); ``grounding_coef`` adds the
same loss to every RL step, and the reward's ``w_iou`` term pays the IoU instead. Every
iteration logs the sampled crop rate per baseline-rank bucket (``rc_rate[1]``, ...) for
the decision-collapse dashboard (:mod:`agents.evaluation.dashboard`).

A run survives being killed: every ``checkpoint_every`` iterations the whole training state
(policy, optimizer, every RNG the loop draws from, the metrics so far) is written
atomically to ``OUT/resume.pt`` (:data:`STATE_FILE`), and the same command started again
continues from it, to the same final policy and ``metrics.csv`` as a run never stopped
(on the same machine and thread count; the wall-clock ``seconds`` column aside). Ctrl-C
writes the metrics so far and says how to resume.
"""

from __future__ import annotations

import csv
import json
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import tyro
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from agents.evaluation.dashboard import plot_decision_dashboard
from agents.evaluation.runner import evaluate_policy
from agents.local.policy import (
    CropPolicyNet,
    LocalPolicy,
    PolicyConfig,
    load_policy,
    native_action,
    nearest_box,
    save_policy,
    token_entropy,
    token_log_probs,
)
from agents.rgrpo import BalanceResult, balance_group, balance_path_rates
from envs.actions import REGION
from envs.atomic import atomic_open, atomic_torch_save
from rewards.evaluation import RANK_BUCKETS, rank_bucket
from envs.boxes import image_box_to_view, mirror_norm_box
from envs.data.synthetic.scenes import mirror_question
from envs.region_rerank import RegionRerankEnv
from envs.factory import make_env, make_scorer
from envs.scorers.openclip import Scorer
from envs.settings import EnvSettings, ScorerSettings
from envs.threads import DEFAULT_THREADS

NOT_SUPPORTED = {"gae": "needs a critic (values); use train_rgrpo.py verl", "remax": "needs a greedy-rollout baseline"}


@dataclass
class LocalTrainConfig:
    """Everything the CPU backend needs; ``recipes/train_rgrpo.py local`` exposes it as its flags."""

    estimator: str = "rgrpo"
    """verl advantage estimator by registry name: rgrpo, grpo, rloo, reinforce_plus_plus, ..."""
    iterations: int = 300
    """gradient steps (one batch of groups each)"""
    queries_per_batch: int = 16
    """queries per batch; each gets a group of group_size rollouts"""
    group_size: int = 16
    """rollouts per query (GRPO's n)"""
    balance_budget: int = 8
    """extra on-policy draws allowed to find a group's missing decision before forcing it"""
    balance_groups: bool = True
    """make every group hold both decisions (r-GRPO); off for plain GRPO-style sampling"""
    lr: float = 1e-3
    """Adam learning rate"""
    entropy_coef: float = 0.01
    """weight of the entropy bonus on both tokens. A larger bonus (0.05) keeps the sampled
    boxes spread, so in training a crop earns less than the greedy box it is evaluated
    with, and the decision learns to keep FULL where cropping would have paid"""
    norm_adv_by_std: bool = True
    """divide group-relative advantages by the group std (verl's norm_adv_by_std_in_grpo,
    whose default this keeps). Without it every seed collapsed to cropping every query in
    the README's comparison (5 seeds, 60 iterations), a difference the seeds do not resolve"""
    grounding_coef: float = 0.0
    """weight of the grounding loss: cross-entropy of the box token toward the policy's box
    that best overlaps the query's annotated box (a supervised signal, as LFPC's second
    stage; queries without a box add nothing); 0 trains on the reward alone"""
    warm_start_steps: int = 500
    """supervised steps of the grounding loss alone (batches of warm_start_batch annotated
    training queries) before RL, so RL starts from a policy that knows where questions
    point; 0: RL from the random init"""
    warm_start_batch: int = 64
    """annotated queries per warm-start step"""
    warm_start_mirror: bool = True
    """show each warm-start example in a random mirror image (left-right and/or top-bottom,
    the question's left/right, upper/lower, top/bottom swapped with it): four times the
    examples, which the small grounder needs not to memorize the training scenes. Turn it
    off for data a mirror changes the answer of (text in images, "the second from left")"""
    init_policy: Path | None = None
    """start RL from this checkpoint (``save_policy``; same architecture) instead of the
    seed's initial weights and the warm start: e.g. one warm start shared by the variants
    of a comparison (:func:`warm_started_policy`)"""
    seed: int = 0
    """seeds the policy init, the warm start's batches, query order and action sampling"""
    eval_every: int = 50
    """evaluate the greedy policy on the validation queries every N iterations (0: never)"""
    eval_queries: int = 100
    """validation queries per evaluation"""
    time_budget_s: float | None = None
    """stop early after this many seconds of training (the last checkpoint is kept)"""
    data: Path | None = None
    """training query pools (JSONL); default: the embedded benchmark's train split"""
    val_data: Path | None = None
    """validation query pools (JSONL); default: the embedded benchmark's val split"""
    scorer: ScorerSettings = field(default_factory=ScorerSettings)
    """the frozen re-ranker to train against (default: the embedded rr-tiny scorer)"""
    env: EnvSettings = field(default_factory=lambda: EnvSettings(obs_size=64))
    """the episode: reward and how it is paid, observation size (64 px for the small policy)"""
    out: Path = Path("runs/local")
    """output folder: policy.pt, metrics.csv, TensorBoard events, curves.png, dashboard.png"""
    threads: Annotated[int, tyro.conf.arg(prefix_name=False)] = DEFAULT_THREADS
    """torch intra-op threads (set by the recipes, once per process; spelled --threads in every recipe, see envs/threads.py)"""
    progress: bool = True
    """show progress bars"""
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    """policy architecture"""
    checkpoint_every: int = 10
    """write the training state (policy, optimizer, RNG states, metrics so far) to
    OUT/resume.pt and the metrics to OUT/metrics.csv every N iterations, atomically (0: only
    at the end); a killed or interrupted run started again with the same flags continues
    from the last one"""
    resume: Literal["auto", "require", "fresh"] = "auto"
    """auto: continue the unfinished run in OUT when it has the same config (a different
    config is refused, naming the field) and start anew otherwise; require: fail unless
    there is one to continue; fresh: start over, replacing what OUT holds"""

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON types (paths as strings), for checkpoints and logs."""
        return json.loads(json.dumps(asdict(self), default=str))


STATE_FILE = "resume.pt"
"""The training state a run resumes from, in its output folder."""

RESUME_FREE = frozenset({"out", "progress", "threads", "time_budget_s", "checkpoint_every", "resume"})
"""Fields a resumed run may change: where it writes, how it reports, how long it may take,
how often it saves (none changes what is trained; ``threads`` may change float bits only)."""


def config_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """``"field: saved -> current"`` for each (nested, dotted) field that differs between
    two :meth:`LocalTrainConfig.to_dict` results, fields in :data:`RESUME_FREE` aside."""
    out = []
    for key in sorted(set(saved) | set(current)):
        if not prefix and key in RESUME_FREE:
            continue
        old, new = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(old, dict) and isinstance(new, dict):
            out += config_differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return out


def unfinished_differences(config: LocalTrainConfig) -> list[str] | None:
    """How the unfinished run in ``config.out`` differs from ``config`` (see
    :func:`config_differences`; empty: it is ``config``'s), or None when there is none."""
    path = config.out / STATE_FILE
    if not path.is_file():
        return None
    state = _read_state(path)
    return None if state["finished"] else config_differences(state["config"], config.to_dict())


def _read_state(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: RNG states are not tensors
    except Exception as err:  # truncated by something other than this module, or not a torch file
        raise ValueError(f"{path} is not a readable training state ({err}); delete it or pass --resume fresh") from err
    if not isinstance(state, dict) or not {"config", "iteration", "finished"} <= state.keys():
        raise ValueError(f"{path} is not a training state of this trainer; delete it or pass --resume fresh")
    return state


def load_state(config: LocalTrainConfig) -> dict[str, Any] | None:
    """The state of an unfinished run of ``config`` in ``config.out`` to resume, or None to
    start anew (per ``config.resume``). Refuses an unfinished run of another config."""
    path = config.out / STATE_FILE
    if config.resume == "fresh" or not path.is_file():
        if config.resume == "require":
            raise ValueError(f"--resume: {path} does not exist, so there is no run to continue")
        return None
    state = _read_state(path)
    if state["finished"]:
        if config.resume == "require":
            raise ValueError(f"--resume: the run in {config.out} already finished (iteration {state['iteration']})")
        return None
    differences = config_differences(state["config"], config.to_dict())
    if differences:
        raise ValueError(
            f"{config.out} holds an unfinished run (iteration {state['iteration']} of {state['config']['iterations']}) "
            f"with another config: {'; '.join(differences)}. Run with the same flags to resume it, "
            "--resume fresh to start over, or choose another --out"
        )
    return state


def _env_rng(env: RegionRerankEnv) -> np.random.Generator | None:
    return getattr(env.unwrapped, "_np_random", None)  # None until the env is seeded or draws


def save_state(config: LocalTrainConfig, run: RunState, iteration: int, finished: bool) -> Path:
    """Write the whole training state after ``iteration`` to ``OUT/resume.pt`` atomically."""
    state = {
        "config": config.to_dict(), "iteration": iteration, "finished": finished,
        "seconds": time.perf_counter() - run.start,
        "net": run.net.state_dict(), "optimizer": run.optimizer.state_dict(), "history": run.history,
        "numpy": run.rng.bit_generator.state, "sampler": run.generator.get_state(),
        "torch": torch.get_rng_state(), "python": random.getstate(),
        "envs": [None if _env_rng(env) is None else _env_rng(env).bit_generator.state for env in run.envs],
    }
    return atomic_torch_save(state, config.out / STATE_FILE)


def restore_state(state: dict[str, Any], run: RunState) -> None:
    """Put the network, optimizer, every RNG and the metrics back where :func:`save_state`
    found them; the run continues after the saved iteration, its clock counting the
    seconds already trained."""
    run.net.load_state_dict(state["net"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.rng.bit_generator.state = state["numpy"]
    run.generator.set_state(state["sampler"])
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    for env, env_state in zip(run.envs, state["envs"]):
        if env_state is not None:
            env.unwrapped.np_random = np.random.default_rng()
            env.unwrapped.np_random.bit_generator.state = env_state
    run.history, run.start = state["history"], run.start - state["seconds"]
    run.done = run.saved_at = state["iteration"]


def resume_command() -> str:
    """The command line that started this process: run again, it resumes."""
    return "python " + shlex.join(sys.argv)


@dataclass
class TrainResult:
    checkpoint: Path
    history: list[dict[str, float]]
    seconds: float


@dataclass
class RunState:
    """What a run changes as it trains, and what :func:`save_state` saves: the policy, its
    optimizer, the RNGs the loop draws from (the envs hold their own), the metrics so far."""

    net: CropPolicyNet
    optimizer: torch.optim.Optimizer
    rng: np.random.Generator
    """draws each iteration's queries"""
    generator: torch.Generator
    """draws the sampled actions"""
    envs: tuple[RegionRerankEnv, RegionRerankEnv]
    """training and validation"""
    start: float
    """``time.perf_counter()`` when the run started (a resumed run's: as if never stopped)"""
    history: list[dict[str, float]] = field(default_factory=list)
    done: int = 0
    """iterations finished before this process started"""
    saved_at: int | None = None
    """the iteration the last saved state resumes after"""


def make_envs(config: LocalTrainConfig, scorer: Scorer) -> tuple[RegionRerankEnv, RegionRerankEnv]:
    """Training env (pools without a positive dropped, unless the env can SEARCH: then a
    search can bring the positive in, and those pools are where it pays) and validation
    env (all kept)."""
    purpose = "eval" if config.env.search else "train"
    train_env = make_env(config.data, scorer, split="train", purpose=purpose, settings=config.env)
    val_env = make_env(config.val_data, scorer, split="val", purpose="eval", settings=config.env)
    return train_env, val_env


class GroupSampler:
    """Samples decision-balanced groups of (decision, box) actions from one query's logits."""

    def __init__(self, group_size: int, budget: int, balance: bool, generator: torch.Generator):
        self.group_size, self.budget, self.balance = group_size, budget, balance
        self.generator = generator

    def _draw(self, probs: torch.Tensor, n: int) -> torch.Tensor:
        return torch.multinomial(probs, n, replacement=True, generator=self.generator)

    def sample(self, decision_logits: torch.Tensor, box_logits: torch.Tensor, *extra_logits: torch.Tensor):
        """``(decisions, box_ids, decision_mask, balance_result)`` for one query, plus one id
        list per ``extra_logits`` head (second box, search) when given."""
        decision_probs, box_probs = decision_logits.softmax(-1), box_logits.softmax(-1)
        extra_probs = [logits.softmax(-1) for logits in extra_logits]
        decisions = self._draw(decision_probs, self.group_size).tolist()
        box_ids = self._draw(box_probs, self.group_size).tolist()
        extra_ids = [self._draw(probs, self.group_size).tolist() for probs in extra_probs]
        decision_mask = [1.0] * self.group_size
        if not self.balance or self.group_size < 2:
            return (decisions, box_ids, decision_mask, BalanceResult("balanced", tuple(decisions)), *extra_ids)
        extra: list[tuple[int, ...]] = []

        def draw_extra() -> int:
            extra.append((int(self._draw(decision_probs, 1)), int(self._draw(box_probs, 1)),
                          *(int(self._draw(probs, 1)) for probs in extra_probs)))
            return extra[-1][0]

        result = balance_group(decisions, draw_extra, self.budget)
        if result.path == "resampled":
            drawn = extra[result.swap_in_draw]
            decisions[result.swap_out], box_ids[result.swap_out] = drawn[:2]
            for ids, value in zip(extra_ids, drawn[2:]):
                ids[result.swap_out] = value
        elif result.path == "forced":
            # The decision was not sampled: keep it out of the loss. A forced REGION's box
            # is still an on-policy sample, so its token stays in.
            decisions[result.swap_out] = result.missing
            decision_mask[result.swap_out] = 0.0
        return (decisions, box_ids, decision_mask, result, *extra_ids)


def action_tokens(
    decisions, decision_mask, rewards, *, second_box: bool = False, search: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(token_level_rewards, response_mask)``, each ``(N, T)``: tokens are (decision, box),
    then the second box and the search token when the policy has them.

    The box tokens count only for a REGION action, the search token always (FULL may
    search too); the reward goes on the last token that counts (token 0 if none does, so
    group statistics still see it).
    """
    decisions = torch.as_tensor(decisions)
    region = (decisions == REGION).float()
    columns = [torch.as_tensor(decision_mask, dtype=torch.float32), region]
    if second_box:
        columns.append(region)
    if search:
        columns.append(torch.ones_like(region))
    mask = torch.stack(columns, dim=-1)
    positions = torch.arange(mask.shape[1]).expand_as(mask)
    last = torch.where(mask > 0, positions, 0).max(dim=-1).values
    token_rewards = torch.zeros_like(mask)
    token_rewards[torch.arange(len(decisions)), last] = torch.as_tensor(rewards, dtype=torch.float32)
    return token_rewards, mask


def compute_advantages(estimator: str, token_rewards, mask, uids, decisions, group_size: int, norm_by_std: bool):
    """Advantages from verl's ``compute_advantage`` dispatch, as its trainer calls it."""
    from verl import DataProto
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.ray_trainer import compute_advantage

    from agents.verl.plugin import decisions_in_scope

    uid_array = np.array(uids, dtype=object)
    data = DataProto.from_dict(
        tensors={"token_level_rewards": token_rewards, "response_mask": mask},
        non_tensors={"uid": uid_array, "decision": np.array(decisions, dtype=object)},
    )
    config = AlgoConfig(adv_estimator=estimator, gamma=1.0, lam=1.0, norm_adv_by_std_in_grpo=norm_by_std)
    with decisions_in_scope(uid_array, decisions):
        data = compute_advantage(
            data, adv_estimator=estimator, num_repeat=group_size, norm_adv_by_std_in_grpo=norm_by_std, config=config
        )
    return data.batch["advantages"]


def check_estimator(name: str) -> None:
    """Fail before training on a name verl does not know or this backend cannot run."""
    from agents.verl.plugin import check_estimator as check

    check(name, "local", NOT_SUPPORTED)


def bucket_rc_rates(decisions, buckets) -> dict[str, float]:
    """``rc_rate[B]``: the share of sampled actions that crop, among the queries whose FULL
    image ranks the positive in baseline-rank bucket B (buckets absent from the batch are
    left out). A collapse to "never" or "always" shows as every bucket at 0 or 1."""
    decisions, buckets = np.asarray(decisions), np.asarray(buckets)
    return {f"rc_rate[{b}]": float(np.mean(decisions[buckets == b] == REGION))
            for b in (*(name for name, _, _ in RANK_BUCKETS), "absent") if (buckets == b).any()}


def annotation_target(net: CropPolicyNet, box, view_box) -> int:
    """The box token nearest the annotated ``box`` (original pixels) within ``view_box``,
    or -1 when the query has no annotation."""
    if box is None:
        return -1
    return nearest_box(net.boxes, image_box_to_view(box, view_box))


def grounding_loss(box_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the box token toward ``targets`` over the queries that have one
    (target -1: no annotation); 0 when none has."""
    return F.cross_entropy(box_logits, targets, ignore_index=-1) if bool((targets >= 0).any()) else box_logits.sum() * 0


WARM_START_STREAM = 1
"""The warm start draws its batches from ``default_rng([seed, WARM_START_STREAM])``, its own
stream: RL's query order is the same whether or not (and wherever) the warm start ran."""


def initial_policy(config: LocalTrainConfig) -> CropPolicyNet:
    """The seed's initial network; its optional tokens follow the env's options (a second
    box for 2+ regions, the search token)."""
    torch.manual_seed(config.seed)
    return CropPolicyNet(replace(config.policy, search=config.env.search, max_regions=min(config.env.max_regions, 2)))


MIRRORS: tuple[tuple[bool, bool], ...] = ((False, False), (True, False), (False, True), (True, True))
"""(horizontal, vertical) flips of a warm-start example: itself and its three mirror images."""


def mirror_image(image: torch.Tensor, horizontal: bool, vertical: bool) -> torch.Tensor:
    """An ``(H, W, 3)`` observation mirrored left-right and/or top-bottom."""
    dims = [d for d, flip in ((1, horizontal), (0, vertical)) if flip]
    return image.flip(dims) if dims else image


def warm_start(net: CropPolicyNet, env: RegionRerankEnv, config: LocalTrainConfig) -> None:
    """``config.warm_start_steps`` Adam steps of :func:`grounding_loss` on the annotated
    training queries (in place), each example in a random one of its :data:`MIRRORS` when
    ``config.warm_start_mirror`` is on."""
    rng = np.random.default_rng([config.seed, WARM_START_STREAM])
    images, questions, view_boxes = [], [], []
    for index in tqdm(range(len(env.pools)), desc="warm start: observations", disable=None if config.progress else True, leave=False):
        if env.pools[index].box is not None:
            obs, view_box = env.first_observation(index)
            images.append(obs["image"])
            questions.append(obs["question"])
            view_boxes.append(image_box_to_view(env.pools[index].box, view_box))
    if not images:
        raise ValueError("warm_start_steps > 0 needs training queries with an annotated box; none has one")
    pixels = torch.from_numpy(np.stack(images))
    mirrors = MIRRORS if config.warm_start_mirror else MIRRORS[:1]
    # targets[m, i]: the box token of example i in mirror m (the annotation mirrored with it)
    targets = torch.tensor([[nearest_box(net.boxes, mirror_norm_box(box, *m)) for box in view_boxes] for m in mirrors])
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    for _ in tqdm(range(config.warm_start_steps), desc="warm start", disable=None if config.progress else True, leave=False):
        batch = rng.choice(len(images), size=min(config.warm_start_batch, len(images)), replace=False)
        # No draw without mirrors: the unmirrored warm start keeps the batches it always had.
        which = rng.integers(len(mirrors), size=len(batch)) if len(mirrors) > 1 else np.zeros(len(batch), int)
        batch_images = torch.stack([mirror_image(pixels[i], *mirrors[m]) for i, m in zip(batch, which)])
        batch_questions = [mirror_question(questions[i], *mirrors[m]) for i, m in zip(batch, which)]
        out = net(batch_images, batch_questions)
        loss = grounding_loss(out.box_logits, targets[which, batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def load_weights(net: CropPolicyNet, checkpoint: Path) -> None:
    """``net`` takes the weights of ``checkpoint``, whose architecture must be ``net``'s."""
    loaded = load_policy(checkpoint).net
    if loaded.config != net.config:
        raise ValueError(f"init_policy {checkpoint} has architecture {loaded.config}, the run needs {net.config}")
    net.load_state_dict(loaded.state_dict())


def warm_started_policy(config: LocalTrainConfig, scorer: Scorer, path: Path) -> Path:
    """Save to ``path`` the network :func:`train` would start RL from: the seed's initial
    weights after ``config.warm_start_steps`` steps of warm start. Passing it as
    ``init_policy`` (with any estimator, reward or budget) trains exactly as the inline warm
    start would."""
    train_env, _ = make_envs(config, scorer)
    net = initial_policy(config)
    warm_start(net, train_env, config)
    save_policy(net, path, warm_start_of=config.to_dict())
    return path


def evaluate_greedy(net: CropPolicyNet, env: RegionRerankEnv, n_queries: int) -> dict[str, float]:
    indices = range(min(n_queries, len(env.pools)))
    summary, _ = evaluate_policy(env, LocalPolicy(net, greedy=True), indices, name="val", progress=False)
    net.train()
    return summary


@dataclass
class QueryRollouts:
    """One query's group of sampled actions in an iteration, and what the env paid them."""

    query: int
    decisions: list[int]
    box_ids: list[int]
    decision_mask: list[bool]
    rewards: list[float]
    balance: BalanceResult
    extra_ids: list[list[int]]
    """ids of the second-box and/or search tokens (empty without those heads)"""
    image: np.ndarray
    question: str
    bucket: str
    target: int | None
    """the box token nearest the annotation (grounding loss), when that loss is on"""


def sample_query(net: CropPolicyNet, env: RegionRerankEnv, query: int, sampler: "GroupSampler",
                 config: LocalTrainConfig) -> QueryRollouts:
    """Reset ``env`` to ``query``, sample a (balanced) group of actions from ``net`` and
    score them in one ``score_actions`` call."""
    obs, info = env.reset(options={"query_index": query})
    target = annotation_target(net, env.pool.box, env.view_box) if config.grounding_coef else None
    bucket = rank_bucket(info["baseline_rank"], len(env.pool.candidates))
    with torch.no_grad():
        out = net(torch.tensor(obs["image"])[None], [obs["question"]])  # a copy: the obs may be read-only
    heads = [h[0] for h in (out.box2_logits, out.search_logits) if h is not None]
    decisions, box_ids, decision_mask, balance, *extra_ids = sampler.sample(out.decision_logits[0], out.box_logits[0], *heads)
    if extra_ids:
        box2_ids = extra_ids[0] if net.config.max_regions == 2 else [None] * len(decisions)
        search_ids = extra_ids[-1] if net.config.search else [None] * len(decisions)
        actions = [native_action(net, d, b, b2, sf) for d, b, b2, sf in zip(decisions, box_ids, box2_ids, search_ids)]
    else:
        actions = [{"decision": d, "box": b} for d, b in zip(decisions, net.boxes[box_ids].numpy())]
    rewards = [o.reward for o in env.score_actions(actions)]
    return QueryRollouts(int(query), decisions, box_ids, decision_mask, rewards, balance, extra_ids,
                         obs["image"], obs["question"], bucket, target)


def policy_update(net: CropPolicyNet, optimizer: torch.optim.Optimizer, groups: list[QueryRollouts],
                  iteration: int, config: LocalTrainConfig) -> dict[str, float]:
    """One policy-gradient step on an iteration's groups, with verl's estimator and loss
    aggregation; returns the step's metrics."""
    from verl.trainer.ppo.core_algos import agg_loss

    second_box, search = net.config.max_regions == 2, net.config.search
    group_of = [i for i, group in enumerate(groups) for _ in group.decisions]
    decisions = [d for group in groups for d in group.decisions]
    box_ids = torch.tensor([b for group in groups for b in group.box_ids])
    decision_mask = [m for group in groups for m in group.decision_mask]
    rewards = [r for group in groups for r in group.rewards]
    uids = [f"{iteration}-{groups[g].query}" for g in group_of]
    extra_ids = [torch.tensor([i for group in groups for i in group.extra_ids[n]]) for n in range(len(groups[0].extra_ids))]
    token_rewards, mask = action_tokens(decisions, decision_mask, rewards, second_box=second_box, search=search)
    advantages = compute_advantages(config.estimator, token_rewards, mask, uids, decisions, config.group_size,
                                    config.norm_adv_by_std)

    out = net(torch.from_numpy(np.stack([group.image for group in groups])), [group.question for group in groups])
    per_action = out.select(torch.tensor(group_of))
    log_probs = token_log_probs(per_action, torch.tensor(decisions), box_ids, *extra_ids)
    entropy = token_entropy(per_action)
    pg_loss = agg_loss(-advantages * log_probs, mask, loss_agg_mode="token-mean")
    entropy_bonus = agg_loss(entropy, torch.ones_like(mask), loss_agg_mode="token-mean")
    loss = pg_loss - config.entropy_coef * entropy_bonus
    if config.grounding_coef:
        loss = loss + config.grounding_coef * grounding_loss(out.box_logits, torch.tensor([g.target for g in groups]))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return {
        "reward": float(np.mean(rewards)),
        "rc_rate": float(np.mean(np.asarray(decisions) == REGION)),
        **bucket_rc_rates(decisions, [groups[g].bucket for g in group_of]),
        **({"search_rate": float(extra_ids[-1].float().mean())} if search else {}),
        "loss": float(loss.detach()),
        "entropy_decision": float(entropy[:, 0].mean().detach()),
        "entropy_box": float(entropy[:, 1].mean().detach()),
        **{f"balance_{k}": v for k, v in balance_path_rates(group.balance for group in groups).items()},
    }


def train(config: LocalTrainConfig, scorer: Scorer | None = None) -> TrainResult:
    """Run the CPU r-GRPO loop; writes the checkpoint, metrics and curves to ``config.out``.

    ``scorer``: the re-ranker to train against; ``None`` builds ``make_scorer(config.scorer)``.
    Pass one to share a loaded model between training and evaluation.
    """
    from torch.utils.tensorboard import SummaryWriter

    check_estimator(config.estimator)
    state = load_state(config)
    run = start_run(config, scorer if scorer is not None else make_scorer(config.scorer), state)
    sampler = GroupSampler(config.group_size, config.balance_budget, config.balance_groups, run.generator)
    # purge_step drops the events a killed run logged after its last saved state
    writer = SummaryWriter(str(config.out / "tb"), purge_step=run.done + 1 if run.done else None)
    bar = tqdm(range(run.done + 1, config.iterations + 1), initial=run.done, total=config.iterations,
               desc=f"train {config.estimator} seed {config.seed}", disable=None if config.progress else True)
    try:
        for iteration in bar:
            metrics = train_iteration(config, run, sampler, iteration)
            run.history.append(metrics)
            log_iteration(writer, bar, metrics)
            if checkpoint_due(config, iteration):
                run.saved_at = iteration
                save_state(config, run, iteration, False)
                write_metrics(run.history, config.out)
            if config.time_budget_s is not None and metrics["seconds"] > config.time_budget_s:
                break
    except KeyboardInterrupt:
        # A stop, not a loss: the iterations done so far go to metrics.csv; the state to
        # resume from is the last checkpoint (an iteration cut in the middle is redone).
        writer.close()
        write_metrics(run.history, config.out)
        print(interrupted_message(config, run), flush=True)
        raise
    writer.close()
    return finish_run(config, run)


def start_run(config: LocalTrainConfig, scorer: Scorer, state: dict[str, Any] | None) -> RunState:
    """The run's envs, network, optimizer and RNGs: warm-started (or loaded from
    ``config.init_policy``) for a new run, put back from ``state`` for a resumed one."""
    train_env, val_env = make_envs(config, scorer)
    # Seeded after the scorer is built (building one may draw from torch's global RNG), so
    # the policy's initial weights depend on the seed alone.
    net = initial_policy(config)
    rng = np.random.default_rng(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.perf_counter()  # the warm start counts towards the run's time
    if state is None and config.init_policy is not None:
        load_weights(net, config.init_policy)
    elif state is None and config.warm_start_steps:
        warm_start(net, train_env, config)  # (a resumed network already holds it)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.lr)
    config.out.mkdir(parents=True, exist_ok=True)
    run = RunState(net, optimizer, rng, generator, (train_env, val_env), start)
    if state is not None:
        restore_state(state, run)
        print(f"resuming {config.out} after iteration {run.done} (from {config.out / STATE_FILE})", flush=True)
    return run


def train_iteration(
    config: LocalTrainConfig, run: RunState, sampler: GroupSampler, iteration: int
) -> dict[str, float]:
    """One iteration: sample a batch of queries' groups, take a policy step, validate when
    due; returns the iteration's metrics."""
    train_env, val_env = run.envs
    n_batch = min(config.queries_per_batch, len(train_env.pools))
    queries = run.rng.choice(len(train_env.pools), size=n_batch, replace=False)
    groups = [sample_query(run.net, train_env, int(q), sampler, config) for q in queries]
    update = policy_update(run.net, run.optimizer, groups, iteration, config)
    metrics = {"iteration": iteration, "seconds": time.perf_counter() - run.start, **update}
    if config.eval_every and (iteration % config.eval_every == 0 or iteration == config.iterations):
        val = evaluate_greedy(run.net, val_env, config.eval_queries)
        metrics.update({"val_MRR": val["MRR"], "val_R@1": val["R@1"], "val_RC": val["RC"], "val_reward": val["reward"]})
    return metrics


def checkpoint_due(config: LocalTrainConfig, iteration: int) -> bool:
    """A state is saved every ``checkpoint_every`` iterations; the last one is saved
    finished by :func:`finish_run` instead."""
    return bool(config.checkpoint_every) and iteration % config.checkpoint_every == 0 and iteration < config.iterations


def interrupted_message(config: LocalTrainConfig, run: RunState) -> str:
    """What an interrupted run says: where its metrics went and where it resumes from."""
    return (f"\ninterrupted after iteration {len(run.history)}: metrics so far in {config.out / 'metrics.csv'}; "
            + (f"the last checkpoint ({config.out / STATE_FILE}) resumes after iteration {run.saved_at}"
               if run.saved_at is not None else "no checkpoint yet (--checkpoint-every)"))


def log_iteration(writer, bar, metrics: dict[str, float]) -> None:
    """An iteration's metrics to TensorBoard and the progress bar."""
    for key, value in metrics.items():
        if key != "iteration":
            writer.add_scalar(key, value, metrics["iteration"])
    bar.set_postfix(reward=f"{metrics['reward']:.3f}", rc=f"{metrics['rc_rate']:.2f}",
                    **({"val_mrr": f"{metrics['val_MRR']:.3f}"} if "val_MRR" in metrics else {}))


def finish_run(config: LocalTrainConfig, run: RunState) -> TrainResult:
    """Save the policy, the final (finished) state, the metrics and the dashboard."""
    policy_file = config.out / "policy.pt"
    save_policy(run.net, policy_file, train_config=config.to_dict())
    save_state(config, run, run.history[-1]["iteration"] if run.history else run.done, True)
    write_metrics(run.history, config.out)
    write_history(run.history, config.out)
    plot_decision_dashboard([{"variant": config.estimator, "seed": config.seed, "history": run.history}],
                            config.out / "dashboard.png")
    return TrainResult(policy_file, run.history, time.perf_counter() - run.start)


def write_metrics(history: list[dict[str, float]], out: Path) -> None:
    """``metrics.csv``: one row per iteration (written atomically)."""
    keys = sorted({k for row in history for k in row}, key=lambda k: (k != "iteration", k))
    with atomic_open(out / "metrics.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(history)


def write_history(history: list[dict[str, float]], out: Path) -> None:
    """``metrics.csv`` and ``curves.png`` (training reward, RC rate, validation MRR)."""
    write_metrics(history, out)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    it = np.array([h["iteration"] for h in history])
    fig, axes = plt.subplots(1, 3, figsize=(11, 3))
    for ax, key, title in zip(axes, ("reward", "rc_rate"), ("mean training reward", "training RC rate")):
        values = np.array([h[key] for h in history])
        window = max(1, len(values) // 20)
        ax.plot(it, values, alpha=0.3)
        ax.plot(it[window - 1 :], np.convolve(values, np.ones(window) / window, mode="valid"))
        ax.set(title=title, xlabel="iteration")
    val = [(h["iteration"], h["val_MRR"]) for h in history if "val_MRR" in h]
    if val:
        axes[2].plot(*zip(*val), marker="o")
    axes[2].set(title="validation MRR (greedy)", xlabel="iteration")
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=110)
    plt.close(fig)
