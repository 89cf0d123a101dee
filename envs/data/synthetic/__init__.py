"""A procedurally generated re-ranking benchmark: cluttered scenes, a knowledge base, pools.

The embedded default of the project (no model hub or dataset host is needed). It has
the structure that makes Region-R1 matter on real data:

- a **knowledge base** of :data:`ENTITIES` (every combination of a shape, a colour and
  a pattern, 400 in all), each with a short text ("a red striped hexagon") and a
  reference image;
- **query scenes** in which the target entity sits at a random place and scale among
  larger distractor entities and background clutter (blobs, lines, fragments);
- a **question** that names the target by something visible that no distractor shares
  (an attribute, its position, or both: "What is the striped object in the lower
  left?"), so knowing where to crop needs the question; the target box is annotated;
- **candidate pools** of K: the positive plus the hard negatives a retriever would
  return (highest FULL-image similarity), so the FULL-image baseline is imperfect; in a
  set fraction of pools the positive is missing (for CondR@1).

Everything is a pure function of a seed: each scene draws from its own
``numpy.random.Generator`` keyed by ``(seed, split, index)``, so a scene does not
depend on how many others were generated, and rendering is a pure function of a
:class:`SceneSpec`. Splits draw from different streams and share no scenes; the
knowledge base is shared, as a real one is.

The package only generates (PIL and numpy), one module per concern: the knowledge base
(:mod:`~envs.data.synthetic.entities`), the sizes and splits (:mod:`~envs.data.synthetic.config`),
scene sampling (:mod:`~envs.data.synthetic.scenes`), drawing (:mod:`~envs.data.synthetic.drawing`)
and pool mining from given similarities (:mod:`~envs.data.synthetic.pools`). Computing the
similarities with a scorer and writing the files is :mod:`envs.data.default`.
"""

from envs.data.synthetic.entities import SHAPES, COLOURS, PATTERNS, Entity, ENTITIES
from envs.data.synthetic.config import CELLS, SPLITS, STREAMS, SceneConfig, BenchmarkConfig, check_split
from envs.data.synthetic.scenes import SceneObject, Clue, SceneSpec, cell_of, fresh_scene, mirror_question, unique_clues, question_for, sample_scene, scene_spec, split_specs
from envs.data.synthetic.drawing import RenderedScene, render_entity, render_scene, render_reference, reference_image
from envs.data.synthetic.pools import PoolSpec, missing_positive_mask, mine_pool, mine_pools

__all__ = ["SHAPES", "COLOURS", "PATTERNS", "Entity", "ENTITIES", "CELLS", "SPLITS", "STREAMS", "SceneConfig", "BenchmarkConfig", "check_split", "SceneObject", "Clue", "SceneSpec", "cell_of", "unique_clues", "question_for", "sample_scene", "scene_spec", "split_specs", "fresh_scene", "mirror_question", "RenderedScene", "render_entity", "render_scene", "render_reference", "reference_image", "PoolSpec", "missing_positive_mask", "mine_pool", "mine_pools"]
