"""The one place that decides what a missing dataset or scorer means.

``gym.make("RegionRerank-v0", ...)`` calls :func:`make_env`; recipes, the trainers, the
evaluator and the verl agent loop build their scorers with :func:`make_scorer` and their
envs with :func:`make_env`. :class:`envs.region_rerank.RegionRerankEnv` itself only takes
resolved pools and a built scorer.

- a dataset of ``None`` is the embedded benchmark's ``split`` (:func:`envs.default.default_dataset`);
  a path is a query-pool JSONL file (:func:`envs.data.load_query_pools`);
- a scorer of ``None`` is :class:`envs.settings.ScorerSettings()`, i.e. the embedded rr-tiny
  scorer; every setting (device, candidate features, cache) applies to it as to any other.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any, Literal, Sequence

from envs.data import QueryPool, load_query_pools
from envs.default import default_dataset, default_scorer
from envs.region_rerank import RegionRerankEnv
from envs.scorer import OpenClipScorer, Scorer
from envs.settings import EnvSettings, ScorerSettings, settings_from_dict

Dataset = str | os.PathLike | Sequence[QueryPool] | None


def make_scorer(settings: ScorerSettings | dict | str | None = None) -> Scorer:
    """The scorer ``settings`` describe (``None``: the embedded rr-tiny scorer).

    A string is shorthand for ``ScorerSettings(model=...)``. A ``model`` of the form
    ``module:attr`` imports ``attr`` from ``module`` and calls it with ``settings.options``.
    """
    if isinstance(settings, str):
        settings = ScorerSettings(model=settings)
    settings = settings_from_dict(ScorerSettings, settings, "scorer settings")
    common = dict(device=settings.device, candidate_features=settings.candidate_features, cache_dir=settings.cache_dir)
    if settings.model is None:
        return default_scorer(**common)
    if ":" in settings.model:
        return _import_attr(settings.model)(**settings.options)
    return OpenClipScorer(settings.model, settings.pretrained, **common)


def _import_attr(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"scorer {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    try:
        return functools.reduce(getattr, attr.split("."), module)
    except AttributeError as exc:
        raise ValueError(f"scorer {spec!r}: module {module_name!r} has no attribute {attr!r}") from exc


def resolve_dataset(dataset: Dataset, split: str = "test", purpose: Literal["train", "eval"] = "eval") -> Sequence[QueryPool]:
    """The query pools ``dataset`` names (see the module docstring)."""
    if dataset is None:
        return default_dataset(split=split, purpose=purpose)
    if isinstance(dataset, (str, os.PathLike)):
        return load_query_pools(dataset, purpose=purpose)
    return dataset


def make_env(
    dataset: Dataset = None,
    scorer: Scorer | ScorerSettings | dict | str | None = None,
    *,
    split: str = "test",
    purpose: Literal["train", "eval"] = "eval",
    settings: EnvSettings | dict | None = None,
    render_mode: str | None = None,
    **fields: Any,
) -> RegionRerankEnv:
    """A :class:`RegionRerankEnv` on ``dataset`` scored by ``scorer``; the entry point of
    ``gym.make("RegionRerank-v0")``.

    Args:
        dataset: query pools, a query-pool JSONL path, or ``None`` for the embedded
            benchmark's ``split``.
        scorer: a built :class:`envs.scorer.Scorer`, or what :func:`make_scorer` takes
            (settings, a model name or ``module:attr``, ``None`` for the default). Passing
            settings rather than a built scorer keeps ``gym.make``'s spec copyable, so
            Gymnasium can re-make the env (``check_env`` does) whatever the scorer holds.
        split: embedded-benchmark split when ``dataset`` is ``None`` (``train``, ``val``, ``test``).
        purpose: ``"eval"`` keeps pools without a positive, ``"train"`` drops them.
        settings: the episode's :class:`envs.settings.EnvSettings` (or a mapping of them);
            single fields may instead be given as keywords (``max_steps=2``).
        render_mode: ``None`` or ``"rgb_array"``.
    """
    pools = resolve_dataset(dataset, split, purpose)
    if len(pools) == 0:
        raise ValueError(f"dataset {dataset!r} holds no query pools")
    built = scorer if _is_built(scorer) else make_scorer(scorer)
    return RegionRerankEnv(pools, built, settings=settings, render_mode=render_mode, **fields)


def _is_built(scorer: Any) -> bool:
    return scorer is not None and not isinstance(scorer, (ScorerSettings, dict, str))
