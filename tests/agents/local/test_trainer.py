"""The CPU r-GRPO backend: balanced groups, verl's estimators by name, a real learning signal."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from agents.local.policy import CropPolicyNet, PolicyConfig, load_policy, nearest_box, question_features, save_policy
from agents.local.trainer import (
    GroupSampler,
    LocalTrainConfig,
    action_tokens,
    bucket_rc_rates,
    compute_advantages,
    grounding_loss,
    mirror_image,
    train,
)
from envs.region_rerank import RegionRerankEnv
from envs.factory import make_env, make_scorer
from envs.settings import EnvSettings, ScorerSettings


@pytest.fixture()
def pool_files(scene_pool_files):
    return scene_pool_files


def small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, **overrides) -> LocalTrainConfig:
    config = dict(
        data=pool_files["train"],
        val_data=pool_files["val"],
        scorer=ScorerSettings(tiny_model_name, str(tiny_checkpoint)),
        iterations=30,
        queries_per_batch=6,
        group_size=6,
        eval_every=15,
        eval_queries=6,
        env=EnvSettings(obs_size=32),
        policy=PolicyConfig(image_size=32, channels=16, hidden=32, grid=4),
        out=tmp_path / "run",
        progress=False,
        lr=2e-2,
    )
    config.update(overrides)
    return LocalTrainConfig(**config)


def test_group_sampler_balances_every_group():
    sampler = GroupSampler(group_size=4, budget=3, balance=True, generator=torch.Generator().manual_seed(0))
    # The policy almost surely says REGION: the missing FULL must be resampled or forced.
    decision_logits, box_logits = torch.tensor([-9.0, 9.0]), torch.zeros(16)
    decisions, box_ids, mask, result = sampler.sample(decision_logits, box_logits)
    assert set(decisions) == {0, 1} and result.path == "forced"
    assert mask == [1.0, 1.0, 1.0, 0.0]  # the forced decision token is masked out of the loss
    decisions, _, mask, result = sampler.sample(torch.tensor([0.0, 0.0]), box_logits)
    assert set(decisions) == {0, 1} and result.path in ("balanced", "resampled") and all(mask)


def test_action_tokens_put_reward_on_last_unmasked_token():
    rewards, mask = action_tokens([1, 0, 1], [1.0, 1.0, 0.0], [0.5, 1.0, -0.2])
    assert mask.tolist() == [[1, 1], [1, 0], [0, 1]]
    assert rewards.tolist() == [[0.0, 0.5], [1.0, 0.0], [0.0, pytest.approx(-0.2)]]


@pytest.mark.parametrize("estimator", ["rgrpo", "grpo", "rloo", "reinforce_plus_plus"])
def test_estimators_run_through_verls_dispatch(estimator):
    decisions = [1, 1, 1, 0, 0, 1]
    rewards, mask = action_tokens(decisions, [1.0] * 6, [1.0, 1.0, 1.0, 0.0, 0.2, 0.4])
    uids = ["a"] * 4 + ["b"] * 2
    advantages = compute_advantages(estimator, rewards, mask, uids, decisions, group_size=4, norm_by_std=True)
    assert advantages.shape == (6, 2)
    assert torch.all(advantages[mask == 0] == 0)
    # The best rollout of group "a" gets a positive advantage, the worst a negative one.
    assert advantages[0].sum() > 0 > advantages[3].sum()


def test_rgrpo_differs_from_grpo_on_an_unbalanced_group():
    decisions = [1, 1, 1, 0]
    rewards, mask = action_tokens(decisions, [1.0] * 4, [1.0, 1.0, 1.0, 0.0])
    r = compute_advantages("rgrpo", rewards, mask, ["g"] * 4, decisions, 4, norm_by_std=False)
    g = compute_advantages("grpo", rewards, mask, ["g"] * 4, decisions, 4, norm_by_std=False)
    # GRPO baseline: mean 0.75. r-GRPO: mean of per-decision means (1.0 + 0.0) / 2 = 0.5.
    assert r[0, 1] == pytest.approx(0.5) and g[0, 1] == pytest.approx(0.25)
    assert r[3, 0] == pytest.approx(-0.5) and g[3, 0] == pytest.approx(-0.75)


def test_unknown_or_critic_estimators_fail_before_training(pool_files, tiny_model_name, tiny_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="not a verl advantage estimator; train_rgrpo.py local runs: .*rgrpo, rloo"):
        train(small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, estimator="nope"))
    with pytest.raises(ValueError, match="critic"):
        train(small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, estimator="gae"))


def expected_reward(net: CropPolicyNet, env: RegionRerankEnv) -> float:
    """Exact mean over the env's queries of E_{a~pi}[r(s, a)]: every action is scored, no sampling noise."""
    values = []
    with torch.no_grad():
        for q in range(len(env.pools)):
            obs, _ = env.reset(options={"query_index": q})
            out = net.eval()(torch.as_tensor(obs["image"])[None], [obs["question"]])
            p_decision, p_box = out.decision_logits.softmax(-1)[0], out.box_logits.softmax(-1)[0]
            actions = [{"decision": 0, "box": np.zeros(4)}] + [{"decision": 1, "box": b.numpy()} for b in net.boxes]
            rewards = torch.tensor([o.reward for o in env.score_actions(actions)], dtype=torch.float32)
            values.append(float(p_decision[0] * rewards[0] + p_decision[1] * (p_box * rewards[1:]).sum()))
    return float(np.mean(values))


@pytest.fixture(scope="module")
def benchmark_file(tmp_path_factory) -> Path:
    """40 queries of the embedded benchmark (its own seed), materialized into a temporary cache."""
    from envs.data.default import CACHE_ENV, POOLS_FILE, benchmark_dir, default_dataset, default_scorer
    from envs.data.synthetic import BenchmarkConfig

    config = BenchmarkConfig(seed=5, train_queries=40, val_queries=8, test_queries=8)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("cache")))
        default_dataset("train", config=config)
        return benchmark_dir(config, default_scorer().name) / "train" / POOLS_FILE


def test_short_run_raises_the_expected_reward_and_is_reproducible(benchmark_file, tmp_path):
    config = LocalTrainConfig(
        data=benchmark_file, val_data=benchmark_file, iterations=30, queries_per_batch=8, eval_every=15,
        eval_queries=8, out=tmp_path / "run", progress=False, warm_start_steps=0,  # RL alone must learn
    )
    result = train(config)
    env = make_env(benchmark_file, purpose="train", settings=config.env)
    torch.manual_seed(1)
    untrained = expected_reward(CropPolicyNet(config.policy), env)
    trained = expected_reward(load_policy(result.checkpoint).net, env)
    assert trained > untrained + 0.1, (untrained, trained)
    assert (config.out / "metrics.csv").exists() and (config.out / "curves.png").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in (config.out / "tb").iterdir())
    assert "val_MRR" in result.history[14]
    assert (config.out / "dashboard.png").stat().st_size > 0
    assert {"rc_rate[1]", "rc_rate[11-K]"} & set(result.history[0])  # the dashboard's per-bucket crop rates
    again = train(dataclasses.replace(config, iterations=5, out=tmp_path / "again"))
    assert [h["reward"] for h in again.history] == [h["reward"] for h in result.history[:5]]


def test_checkpoint_round_trip(tmp_path):
    net = CropPolicyNet(PolicyConfig(image_size=32, channels=8, hidden=16, grid=4))
    save_policy(net, tmp_path / "p.pt", note="x")
    policy = load_policy(tmp_path / "p.pt")
    obs = {"image": np.zeros((32, 32, 3), np.uint8), "question": "where is the red square?"}
    torch.testing.assert_close(policy.net(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), ["q"]).box_logits,
                               net.eval()(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), ["q"]).box_logits)
    action = policy(obs, {}, None)
    assert action["decision"] in (0, 1) and action["box"].shape == (4,)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_policy(tmp_path / "missing.pt")


def test_question_features_are_stable_hashes():
    assert question_features("The RED square", 4096) == question_features("the red square!", 4096)
    assert question_features("", 16) == [0]


def test_a_passed_scorer_is_used_and_does_not_change_the_run(pool_files, tiny_model_name, tiny_checkpoint, tmp_path):
    config = small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, iterations=4, eval_every=0)
    scorer = make_scorer(config.scorer)
    shared = train(dataclasses.replace(config, out=tmp_path / "shared"), scorer)
    assert scorer.stats.image_forwards >= 4 * config.queries_per_batch  # one batched forward per group
    # Building the scorer inside train() draws nothing the policy's initialisation sees.
    own = train(dataclasses.replace(config, out=tmp_path / "own"))
    assert [h["reward"] for h in own.history] == [h["reward"] for h in shared.history]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(channels=12), "multiple of 8"),
        (dict(image_size=48, grid=4), "power of two"),
        (dict(image_size=4, grid=4), "power of two"),
        (dict(box_scales=(0.0, 0.5)), "box_scales"),
    ],
)
def test_policy_config_rejects_shapes_the_network_cannot_build(overrides, message):
    with pytest.raises(ValueError, match=message):
        PolicyConfig(**overrides)


def test_the_question_moves_the_box():
    """The same image under two questions gets different box distributions (the grounding path)."""
    torch.manual_seed(0)
    net = CropPolicyNet(PolicyConfig(image_size=32, channels=8, hidden=16, grid=4)).eval()
    image = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8)
    image[1] = image[0]
    out = net(image, ["What is the red striped star in the upper left?", "Tell me about the blue plain circle at the bottom."])
    assert not torch.allclose(out.box_logits[0].softmax(-1), out.box_logits[1].softmax(-1), atol=1e-3)


def test_action_tokens_with_a_second_box_and_a_search_token():
    rewards, mask = action_tokens([1, 0], [1.0, 0.0], [0.5, 1.0], second_box=True, search=True)
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 0, 1]]  # FULL may search: its search token counts
    assert rewards.tolist() == [[0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 1.0]]


def test_training_with_search_and_two_regions(pool_files, tiny_model_name, tiny_checkpoint, tmp_path):
    from envs.data.pools import load_query_pools, write_query_pools
    from envs.data.kb_index import KbItem, write_kb_file

    root = pool_files["train"].parent
    first = load_query_pools(pool_files["train"])[0]
    kb_file = write_kb_file([KbItem(c.id, c.image, c.text) for c in first.candidates], tmp_path / "kb.jsonl")
    files = {split: write_query_pools([dataclasses.replace(p, kb=kb_file) for p in load_query_pools(pool_files[split])],
                                      root / f"{split}-kb.jsonl")
             for split in ("train", "val")}
    config = small_config(files, tiny_model_name, tiny_checkpoint, tmp_path, iterations=3, eval_every=3,
                          env=EnvSettings(obs_size=32, search=True, max_regions=2))
    result = train(config)
    assert {"search_rate", "val_MRR"} <= set(result.history[-1])
    policy = load_policy(result.checkpoint)
    assert policy.net.config.search and policy.net.config.max_regions == 2
    env = make_env(files["val"], make_scorer(config.scorer), settings=config.env)
    obs, info = env.reset(options={"query_index": 0})
    action = policy(obs, info, env)
    assert action["search"] in (0, 1) and action["box"].shape in ((4,), (2, 4))
    assert env.step(action)[4]["outcome"] in ("full", "search", "region")


def test_with_search_training_keeps_the_pools_a_search_can_recover(pool_files, tiny_model_name, tiny_checkpoint, tmp_path):
    from agents.local.trainer import make_envs
    from envs.data.pools import load_query_pools, write_query_pools
    from envs.data.kb_index import KbItem, write_kb_file

    first = load_query_pools(pool_files["train"])[0]
    kb_file = write_kb_file([KbItem(c.id, c.image, c.text) for c in first.candidates], tmp_path / "kb.jsonl")
    root = pool_files["train"].parent
    files = {split: write_query_pools([dataclasses.replace(p, kb=kb_file) for p in load_query_pools(pool_files[split])],
                                      root / f"{split}-kb2.jsonl") for split in ("train", "val")}
    scorer = make_scorer(ScorerSettings(tiny_model_name, str(tiny_checkpoint)))
    for search, expected in ((False, 11), (True, 12)):  # the last train query's pool lacks its positive
        config = small_config(files, tiny_model_name, tiny_checkpoint, tmp_path, env=EnvSettings(obs_size=32, search=search))
        assert len(make_envs(config, scorer)[0].pools) == expected


def test_bucket_rc_rates_split_the_crop_rate_by_baseline_rank():
    rates = bucket_rc_rates([1, 0, 1, 1, 0], ["1", "1", "11-K", "11-K", "absent"])
    assert rates == {"rc_rate[1]": 0.5, "rc_rate[11-K]": 1.0, "rc_rate[absent]": 0.0}  # no 2-5 / 6-10 in the batch


def test_nearest_box_and_grounding_loss_aim_the_box_token_at_the_annotation():
    net = CropPolicyNet(PolicyConfig(image_size=32, channels=8, hidden=16, grid=4, box_scales=(0.3, 0.5)))
    # A 0.3-side box centred in the top-left cell is exactly that cell's first box.
    target = nearest_box(net.boxes, [0.0, 0.0, 0.275, 0.275])
    assert torch.allclose(net.boxes[target], torch.tensor([0.0, 0.0, 0.275, 0.275]))
    logits = torch.zeros(2, len(net.boxes), requires_grad=True)
    loss = grounding_loss(logits, torch.tensor([target, -1]))  # the second query has no annotation
    loss.backward()
    assert float(loss) == pytest.approx(np.log(len(net.boxes)))
    assert logits.grad[0, target] < 0 and not logits.grad[1].any()
    assert float(grounding_loss(logits, torch.tensor([-1, -1]))) == 0.0


def test_a_mirrored_observation_is_the_observation_of_the_mirrored_image():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (8, 12, 3), dtype=np.uint8))
    pixels = torch.from_numpy(np.asarray(image).copy())
    both = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    np.testing.assert_array_equal(mirror_image(pixels, True, False), np.asarray(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
    np.testing.assert_array_equal(mirror_image(pixels, True, True), np.asarray(both))
    assert mirror_image(pixels, False, False) is pixels


@pytest.mark.parametrize("grounding", [
    {"grounding_coef": 1.0},
    {"warm_start_steps": 30, "warm_start_batch": 16},
    {"warm_start_steps": 30, "warm_start_batch": 16, "warm_start_mirror": False},
])
def test_the_grounding_signals_teach_where_the_annotation_is(benchmark_file, tmp_path, grounding):
    base = LocalTrainConfig(data=benchmark_file, val_data=benchmark_file, iterations=15, queries_per_batch=8,
                            eval_every=0, out=tmp_path / "reward", progress=False, warm_start_steps=0,
                            env=EnvSettings(obs_size=64))  # the reward alone, without the IoU term
    env = make_env(benchmark_file, purpose="train", settings=base.env)

    def annotation_likelihood(checkpoint) -> float:
        net, values = load_policy(checkpoint).net, []
        with torch.no_grad():
            for q in range(len(env.pools)):
                obs, _ = env.reset(options={"query_index": q})
                if env.pool.box is None:
                    continue
                target = nearest_box(net.boxes, env.pool.box / np.tile([env.image.width, env.image.height], 2))
                values.append(float(net(torch.as_tensor(obs["image"])[None], [obs["question"]]).box_logits.log_softmax(-1)[0, target]))
        return float(np.mean(values))

    reward_only = train(base)
    grounded = train(dataclasses.replace(base, **grounding, out=tmp_path / "grounded"))
    assert annotation_likelihood(grounded.checkpoint) > annotation_likelihood(reward_only.checkpoint) + 0.3


def test_a_warm_start_needs_annotated_queries(pool_files, tiny_model_name, tiny_checkpoint, tmp_path):
    from envs.data.pools import load_query_pools, write_query_pools

    rows = [dataclasses.replace(p, box=None) for p in load_query_pools(pool_files["train"])]
    unannotated = write_query_pools(rows, tmp_path / "pools.jsonl")
    with pytest.raises(ValueError, match="annotated box"):
        train(small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, data=unannotated, warm_start_steps=2))


def test_a_shared_warm_start_trains_exactly_as_the_inline_one(pool_files, tiny_model_name, tiny_checkpoint, tmp_path):
    from agents.local.trainer import warm_started_policy

    config = small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, iterations=4, eval_every=0,
                          warm_start_steps=5, warm_start_batch=4)
    inline = train(config)
    scorer = make_scorer(config.scorer)
    shared = warm_started_policy(config, scorer, tmp_path / "warm.pt")
    resumed = train(dataclasses.replace(config, init_policy=shared, out=tmp_path / "resumed"), scorer)
    drop_time = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert drop_time(resumed.history) == drop_time(inline.history)
    other = dataclasses.replace(config, policy=PolicyConfig(image_size=32, channels=8, hidden=16, grid=4), init_policy=shared)
    with pytest.raises(ValueError, match="architecture"):
        train(other, scorer)


class CtrlCAfter:
    """A scorer that is ``scorer`` until its ``calls``-th ``embed_images``, which raises
    KeyboardInterrupt (Ctrl-C pressed in the middle of an iteration)."""

    def __init__(self, scorer, calls: int):
        self.scorer, self.calls = scorer, calls
        self.name = scorer.name

    def embed_images(self, images):
        self.calls -= 1
        if self.calls == 0:
            raise KeyboardInterrupt
        return self.scorer.embed_images(images)

    def candidate_embeddings(self, pool):
        return self.scorer.candidate_embeddings(pool)


def test_ctrl_c_writes_the_metrics_and_the_same_command_resumes_to_the_uninterrupted_run(
    pool_files, tiny_model_name, tiny_checkpoint, tmp_path, capsys
):
    import csv

    from agents.local.trainer import STATE_FILE

    config = small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, iterations=8, eval_every=3,
                          checkpoint_every=3, warm_start_steps=2, warm_start_batch=4)
    straight = train(dataclasses.replace(config, out=tmp_path / "straight"))
    # Ctrl-C in iteration 5: an iteration embeds 12 times (6 queries' FULL views and their
    # groups), the evaluation after iteration 3 another 12
    with pytest.raises(KeyboardInterrupt):
        train(config, CtrlCAfter(make_scorer(config.scorer), calls=5 * 12 + 7))
    printed = capsys.readouterr().out
    assert "interrupted after iteration 4" in printed and f"({config.out / STATE_FILE}) resumes after iteration 3" in printed
    assert [row["iteration"] for row in csv.DictReader((config.out / "metrics.csv").open())] == ["1", "2", "3", "4"]
    resumed = train(config)
    assert "resuming" in capsys.readouterr().out
    strip = lambda history: [{k: v for k, v in h.items() if k != "seconds"} for h in history]  # noqa: E731
    assert strip(resumed.history) == strip(straight.history)
    weights = [load_policy(r.checkpoint).net.state_dict() for r in (straight, resumed)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_an_unfinished_run_of_another_config_is_refused_naming_the_field(pool_files, tiny_model_name, tiny_checkpoint, tmp_path):
    config = small_config(pool_files, tiny_model_name, tiny_checkpoint, tmp_path, iterations=4, eval_every=0,
                          checkpoint_every=2, warm_start_steps=0)
    with pytest.raises(KeyboardInterrupt):
        train(config, CtrlCAfter(make_scorer(config.scorer), calls=2 * 12 + 7))  # in iteration 3
    with pytest.raises(ValueError, match=r"unfinished run \(iteration 2 of 4\) with another config: group_size: 6 -> 4"):
        train(dataclasses.replace(config, group_size=4))
    with pytest.raises(ValueError, match="resume: .* already finished|no run to continue"):
        train(dataclasses.replace(config, out=tmp_path / "empty", resume="require"))
    fresh = train(dataclasses.replace(config, group_size=4, resume="fresh"))  # on request, start over
    assert len(fresh.history) == 4


def test_a_truncated_checkpoint_or_state_is_refused_naming_the_file(tmp_path):
    """Files this project writes are renamed into place whole; one cut short by anything
    else is refused with its name, never read as a policy or a state to resume."""
    from agents.local.trainer import STATE_FILE, load_state

    path = tmp_path / "policy.pt"
    save_policy(CropPolicyNet(PolicyConfig(image_size=32, channels=8, hidden=16, grid=4)), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=f"policy checkpoint {path} is unreadable"):
        load_policy(path)
    (tmp_path / STATE_FILE).write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=f"{tmp_path / STATE_FILE} is not a readable training state"):
        load_state(LocalTrainConfig(out=tmp_path))
