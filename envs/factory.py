"""The one place that decides what a missing dataset or scorer means.

``gym.make("RegionRerank-v0", ...)`` calls :func:`make_env`; recipes, the trainers, the
evaluator and the verl agent loop build their scorers with :func:`make_scorer` and their
envs with :func:`make_env`. :class:`envs.region_rerank.RegionRerankEnv` itself only takes
resolved pools and a built scorer.

- a dataset of ``None`` is the embedded benchmark's ``split`` (:func:`envs.data.default.default_dataset`);
  a path is a query-pool JSONL file (:func:`envs.data.pools.load_query_pools`);
- a scorer of ``None`` is :class:`envs.settings.ScorerSettings()`, i.e. the embedded rr-tiny
  scorer; every setting (device, candidate features, cache) applies to it as to any other;
- a scorer's ``model`` picks its backend (:func:`scorer_backend`): ``module:attr`` (your own),
  a folder (transformers CLIP / SigLIP), else an open_clip name;
- a built scorer given to ``gym.make`` is recorded in the env's spec as a
  :class:`envs.scorers.openclip.SharedScorer` reference (the sharing rule), so Gymnasium's copies and
  re-makes of the spec share it.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import os
import re
import sys
from pathlib import Path
from typing import Any, Literal, Sequence

from envs.data.pools import QueryPool, load_query_pools
from envs.data.default import cache_root, default_dataset, default_scorer
from envs.region_rerank import RegionRerankEnv
from envs.scorers.openclip import OpenClipScorer, Scorer, SharedScorer, check_scorer_members
from envs.settings import EnvSettings, ScorerSettings, merged_env_settings, settings_from_dict

Dataset = str | os.PathLike | Sequence[QueryPool] | None


IMPORT_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
"""``module:attr`` (``examples.custom_scorer:HistogramScorer``): a scorer factory or class."""
COMMON_OPTIONS = ("device", "candidate_features", "cache_dir")
"""Settings a ``module:attr`` factory also receives when its signature names them."""


def scorer_backend(model: str | None) -> Literal["default", "import", "transformers", "open_clip"]:
    """Which backend :func:`make_scorer` uses for ``ScorerSettings.model``: ``None`` is the
    embedded default; ``module:attr`` an importable factory or class; an existing folder a
    transformers model (:class:`envs.scorers.huggingface.TransformersScorer`); anything else an
    open_clip model name."""
    if model is None:
        return "default"
    if IMPORT_SPEC.match(model):
        return "import"
    if Path(model).expanduser().is_dir():
        return "transformers"
    return "open_clip"


def make_scorer(settings: ScorerSettings | dict | str | os.PathLike | None = None) -> Scorer:
    """The scorer ``settings`` describe (``None``: the embedded rr-tiny scorer).

    A string is shorthand for ``ScorerSettings(model=...)``. ``model`` picks the backend
    (:func:`scorer_backend`):

    - ``module:attr`` imports ``attr`` from ``module`` and calls it with ``settings.options``
      as keywords, plus ``device`` / ``candidate_features`` / ``cache_dir`` for those its
      signature names (an option of the same name wins);
    - a folder is a transformers CLIP / SigLIP model (``AutoModel`` + ``AutoProcessor``),
      built with ``settings.options`` (e.g. ``batch_size``) on top of the common settings;
    - anything else is an open_clip model name with ``pretrained`` weights.

    The result is checked for the :class:`envs.scorers.openclip.Scorer` members (``name``,
    ``embed_images``, ``candidate_embeddings``).
    """
    if isinstance(settings, (str, os.PathLike)):
        settings = ScorerSettings(model=str(settings))
    settings = settings_from_dict(ScorerSettings, settings, "scorer settings")
    common = dict(device=settings.device, candidate_features=settings.candidate_features, cache_dir=settings.cache_dir)
    backend = scorer_backend(settings.model)
    built_in = dict(invariance=settings.invariance)  # the built-in scorers' own option
    if backend == "default":
        return default_scorer(**common, **built_in)
    if backend == "import":
        factory = import_object(settings.model)
        scorer = factory(**{**_accepted(factory, common), **settings.options})
        check_scorer_members(scorer)
        return scorer
    if backend == "transformers":
        if settings.pretrained is not None:
            raise ValueError(
                f"scorer {settings.model!r} is a folder (a transformers model) that holds its weights; pretrained= must be None"
            )
        from envs.scorers.huggingface import TransformersScorer  # transformers imports take seconds; only when used

        return TransformersScorer(settings.model, **{**common, **built_in, **settings.options})
    return OpenClipScorer(settings.model, settings.pretrained, **common, **built_in)


def _accepted(factory: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The entries of ``values`` whose names ``factory``'s signature names explicitly."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    keyword = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {k: v for k, v in values.items() if k in parameters and parameters[k].kind in keyword}


def import_object(spec: str, what: str = "scorer") -> Any:
    """The object a ``module:attr`` spec names (``attr`` may be dotted); a ``ValueError``
    names the spec (as ``what``) and what failed. The one loader of user-named objects."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"{what} {spec!r} must look like 'module:attribute'")
    try:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Like ``python -m``: a module of the current directory (``examples.custom_scorer``
            # from the repository root) is found too; installed packages come first.
            if os.getcwd() in sys.path or not (exc.name or "").startswith(module_name.split(".")[0]):
                raise
            sys.path.append(os.getcwd())
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {spec!r}: cannot import module {module_name!r}: {exc}") from exc
    try:
        return functools.reduce(getattr, attr.split("."), module)
    except AttributeError as exc:
        raise ValueError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}") from exc


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
    kb_index: Any = None,
    **fields: Any,
) -> RegionRerankEnv:
    """A :class:`RegionRerankEnv` on ``dataset`` scored by ``scorer``; the entry point of
    ``gym.make("RegionRerank-v0")``.

    Args:
        dataset: query pools, a query-pool JSONL path, or ``None`` for the embedded
            benchmark's ``split``.
        scorer: a built :class:`envs.scorers.openclip.Scorer`, a :class:`envs.scorers.openclip.SharedScorer`
            reference to one, or what :func:`make_scorer` takes (settings, a model name, a
            folder or ``module:attr``, ``None`` for the default). A built scorer is recorded
            in ``gym.make``'s spec as a reference (the env's ``spec`` setter), so Gymnasium
            re-makes the env (``check_env`` does) sharing it, whatever the scorer holds;
            settings work across processes too.
        split: embedded-benchmark split when ``dataset`` is ``None`` (``train``, ``val``, ``test``).
        purpose: ``"eval"`` keeps pools without a positive, ``"train"`` drops them.
        settings: the episode's :class:`envs.settings.EnvSettings` (or a mapping of them);
            single fields may instead be given as keywords (``max_steps=2``).
        render_mode: ``None`` or ``"rgb_array"``.
        kb_index: the :class:`envs.data.kb_index.KnowledgeBaseIndex` SEARCH queries (only with
            ``search=True``); ``None`` builds it with the scorer from the pools' KB file
            (:func:`pools_index`).
    """
    pools = resolve_dataset(dataset, split, purpose)
    if len(pools) == 0:
        raise ValueError(f"dataset {dataset!r} holds no query pools")
    if isinstance(scorer, SharedScorer):
        built = scorer.resolve()
    else:
        built = scorer if _is_built(scorer) else make_scorer(scorer)
    env_settings = merged_env_settings(settings, fields)
    if env_settings.search and kb_index is None:
        kb_index = pools_index(pools, built)
    return RegionRerankEnv(pools, built, settings=env_settings, render_mode=render_mode, kb_index=kb_index)


def pools_index(pools: Sequence[QueryPool], scorer: Scorer, cache_dir: Any = ...) -> Any:
    """The knowledge-base index SEARCH uses for ``pools``: the one KB file they all name
    (their ``kb`` field), embedded with ``scorer``'s candidate features, once per process and
    cached on disk under ``cache_dir`` (default: the project cache's ``kb_index`` folder, the
    one ``recipes/build_index.py`` and ``recipes/retrieve.py`` fill).

    Raises:
        ValueError: naming the problem when the pools name no KB file or several.
    """
    from envs.data.kb_index import shared_index  # imported when searching only

    files = {pool.kb for pool in pools}
    if None in files:
        missing = next(pool for pool in pools if pool.kb is None)
        raise ValueError(
            f"search=True needs every query pool to name its knowledge base (field 'kb'); "
            f"query {missing.query_id!r} names none"
        )
    if len(files) > 1:
        raise ValueError(f"search=True needs the pools to share one knowledge base; they name {len(files)}: "
                         f"{sorted(map(str, files))[:3]}")
    root = cache_root() / "kb_index" if cache_dir is ... else cache_dir
    return shared_index(files.pop(), scorer, cache_dir=root)


def _is_built(scorer: Any) -> bool:
    return scorer is not None and not isinstance(scorer, (ScorerSettings, dict, str, os.PathLike))
