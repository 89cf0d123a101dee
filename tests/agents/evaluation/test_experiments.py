"""Variants x seeds: the engine behind the algorithm comparison and the reward ablation."""

import dataclasses

import pytest

from agents.evaluation.experiments import (
    ABLATIONS,
    ablation_rewards,
    paired_differences,
    paired_table,
    plot_learning_curves,
    run_variants,
    variants_table,
    warm_start_key,
)
from agents.local.policy import PolicyConfig
from agents.local.trainer import LocalTrainConfig
from envs.settings import EnvSettings, ScorerSettings
from rewards import RewardConfig


def test_variants_share_a_warm_start_only_when_nothing_it_depends_on_differs():
    base = LocalTrainConfig()
    after = [dataclasses.replace(base, estimator="grpo"), dataclasses.replace(base, iterations=60),
             dataclasses.replace(base, env=dataclasses.replace(base.env, reward=RewardConfig(w_iou=0.3)))]
    assert {warm_start_key(c) for c in after} == {warm_start_key(base)}
    before = [dataclasses.replace(base, seed=1), dataclasses.replace(base, warm_start_mirror=False),
              dataclasses.replace(base, warm_start_steps=10), dataclasses.replace(base, policy=PolicyConfig(grid=4))]
    assert len({warm_start_key(c) for c in [base, *before]}) == 5


def test_ablation_rewards_switch_terms_on_in_order():
    rewards = ablation_rewards()
    assert list(rewards) == list(ABLATIONS)
    active = [sum(w > 0 for w in (r.w_mrr, r.w_ndcg, r.w_rank, r.w_margin)) for r in rewards.values()]
    assert active == [1, 2, 3, 4]
    on_top = ablation_rewards(RewardConfig(w_iou=0.5, w_margin=0.3))  # the base's other terms stay
    assert all(r.w_iou == 0.5 for r in on_top.values()) and on_top["full"].w_margin == 0.3 and on_top["mrr"].w_ndcg == 0


def test_run_variants_trains_and_evaluates_each_seed(scene_pool_files, tiny_model_name, tiny_checkpoint, tmp_path):
    base = LocalTrainConfig(
        data=scene_pool_files["train"], val_data=scene_pool_files["val"], scorer=ScorerSettings(tiny_model_name, str(tiny_checkpoint)),
        iterations=3, queries_per_batch=4, group_size=4, eval_every=0,
        env=EnvSettings(obs_size=32), policy=PolicyConfig(image_size=32, channels=8, hidden=16, grid=4), progress=False,
    )
    variants = {"rgrpo": base, "grpo": dataclasses.replace(base, estimator="grpo", balance_groups=False)}
    results = run_variants(variants, (0, 1), tmp_path, test_data=scene_pool_files["val"])
    assert [(r["variant"], r["seed"]) for r in results["runs"]] == [("rgrpo", 0), ("rgrpo", 1), ("grpo", 0), ("grpo", 1)]
    mean, std = results["summary"]["grpo"]["MRR"]
    values = [r["test"]["MRR"] for r in results["runs"] if r["variant"] == "grpo"]
    assert mean == pytest.approx(sum(values) / 2) and std >= 0
    assert (tmp_path / "rgrpo-seed1" / "policy.pt").exists() and (tmp_path / "results.json").exists()
    table = variants_table(results["summary"], 2)
    assert table.splitlines()[0].startswith("| variant (2 seeds) | MRR") and "| grpo |" in table
    assert plot_learning_curves(results["runs"], tmp_path).stat().st_size > 0
    assert (tmp_path / "dashboard.png").exists() and (tmp_path / "rgrpo-seed0" / "dashboard.png").exists()
    assert {p.name for p in (tmp_path / "tb_mean").iterdir()} == {"rgrpo", "grpo"}


def test_one_seed_table_gives_means_without_a_spread():
    table = variants_table({"mrr": {m: (0.25, 0.0) for m in ("MRR", "R@1", "CondR@1", "RC", "RC[1]", "RC[11-K]")}}, 1)
    header, _, row = table.splitlines()
    assert header.startswith("| variant (1 seed) |")
    assert row == "| mrr | " + " | ".join(["0.250"] * 6) + " |"


def test_paired_differences_resolve_only_what_the_seeds_support():
    def run(variant, seed, mrr):
        return {"variant": variant, "seed": seed, "test": {"MRR": mrr}}

    runs = [run("a", s, 0.40 + 0.01 * s) for s in range(5)]
    runs += [run("b", s, 0.45 + 0.01 * s + (0.001 if s % 2 else -0.001)) for s in range(5)]  # +0.05, tight
    runs += [run("c", s, 0.40 + 0.01 * s + (0.03 if s % 2 else -0.03)) for s in range(5)]  # ~0, noisy
    diffs = paired_differences(runs, "a", metrics=("MRR",))
    mean, half, n = diffs["b"]["MRR"]
    assert n == 5 and mean == pytest.approx(0.05, abs=1e-3) and 0 < half < 0.01
    assert abs(diffs["c"]["MRR"][0]) < diffs["c"]["MRR"][1]
    table = paired_table(diffs, "a")
    assert "| b (n=5) | **+0.050 ±" in table and "| c (n=5) | -0.006 ± 0.041 |" in table and "**" not in table.splitlines()[-1]
    with pytest.raises(ValueError, match="reference variant 'z'"):
        paired_differences(runs, "z")


def test_compare_recipe_balances_only_rgrpo_and_adds_no_std_variants(load_recipe):
    recipe = load_recipe("compare_algorithms")
    base = LocalTrainConfig()
    assert recipe.algorithm(base, "rgrpo").balance_groups and not recipe.algorithm(base, "grpo").balance_groups
    no_std = recipe.algorithm(base, "rgrpo", norm_adv_by_std=False)
    assert no_std.estimator == "rgrpo" and no_std.norm_adv_by_std is False and base.norm_adv_by_std is True
    assert recipe.Args().seeds == (0, 1, 2, 3, 4)  # 5 paired seeds by default


def _sigint_when(path, timeout: float = 120.0):
    """A thread that presses Ctrl-C (SIGINT to this process) once ``path`` exists."""
    import os
    import signal
    import threading
    import time

    def watch():
        deadline = time.monotonic() + timeout
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(300)
def test_an_interrupted_grid_reuses_finished_cells_resumes_the_open_one_and_retrains_changed_ones(
    scene_pool_files, tiny_model_name, tiny_checkpoint, tmp_path, capsys
):
    import json
    import signal
    import time

    from agents.evaluation.experiments import CELL_FILE
    from agents.local.trainer import STATE_FILE

    base = LocalTrainConfig(
        data=scene_pool_files["train"], val_data=scene_pool_files["val"], scorer=ScorerSettings(tiny_model_name, str(tiny_checkpoint)),
        iterations=6, queries_per_batch=4, group_size=4, eval_every=0, checkpoint_every=2, warm_start_steps=2,
        warm_start_batch=4, env=EnvSettings(obs_size=32), policy=PolicyConfig(image_size=32, channels=8, hidden=16, grid=4),
        progress=False,
    )
    variants = {"rgrpo": base, "grpo": dataclasses.replace(base, estimator="grpo", balance_groups=False)}
    grid = dict(test_data=scene_pool_files["val"])
    straight = run_variants(variants, (0,), tmp_path / "straight", **grid)

    out = tmp_path / "grid"
    # A job started in the background by a non-interactive shell (a CI runner, nohup ... &)
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler: give
    # this process the terminal's Ctrl-C for the test.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        watcher = _sigint_when(out / "grpo-seed0" / STATE_FILE)  # Ctrl-C once the second cell has a checkpoint
        with pytest.raises(KeyboardInterrupt):
            run_variants(variants, (0,), out, **grid)
            time.sleep(60)  # the grid finished before the watcher fired: wait for it, the test fails below
        watcher.join(timeout=5)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "grid interrupted in grpo, seed 0: 1 cells finished" in capsys.readouterr().out
    assert (out / "rgrpo-seed0" / CELL_FILE).is_file() and not (out / "grpo-seed0" / CELL_FILE).exists()
    finished_at = (out / "rgrpo-seed0" / "policy.pt").stat().st_mtime_ns

    resumed = run_variants(variants, (0,), out, **grid)
    printed = capsys.readouterr().out
    assert f"reusing {out / 'rgrpo-seed0'}" in printed and f"resuming {out / 'grpo-seed0'}" in printed
    assert (out / "rgrpo-seed0" / "policy.pt").stat().st_mtime_ns == finished_at  # not trained again
    same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # noqa: E731 (NaN == NaN)
    assert same(resumed["summary"], straight["summary"])  # the same results as a grid never stopped
    assert same([r["test"] for r in resumed["runs"]], [r["test"] for r in straight["runs"]])

    changed = {name: dataclasses.replace(config, lr=2e-3) for name, config in variants.items()}
    run_variants(changed, (0,), out, **grid)
    printed = capsys.readouterr().out
    assert printed.count("retraining") == 2 and "lr: 0.001 -> 0.002" in printed and "reusing" not in printed
    assert json.loads((out / "grpo-seed0" / CELL_FILE).read_text())["config"]["lr"] == 2e-3
