"""r-GRPO: the estimator's math, the balanced-group helpers, and the verl plug-in path.

Registry checks run in a fresh interpreter: verl's own tests (and anything else in a
shared process) may replace ``core_algos.ADV_ESTIMATOR_REGISTRY``.
"""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from agents.rgrpo import (
    BalanceResult,
    balance_group,
    balance_path_rates,
    compute_rgrpo_outcome_advantage,
    decision_balanced_baseline,
    needs_balancing,
)
from agents.verl.plugin import (
    DECISION_KEY,
    ESTIMATOR_NAME,
    compute_rgrpo_advantage,
    decisions_in_scope,
    register_rgrpo_estimator,
)
from verl import DataProto
from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopWorker, _InternalAgentLoopOutput
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage, get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage

EPS = 1e-6


def outcome_rewards(scores: list[float], length: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rewards with each score on the last token, and an all-ones response mask."""
    rewards = torch.zeros(len(scores), length)
    rewards[:, -1] = torch.tensor(scores)
    return rewards, torch.ones(len(scores), length)


def random_batch(seed: int, bs: int = 17, length: int = 6) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Random token rewards, a ragged response mask and uids with singleton groups among them."""
    gen = torch.Generator().manual_seed(seed)
    rewards = torch.randn(bs, length, generator=gen)
    mask = (torch.rand(bs, length, generator=gen) > 0.3).float()
    uids = np.array([f"q{int(i)}" for i in torch.randint(0, 7, (bs,), generator=gen)], dtype=object)
    uids[-1] = "lonely"  # at least one singleton group
    return rewards, mask, uids


# ---------------------------------------------------------------- estimator math


@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("seed", range(5))
def test_without_decisions_equals_verl_grpo(seed, norm):
    rewards, mask, uids = random_batch(seed)
    expected, _ = compute_grpo_outcome_advantage(rewards.clone(), mask, uids, norm_adv_by_std_in_grpo=norm)
    advantages, returns = compute_rgrpo_outcome_advantage(rewards, mask, uids, norm_adv_by_std_in_grpo=norm)
    torch.testing.assert_close(advantages, expected, rtol=0, atol=1e-7)
    assert returns is advantages


@pytest.mark.parametrize("norm", [True, False])
def test_groups_with_one_decision_or_equal_counts_equal_grpo(norm):
    # g1 holds one decision; g2 holds both, twice each: both baselines are the group mean.
    rewards, mask = outcome_rewards([1.0, 0.0, 2.0, 3.0, 0.5, -1.0, 4.0])
    uids = np.array(["g1"] * 3 + ["g2"] * 4, dtype=object)
    decisions = [1, 1, 1, 0, 1, 0, 1]
    expected, _ = compute_grpo_outcome_advantage(rewards.clone(), mask, uids, norm_adv_by_std_in_grpo=norm)
    got, _ = compute_rgrpo_outcome_advantage(rewards, mask, uids, decisions, norm_adv_by_std_in_grpo=norm)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_unbalanced_group_hand_computed():
    # scores [1,1,1,0], decisions [1,1,1,0]: baseline (mean REGION 1 + mean FULL 0) / 2 = 0.5,
    # unbiased std 0.5. GRPO's baseline would be the group mean 0.75.
    rewards, mask = outcome_rewards([1.0, 1.0, 1.0, 0.0])
    uids = np.array(["q"] * 4, dtype=object)
    decisions = [1, 1, 1, 0]

    advantages, _ = compute_rgrpo_outcome_advantage(rewards, mask, uids, decisions)
    expected = torch.tensor([0.5, 0.5, 0.5, -0.5]) / (0.5 + EPS)
    torch.testing.assert_close(advantages[:, -1], expected)
    torch.testing.assert_close(advantages, expected.unsqueeze(-1).expand(4, 3))

    plain, _ = compute_rgrpo_outcome_advantage(rewards, mask, uids, decisions, norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(plain[:, 0], torch.tensor([0.5, 0.5, 0.5, -0.5]))

    grpo, _ = compute_grpo_outcome_advantage(rewards.clone(), mask, uids)
    torch.testing.assert_close(grpo[:, 0], torch.tensor([0.25, 0.25, 0.25, -0.75]) / (0.5 + EPS))


def test_several_groups_hand_computed():
    # g1: scores [4,2,0,1], decisions [1,1,1,0]: REGION mean 2, FULL mean 1, baseline 1.5,
    #     std = sqrt(8.75 / 3). g2: a singleton keeps verl's convention (mean 0, std 1).
    rewards, mask = outcome_rewards([4.0, 3.0, 2.0, 0.0, 1.0])
    uids = np.array(["g1", "g2", "g1", "g1", "g1"], dtype=object)
    decisions = [1, 0, 1, 1, 0]

    baseline = decision_balanced_baseline(rewards.sum(-1), uids, decisions)
    torch.testing.assert_close(baseline, torch.tensor([1.5, 0.0, 1.5, 1.5, 1.5]))

    plain, _ = compute_rgrpo_outcome_advantage(rewards, mask, uids, decisions, norm_adv_by_std_in_grpo=False)
    torch.testing.assert_close(plain[:, 0], torch.tensor([2.5, 3.0, 0.5, -1.5, -0.5]))

    normed, _ = compute_rgrpo_outcome_advantage(rewards, mask, uids, decisions)
    std = math.sqrt(8.75 / 3)
    expected = torch.tensor([2.5, 3.0, 0.5, -1.5, -0.5]) / torch.tensor([std, 1.0, std, std, std]).add(EPS)
    torch.testing.assert_close(normed[:, 0], expected)


@pytest.mark.parametrize("decisions", [None, [1, 1, 0, -1, 1]])
def test_excluded_samples_move_no_baseline_and_get_no_advantage(decisions):
    # Row 3 failed scoring (reward 0, nothing trained): the others score as if it were absent.
    rewards, mask = outcome_rewards([1.0, 0.5, 2.0, 0.0, 3.0])
    uids = np.array(["q"] * 5, dtype=object)
    excluded = [False, False, False, True, False]
    got, _ = compute_rgrpo_outcome_advantage(rewards, mask, uids, decisions, excluded=excluded)
    kept = [0, 1, 2, 4]
    without, _ = compute_rgrpo_outcome_advantage(
        rewards[kept], mask[kept], uids[kept], None if decisions is None else [decisions[i] for i in kept]
    )
    torch.testing.assert_close(got[kept], without)
    assert torch.all(got[3] == 0)
    with pytest.raises(ValueError, match="excluded has 2 entries for 5 samples"):
        compute_rgrpo_outcome_advantage(rewards, mask, uids, decisions, excluded=[True, False])


def test_malformed_label_is_a_class_of_its_own():
    # decisions REGION, REGION, FULL, malformed (-1): baseline (1 + 0 + -1) / 3 = 0,
    # where GRPO's group mean would be 0.25.
    rewards, mask = outcome_rewards([1.0, 1.0, 0.0, -1.0])
    plain, _ = compute_rgrpo_outcome_advantage(
        rewards, mask, ["q"] * 4, [1, 1, 0, -1], norm_adv_by_std_in_grpo=False
    )
    torch.testing.assert_close(plain[:, 0], torch.tensor([1.0, 1.0, 0.0, -1.0]))


def test_advantage_is_masked_per_token():
    rewards, _ = outcome_rewards([1.0, 0.0])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    advantages, _ = compute_rgrpo_outcome_advantage(rewards, mask, np.array(["q", "q"], dtype=object), [1, 0])
    assert advantages[0, 2] == 0 and advantages[1, 1] == 0 and advantages[1, 2] == 0
    assert advantages[0, 0] > 0 > advantages[1, 0]


@pytest.mark.parametrize(
    ("decisions", "message"),
    [([1, None, 0], r"decisions\[1\] = None"), ([1, 0.5, 0], r"decisions\[1\] = 0.5"), ([1, 0], "2 entries for 3")],
)
def test_bad_decisions_raise(decisions, message):
    rewards, mask = outcome_rewards([1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match=message):
        compute_rgrpo_outcome_advantage(rewards, mask, np.array(["q"] * 3, dtype=object), decisions)


def test_bad_shapes_raise():
    rewards, mask = outcome_rewards([1.0, 0.0])
    with pytest.raises(ValueError, match="response_mask shape"):
        compute_rgrpo_outcome_advantage(rewards, mask[:, :2], ["q", "q"])
    with pytest.raises(ValueError, match="index has 1 entries"):
        compute_rgrpo_outcome_advantage(rewards, mask, ["q"])


# ---------------------------------------------------------------- balanced groups


def draws_from(decisions: list[int]):
    """``draw_extra`` that returns these decisions in order and records how often it was called."""
    remaining = iter(decisions)
    calls = SimpleNamespace(count=0)

    def draw() -> int:
        calls.count += 1
        return next(remaining)

    return draw, calls


def test_needs_balancing():
    assert needs_balancing([0, 1, 1]) is None
    assert needs_balancing([1, 1, 1]) == 0
    assert needs_balancing([0, 0]) == 1
    assert needs_balancing([1]) is None
    assert needs_balancing([]) is None
    with pytest.raises(ValueError, match=r"decisions\[2\] = 2"):
        needs_balancing([0, 1, 2])


def test_balanced_group_draws_nothing():
    draw, calls = draws_from([])
    result = balance_group([1, 0, 1, 1], draw, budget=4)
    assert result == BalanceResult("balanced", (1, 0, 1, 1))
    assert calls.count == 0


def test_singleton_group_is_left_alone():
    draw, calls = draws_from([])
    assert balance_group([1], draw, budget=4).path == "balanced"
    assert calls.count == 0


def test_missing_decision_is_resampled_and_swapped_in():
    draw, calls = draws_from([1, 1, 0, 1])
    result = balance_group([1, 1, 1, 1], draw, budget=5)
    assert result == BalanceResult("resampled", (1, 1, 1, 0), missing=0, swap_out=3, swap_in_draw=2, draws=3)
    assert calls.count == 3  # stops at the first draw with the missing decision


def test_budget_spent_forces_the_decision():
    draw, calls = draws_from([0, 0, 0])
    result = balance_group([0, 0, 0], draw, budget=3)
    assert result == BalanceResult("forced", (0, 0, 1), missing=1, swap_out=2, swap_in_draw=None, draws=3)
    assert calls.count == 3
    assert balance_group([0, 0], draws_from([])[0], budget=0).path == "forced"


def test_balance_group_rejects_bad_input():
    with pytest.raises(ValueError, match="budget = -1"):
        balance_group([0, 0], draws_from([])[0], budget=-1)
    with pytest.raises(ValueError, match=r"draw_extra\(\)\[0\] = 7"):
        balance_group([0, 0], draws_from([7])[0], budget=1)


def test_balance_path_rates():
    results = [
        balance_group([0, 1], draws_from([])[0], 2),
        balance_group([0, 1], draws_from([])[0], 2),
        balance_group([0, 0], draws_from([1])[0], 2),
        balance_group([1, 1], draws_from([1, 1])[0], 2),
    ]
    assert balance_path_rates(results) == {"balanced": 0.5, "resampled": 0.25, "forced": 0.25}
    with pytest.raises(ValueError, match="at least one"):
        balance_path_rates([])


# ---------------------------------------------------------------- verl plug-in


def test_plain_import_verl_registers_rgrpo_in_a_fresh_process():
    script = textwrap.dedent(
        """
        import importlib
        import verl
        from verl.trainer.ppo import core_algos
        fn = core_algos.get_adv_estimator_fn("rgrpo")
        assert fn.__module__ == "agents.verl.plugin" and fn.__name__ == "compute_rgrpo_advantage", fn
        import agents.verl.plugin as plugin
        assert fn is plugin.compute_rgrpo_advantage
        importlib.reload(plugin)  # a second import must not trip verl's duplicate-name check
        plugin.register_rgrpo_estimator()
        assert core_algos.get_adv_estimator_fn("rgrpo").__qualname__ == "compute_rgrpo_advantage"
        print("REGISTERED")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REGISTERED" in done.stdout


@pytest.fixture()
def rgrpo_registered() -> None:
    """Re-register in this process: other code may have replaced verl's registry."""
    register_rgrpo_estimator()
    assert get_adv_estimator_fn(ESTIMATOR_NAME).__qualname__ == "compute_rgrpo_advantage"


@pytest.mark.parametrize("norm", [True, False])
def test_registered_estimator_without_decisions_equals_grpo(rgrpo_registered, norm):
    rewards, mask, uids = random_batch(11)
    expected, _ = compute_grpo_outcome_advantage(rewards.clone(), mask, uids, norm_adv_by_std_in_grpo=norm)
    with pytest.warns(RuntimeWarning, match="no per-sample decisions"):
        got, _ = get_adv_estimator_fn(ESTIMATOR_NAME)(
            token_level_rewards=rewards, response_mask=mask, config=AlgoConfig(norm_adv_by_std_in_grpo=norm), index=uids
        )
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-7)


def test_registered_estimator_reads_forwarded_non_tensor_batch():
    # The path verl uses for gdpo (and verl PR #7473 proposes for every estimator).
    rewards, mask = outcome_rewards([1.0, 1.0, 1.0, 0.0])
    uids = np.array(["q"] * 4, dtype=object)
    got, _ = compute_rgrpo_advantage(
        rewards, mask, index=uids, non_tensor_batch={"uid": uids, DECISION_KEY: np.array([1, 1, 1, 0], dtype=object)}
    )
    torch.testing.assert_close(got[:, 0], torch.tensor([0.5, 0.5, 0.5, -0.5]) / (0.5 + EPS))


def agent_loop_batch(scores: list[float], decisions: list, uids: list[str], prompt_len: int = 4, response_len: int = 5):
    """The DataProto verl's ``AgentLoopWorker._postprocess`` builds from padded agent-loop outputs
    whose ``extra_fields`` carry the decision, as the trainer sees it before ``compute_advantage``."""
    outputs = []
    for row, (score, decision) in enumerate(zip(scores, decisions)):
        length = 2 + row % 3
        response_mask = torch.zeros(1, response_len, dtype=torch.int64)
        response_mask[0, :length] = 1
        attention_mask = torch.cat([torch.ones(1, prompt_len, dtype=torch.int64), response_mask], dim=1)
        outputs.append(
            _InternalAgentLoopOutput(
                prompt_ids=torch.arange(prompt_len).unsqueeze(0),
                response_ids=torch.arange(response_len).unsqueeze(0) * response_mask,
                input_ids=torch.arange(prompt_len + response_len).unsqueeze(0),
                position_ids=torch.arange(prompt_len + response_len).unsqueeze(0),
                response_mask=response_mask,
                attention_mask=attention_mask,
                reward_score=score,
                num_turns=2,
                metrics=AgentLoopMetrics(),
                extra_fields={DECISION_KEY: decision},
            )
        )
    worker = object.__new__(AgentLoopWorker)  # _postprocess needs no live worker state but this
    worker.reward_loop_worker_handles = None
    data: DataProto = worker._postprocess(outputs, input_non_tensor_batch={"uid": np.array(uids, dtype=object)})
    data.batch["token_level_rewards"] = data.batch["rm_scores"]  # the trainer's step without in-reward KL
    return data


@pytest.mark.verl_contract  # builds batches with verl's private AgentLoopWorker._postprocess
def test_compute_advantage_dispatch_uses_decision_balanced_baseline(rgrpo_registered):
    uids = ["a", "a", "a", "a", "b", "b", "b", "c"]
    scores = [1.0, 1.0, 1.0, 0.0, 2.0, 0.0, 1.0, 3.0]
    decisions = [1, 1, 1, 0, 0, 0, 0, 1]
    data = agent_loop_batch(scores, decisions, uids)
    assert list(data.non_tensor_batch[DECISION_KEY]) == decisions
    mask = data.batch["response_mask"].float()
    config = AlgoConfig(adv_estimator=ESTIMATOR_NAME)

    with decisions_in_scope(data.non_tensor_batch["uid"], data.non_tensor_batch[DECISION_KEY]):
        out = compute_advantage(data, adv_estimator=ESTIMATOR_NAME, config=config)

    # a: rgrpo baseline 0.5, std 0.5 (grpo would use 0.75). b: one decision, so grpo's
    # mean 1 and std 1. c: singleton, mean 0 std 1.
    per_sample = torch.tensor([0.5, 0.5, 0.5, -0.5, 1.0, -1.0, 0.0, 3.0]) / torch.tensor(
        [0.5, 0.5, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0]
    ).add(EPS)
    torch.testing.assert_close(out.batch["advantages"], per_sample.unsqueeze(-1) * mask)
    torch.testing.assert_close(out.batch["returns"], out.batch["advantages"])

    grpo = compute_advantage(agent_loop_batch(scores, decisions, uids), adv_estimator="grpo", config=config)
    difference = out.batch["advantages"] - grpo.batch["advantages"]
    torch.testing.assert_close(difference[:4, 0], torch.full((4,), 0.25 / (0.5 + EPS)))  # baseline 0.75 -> 0.5
    torch.testing.assert_close(difference[4:], torch.zeros(4, difference.shape[1]))


@pytest.mark.verl_contract  # builds batches with verl's private AgentLoopWorker._postprocess
def test_episodes_flagged_failed_in_scope_stay_out_of_their_group(rgrpo_registered):
    uids, scores, decisions = ["a", "a", "a", "a"], [1.0, 1.0, 0.0, 0.0], [1, 1, 0, -1]
    data = agent_loop_batch(scores, decisions, uids)
    with decisions_in_scope(data.non_tensor_batch["uid"], decisions, excluded=[False, False, False, True]):
        out = compute_advantage(data, adv_estimator=ESTIMATOR_NAME, config=AlgoConfig(adv_estimator=ESTIMATOR_NAME))
    kept = agent_loop_batch(scores[:3], decisions[:3], uids[:3])
    with decisions_in_scope(kept.non_tensor_batch["uid"], decisions[:3]):
        expected = compute_advantage(kept, adv_estimator=ESTIMATOR_NAME, config=AlgoConfig(adv_estimator=ESTIMATOR_NAME))
    torch.testing.assert_close(out.batch["advantages"][:3], expected.batch["advantages"])
    assert torch.all(out.batch["advantages"][3] == 0)


def test_a_step_with_too_many_failed_episodes_stops_the_run_naming_the_queries(tmp_path):
    from agents.verl.plugin import ScoringFailures, check_failures
    from agents.verl.settings import LoopSettings, ScoringServiceSettings, agent_loop_config, loop_settings_from_file

    ok = {"scoring_failed": 0}
    failed = [{"scoring_failed": 1, "scoring_error": f"scoring service: query 'q{i}': prepare timed out"} for i in range(5)]
    check_failures([ok] * 9 + failed[:1], 0.1)  # 1 of 10 is not more than 10%
    with pytest.raises(ScoringFailures, match=r"2 of 10 episodes .*scoring.max_failed_fraction = 0.1\): .*'q0'.*'q1'"):
        check_failures([ok] * 8 + failed[:2], 0.1)
    with pytest.raises(ScoringFailures, match=r"5 of 5 .*\(2 more\)"):
        check_failures(failed, 0.5)

    import yaml

    path = tmp_path / "agent_loop.yaml"
    path.write_text(yaml.safe_dump(agent_loop_config(LoopSettings(scoring=ScoringServiceSettings(max_failed_fraction=0.25)))))
    assert loop_settings_from_file(str(path)).scoring.max_failed_fraction == 0.25
    assert loop_settings_from_file(None) == LoopSettings()
    with pytest.raises(ValueError, match="max_failed_fraction must be in"):
        ScoringServiceSettings(max_failed_fraction=1.5)


@pytest.mark.verl_contract  # builds batches with verl's private AgentLoopWorker._postprocess
def test_scoped_decisions_of_another_batch_are_rejected(rgrpo_registered):
    data = agent_loop_batch([1.0, 0.0], [1, 0], ["a", "a"])
    with decisions_in_scope(np.array(["b", "b"], dtype=object), [1, 0]):
        with pytest.raises(ValueError, match="belong to another batch"):
            compute_advantage(data, adv_estimator=ESTIMATOR_NAME, config=AlgoConfig())


@pytest.mark.verl_contract  # builds batches with verl's private AgentLoopWorker._postprocess
def test_missing_decision_names_the_agent_loop_field(rgrpo_registered):
    data = agent_loop_batch([1.0, 0.0], [1, None], ["a", "a"])
    with decisions_in_scope(data.non_tensor_batch["uid"], data.non_tensor_batch[DECISION_KEY]):
        with pytest.raises(ValueError, match=r"decision\[1\] = None.*extra_fields\['decision'\]"):
            compute_advantage(data, adv_estimator=ESTIMATOR_NAME, config=AlgoConfig())


@pytest.mark.verl_contract  # calls the v1 trainer's private _compute_advantage
@pytest.mark.slow
def test_v1_trainer_mode_hands_decisions_over_through_transfer_queue():
    """verl's v1 ``_compute_advantage`` on a real TransferQueue, samples stored as
    ``AgentLoopWorkerTQ`` stores them. Needs the ``transfer_queue`` package and Ray."""
    pytest.importorskip("transfer_queue")
    script = textwrap.dedent(
        """
        import ray, torch, transfer_queue as tq
        from omegaconf import OmegaConf
        from transfer_queue import KVBatchMeta
        from verl.experimental.agent_loop.agent_loop import AgentLoopMetrics, AgentLoopOutput
        from verl.trainer.ppo.v1 import get_trainer_cls
        from verl.utils.tensordict_utils import list_of_dict_to_tensordict

        ray.init(num_cpus=2, include_dashboard=False)
        tq.init(OmegaConf.create({"backend": {"SimpleStorage": {"num_data_storage_units": 1}}}))
        keys, fields = [], []
        for session, (score, decision) in enumerate(zip([1.0, 1.0, 1.0, 0.0], [1, 1, 1, 0])):
            output = AgentLoopOutput(prompt_ids=[1, 2, 3], response_ids=[4, 5, 6][: 2 + session % 2],
                                     response_mask=[1] * (2 + session % 2), reward_score=score,
                                     metrics=AgentLoopMetrics(), extra_fields={"decision": decision})
            field = output.as_dict()
            field.update({"uid": "q0", "session_id": session, "global_steps": 1})
            field["old_log_probs"] = torch.zeros_like(field["response_mask"], dtype=torch.float32)
            keys.append(f"q0_{session}_0")
            fields.append(field)
        tq.kv_batch_put(keys=keys, partition_id="train", fields=list_of_dict_to_tensordict(fields),
                        tags=[{"status": "success"}] * 4)
        trainer = object.__new__(get_trainer_cls("rgrpo_sync"))
        trainer.config = OmegaConf.create({
            "algorithm": {"adv_estimator": "rgrpo", "use_kl_in_reward": False, "gamma": 1.0, "lam": 1.0,
                          "norm_adv_by_std_in_grpo": True, "rollout_correction": None},
            "actor_rollout_ref": {"rollout": {"n": 4}}})
        trainer._compute_advantage(KVBatchMeta(partition_id="train", keys=keys, tags=[{}] * 4), {})
        advantages = tq.kv_batch_get(keys=keys, partition_id="train", select_fields=["advantages"])["advantages"]
        print("FIRST_TOKEN_ADVANTAGES", [round(a[0].item(), 5) for a in advantages.unbind(0)])
        tq.close()
        ray.shutdown()
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # baseline 0.5 (grpo: 0.75), std 0.5
    assert "FIRST_TOKEN_ADVANTAGES [1.0, 1.0, 1.0, -1.0]" in done.stdout
