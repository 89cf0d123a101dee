"""envs/factory.py and envs/settings.py: what a missing dataset or scorer means, settings in one place."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import gymnasium as gym
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers RegionRerank-v0)
from envs.factory import make_env, make_scorer
from envs.region_rerank import RegionRerankEnv
from envs.scorer import OpenClipScorer
from envs.settings import EnvSettings, ScorerSettings, settings_from_dict, settings_to_dict, upgrade_legacy_flags
from rewards import RewardConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("envs", "agents", "rewards")


def test_make_scorer_builds_the_open_clip_scorer_the_settings_name(tiny_model_name, tiny_checkpoint, tiny_scorer):
    scorer = make_scorer(ScorerSettings(tiny_model_name, str(tiny_checkpoint), candidate_features="image"))
    assert isinstance(scorer, OpenClipScorer) and scorer.name == tiny_scorer.name
    assert scorer.candidate_features == "image"


def test_every_scorer_setting_reaches_the_default_scorer_too(tmp_path):
    scorer = make_scorer({"candidate_features": "text", "cache_dir": str(tmp_path)})
    assert scorer.name.startswith("rr-tiny@") and scorer.candidate_features == "text"
    assert scorer.cache_dir is not None and scorer.cache_dir.parent == tmp_path


def test_scorer_settings_refuse_weights_without_a_model_and_unknown_features():
    with pytest.raises(ValueError, match="model name"):
        ScorerSettings(pretrained="w.pt")
    with pytest.raises(ValueError, match="candidate_features"):
        ScorerSettings(candidate_features="pixels")


def test_a_module_attr_scorer_is_imported_and_called_with_its_options(tiny_model_name, tiny_checkpoint):
    settings = ScorerSettings("envs.scorer:OpenClipScorer", options={"model": tiny_model_name, "pretrained": str(tiny_checkpoint)})
    assert isinstance(make_scorer(settings), OpenClipScorer)
    with pytest.raises(ValueError, match="no attribute 'Nope'"):
        make_scorer("envs.scorer:Nope")
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        make_scorer("no_such_module:Scorer")


def test_gym_make_resolves_a_path_and_builds_the_scorer_from_settings(scene_pool_files, tiny_model_name, tiny_checkpoint):
    settings = ScorerSettings(tiny_model_name, str(tiny_checkpoint))
    env = gym.make("RegionRerank-v0", dataset=scene_pool_files["val"], scorer=settings, max_steps=2)
    assert env.unwrapped.settings.max_steps == 2 and isinstance(env.unwrapped.scorer, OpenClipScorer)
    # Settings, not a built scorer, in the spec: Gymnasium can re-make the env from it.
    check_env(env.unwrapped)


def test_the_env_takes_resolved_pools_and_a_built_scorer(scene_pool_files, scene_pools, tiny_scorer):
    with pytest.raises(TypeError, match="loaded query pools"):
        RegionRerankEnv(scene_pool_files["val"], tiny_scorer)
    with pytest.raises(TypeError, match="built scorer"):
        RegionRerankEnv(scene_pools, None)
    with pytest.raises(TypeError, match="unknown keyword"):
        RegionRerankEnv(scene_pools, tiny_scorer, max_stepz=2)


def test_env_settings_given_whole_or_by_field_are_the_same(scene_pools, tiny_scorer):
    settings = EnvSettings(max_steps=3, obs_size=32, reward=RewardConfig(w_iou=0.5))
    whole = make_env(scene_pools, tiny_scorer, settings=settings)
    fields = make_env(scene_pools, tiny_scorer, max_steps=3, obs_size=32, reward=RewardConfig(w_iou=0.5))
    assert whole.settings == fields.settings == settings
    with pytest.warns(DeprecationWarning, match="reward_config"):
        old = RegionRerankEnv(scene_pools, tiny_scorer, reward_config=RewardConfig(w_iou=0.5))
    assert old.reward_config == RewardConfig(w_iou=0.5)


def test_env_settings_validate_once_with_the_field_named():
    for bad, message in (({"max_steps": 0}, "max_steps"), ({"reward_mode": "sometimes"}, "reward_mode"),
                         ({"obs_size": 4}, "obs_size"), ({"min_box_side": -1.0}, "min_box_side")):
        with pytest.raises(ValueError, match=message):
            EnvSettings(**bad)


def test_settings_round_trip_through_plain_types_and_name_bad_keys():
    settings = EnvSettings(max_steps=2, reward=RewardConfig(w_margin=0.0), policy_max_side=64)
    assert settings_from_dict(EnvSettings, settings_to_dict(settings)) == settings
    with pytest.raises(ValueError, match=r"EnvSettings.reward: unknown key\(s\) \['w_marginn'\]"):
        settings_from_dict(EnvSettings, {"reward": {"w_marginn": 0.0}})


def test_legacy_flags_are_rewritten_with_a_warning():
    with pytest.warns(FutureWarning, match="--verl.scorer-model is deprecated"):
        argv = upgrade_legacy_flags(["--verl.scorer-model", "EVA02-L-14", "--local.reward.w_iou=1", "key=value"],
                                    ("verl", "local"))
    assert argv == ["--verl.scorer.model", "EVA02-L-14", "--local.env.reward.w-iou=1", "key=value"]


def _module_imports(path: Path) -> set[str]:
    """Project modules ``path`` imports at module level (inside functions too: a cycle is a cycle)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_import_cycle_in_the_package():
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            modules[name] = path
    graph = {name: {m for m in _module_imports(path) if m in modules and m != name} for name, path in modules.items()}
    # Importing a package runs its __init__: an edge to a.b.c is an edge to a and a.b as well.
    for name, targets in graph.items():
        for target in list(targets):
            parts = target.split(".")
            targets.update(".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in modules)
        targets.discard(name)

    def cycle_from(start):
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen and not start.startswith(nxt + ".") and not nxt.startswith(node + "."):
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, f"import cycles: {cycles[:3]}"
