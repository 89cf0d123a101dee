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
from envs.scorers.openclip import OpenClipScorer
from envs.settings import EnvSettings, ScorerSettings, settings_from_dict, settings_to_dict
from rewards import RewardConfig

ROOT = Path(__file__).resolve().parents[2]
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
    settings = ScorerSettings("envs.scorers.openclip:OpenClipScorer", options={"model": tiny_model_name, "pretrained": str(tiny_checkpoint)})
    assert isinstance(make_scorer(settings), OpenClipScorer)
    with pytest.raises(ValueError, match="no attribute 'Nope'"):
        make_scorer("envs.scorers.openclip:Nope")
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
    with pytest.raises(TypeError, match="reward_config"):  # one name per setting (CHANGELOG: now reward=)
        RegionRerankEnv(scene_pools, tiny_scorer, reward_config=RewardConfig(w_iou=0.5))


def test_env_settings_validate_once_with_the_field_named():
    for bad, message in (({"max_steps": 0}, "max_steps"), ({"reward_mode": "sometimes"}, "reward_mode"),
                         ({"obs_size": 4}, "obs_size")):
        with pytest.raises(ValueError, match=message):
            EnvSettings(**bad)


def test_settings_round_trip_through_plain_types_and_name_bad_keys():
    settings = EnvSettings(max_steps=2, reward=RewardConfig(w_margin=0.0), policy_max_side=64)
    assert settings_from_dict(EnvSettings, settings_to_dict(settings)) == settings
    with pytest.raises(ValueError, match=r"EnvSettings.reward: unknown key\(s\) \['w_marginn'\]"):
        settings_from_dict(EnvSettings, {"reward": {"w_marginn": 0.0}})


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


# --------------------------------------------------------------------------- bring your own scorer
@pytest.fixture()
def repo_cwd(monkeypatch):
    """The repository root as the working directory and not on ``sys.path``, as for
    ``python recipes/evaluate.py`` run from the root: ``examples`` must be found through
    make_scorer's current-directory rule."""
    import sys

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(ROOT))])
    for name in ("examples", "examples.custom_scorer"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    return ROOT


@pytest.fixture()
def examples_importable(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))


def test_the_example_scorer_runs_through_the_evaluate_recipe(repo_cwd, scene_pool_files, load_recipe, tmp_path):
    import json

    import numpy as np
    import tyro

    from envs.data.pools import load_image, load_query_pools
    from rewards.metrics import reciprocal_rank

    recipe = load_recipe("evaluate")
    args = tyro.cli(recipe.Args, args=[
        "--data", str(scene_pool_files["val"]), "--scorer.model", "examples.custom_scorer:HistogramScorer",
        "--scorer.options", "bins", "6", "--baselines", "full", "annotated", "--out", str(tmp_path),
    ])
    assert args.scorer.options == {"bins": 6}
    summaries = recipe.main(dataclasses.replace(args, gallery=dataclasses.replace(args.gallery, draw=False)))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["scorer"] == "rgb-histogram-6x64" and "scorer rgb-histogram-6x64" in (tmp_path / "results.md").read_text()

    from examples.custom_scorer import HistogramScorer  # an independent re-computation of FULL's MRR

    scorer, pools = HistogramScorer(bins=6), load_query_pools(scene_pool_files["val"])
    rr = [reciprocal_rank(scorer.candidate_embeddings(p) @ scorer.embed_images([load_image(p.image)])[0], p.positives) for p in pools]
    assert summaries["full"]["MRR"] == pytest.approx(np.mean(rr), abs=1e-9)
    # cropping to the annotated square never hurts a colour histogram (here FULL already ranks well)
    assert summaries["annotated"]["worsened"] == 0 and summaries["annotated"]["MRR"] >= summaries["full"]["MRR"]


class _Uncopyable:
    """The example scorer holding a module, as third-party wrappers often do: neither
    deep-copyable nor picklable."""

    def __init__(self):
        import numpy

        from examples.custom_scorer import HistogramScorer

        self.inner, self.numpy = HistogramScorer(bins=4), numpy
        self.name = self.inner.name

    def embed_images(self, images):
        return self.inner.embed_images(images)

    def candidate_embeddings(self, pool):
        return self.inner.candidate_embeddings(pool)


def test_gym_make_with_a_built_uncopyable_scorer_passes_check_env_and_shares_it(examples_importable, scene_pools):
    import copy
    import gc

    from envs.scorers.openclip import SharedScorer
    from envs.wrappers import FlatBoxAction

    scorer = _Uncopyable()
    with pytest.raises(TypeError):
        copy.deepcopy(scorer)
    env = gym.make("RegionRerank-v0", dataset=scene_pools, scorer=scorer, obs_size=32)
    check_env(env.unwrapped)  # re-makes the env for its render modes from the spec
    reference = env.unwrapped.spec.kwargs["scorer"]
    assert isinstance(reference, SharedScorer) and reference.name == scorer.name
    assert gym.make(env.spec).unwrapped.scorer is scorer
    assert gym.make(FlatBoxAction(env).spec).unwrapped.scorer is scorer  # a wrapper deep-copies the spec
    vec = gym.make_vec("RegionRerank-v0", num_envs=2, vectorization_mode="sync", dataset=scene_pools, scorer=scorer)
    assert all(e.unwrapped.scorer is scorer for e in vec.envs)  # one scorer per process, as before
    vec.close()

    lost = SharedScorer("shared-scorer-from-elsewhere", "x")
    with pytest.raises(LookupError, match="only within the process"):
        make_env(scene_pools, lost)
    del env, vec, scorer
    gc.collect()
    with pytest.raises(LookupError, match="does not exist in this process"):
        reference.resolve()


def test_a_module_attr_factory_gets_the_common_settings_it_names(examples_importable, monkeypatch, tmp_path):
    import sys
    import types

    from examples.custom_scorer import HistogramScorer

    seen = {}

    def factory(bins: int, device: str = "cpu", cache_dir=None):
        seen.update(bins=bins, device=device, cache_dir=cache_dir)
        return HistogramScorer(bins)

    monkeypatch.setitem(sys.modules, "my_scorers", types.SimpleNamespace(factory=factory, nameless=lambda: object()))
    make_scorer(ScorerSettings("my_scorers:factory", device="cuda:1", cache_dir=str(tmp_path), options={"bins": 3}))
    assert seen == {"bins": 3, "device": "cuda:1", "cache_dir": str(tmp_path)}  # candidate_features: not named
    with pytest.raises(TypeError, match="has no attribute 'name'"):
        make_scorer("my_scorers:nameless")


def test_a_custom_scorer_reaches_the_verl_agent_loop_through_its_config_file(repo_cwd, load_recipe):
    import yaml

    from agents.verl.config import loop_settings
    from agents.verl.settings import LoopSettings, agent_loop_config

    recipe = load_recipe("train_rgrpo")
    local = recipe.parse(["local", "--scorer.model", "examples.custom_scorer:HistogramScorer"])
    assert local.train.scorer.model == "examples.custom_scorer:HistogramScorer"
    verl = recipe.parse(["verl", "--scorer.model", "examples.custom_scorer:HistogramScorer", "--scorer.options", "bins", "5"])
    entry = yaml.safe_load(yaml.safe_dump(agent_loop_config(loop_settings(verl.verl)), sort_keys=False))[0]
    settings = LoopSettings.from_kwargs(**{k: v for k, v in entry.items() if k not in ("name", "_target_")})
    assert make_scorer(settings.scorer).name == "rgb-histogram-5x64"
