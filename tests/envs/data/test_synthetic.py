"""The synthetic benchmark: determinism, disjoint splits, true boxes, unambiguous
questions, pool size and the missing-positive fraction."""

from __future__ import annotations

import dataclasses
import hashlib
import re

import numpy as np
import pytest

from envs.data.synthetic import (
    CELLS,
    COLOURS,
    ENTITIES,
    PATTERNS,
    SHAPES,
    BenchmarkConfig,
    SceneConfig,
    mine_pools,
    cell_of,
    fresh_scene,
    mirror_question,
    reference_image,
    render_scene,
    scene_spec,
    split_specs,
)

CONFIG = BenchmarkConfig(seed=7, train_queries=40, val_queries=40, test_queries=40)


def image_digest(image) -> str:
    return hashlib.sha256(image.tobytes()).hexdigest()


def parse_question(question: str) -> dict:
    """What a reader takes from a question: the colour, pattern, shape and cell it names."""
    words = set(re.findall(r"[a-z]+", question.lower()))
    cells = [cell for cell, phrase in CELLS.items() if re.search(rf"\b{phrase}\b", question)]
    assert len(cells) <= 1, f"{question!r} names several places"
    return {
        "colour": [c for c in COLOURS if c in words],
        "pattern": [p for p in PATTERNS if p in words],
        "shape": [s for s in SHAPES if s in words],
        "cell": cells,
    }


def test_knowledge_base_is_large_and_distinct():
    assert 300 <= len(ENTITIES) <= 500
    assert len({e.id for e in ENTITIES}) == len({e.text for e in ENTITIES}) == len(ENTITIES)
    assert [e.index for e in ENTITIES] == list(range(len(ENTITIES)))
    images = {image_digest(reference_image(e, 0, 64)) for e in ENTITIES[:40]}
    assert len(images) == 40


def test_same_seed_same_scenes_different_seed_different_scenes():
    again = BenchmarkConfig(seed=7, test_queries=40)
    for i in range(5):
        a, b = scene_spec(CONFIG, "test", i), scene_spec(again, "test", i)
        assert a == b
        assert render_scene(a).image.tobytes() == render_scene(b).image.tobytes()
    other = BenchmarkConfig(seed=8)
    assert all(scene_spec(CONFIG, "test", i) != scene_spec(other, "test", i) for i in range(5))
    assert render_scene(scene_spec(CONFIG, "test", 0)).image.tobytes() != render_scene(scene_spec(other, "test", 0)).image.tobytes()
    assert reference_image(ENTITIES[3], 7, 64).tobytes() == reference_image(ENTITIES[3], 7, 64).tobytes()
    assert reference_image(ENTITIES[3], 7, 64).tobytes() != reference_image(ENTITIES[3], 8, 64).tobytes()


def test_a_scene_does_not_depend_on_how_many_were_generated():
    assert split_specs(CONFIG, "val", 10)[-1] == split_specs(CONFIG, "val", 25)[9]


def test_splits_share_no_scenes():
    digests = {split: {image_digest(render_scene(s).image) for s in split_specs(CONFIG, split, 15)} for split in ("train", "val", "test")}
    assert all(len(d) == 15 for d in digests.values())
    assert not digests["train"] & digests["val"] and not digests["train"] & digests["test"] and not digests["val"] & digests["test"]


@pytest.mark.parametrize("index", range(8))
def test_box_is_exactly_where_the_target_was_drawn(index):
    spec = scene_spec(CONFIG, "test", index)
    scene = render_scene(spec)
    without_target = render_scene(dataclasses.replace(spec, objects=spec.objects[1:]))
    changed = np.any(np.asarray(scene.image) != np.asarray(without_target.image), axis=-1)
    ys, xs = np.nonzero(changed)
    x1, y1, x2, y2 = scene.target_box
    assert xs.min() >= x1 and xs.max() < x2 and ys.min() >= y1 and ys.max() < y2  # every target pixel is inside
    assert xs.min() - x1 <= 2 and x2 - 1 - xs.max() <= 2 and ys.min() - y1 <= 2 and y2 - 1 - ys.max() <= 2  # and tight
    low, high = spec.image_size * np.array([CONFIG.scene.target_scale[0], CONFIG.scene.prominent_scale[1]])
    assert low * 0.6 <= max(x2 - x1, y2 - y1) <= high + 1


def test_question_singles_out_the_target():
    kinds = set()
    for spec in split_specs(CONFIG, "test", 200):
        named = parse_question(spec.question)
        assert sum(len(v) for v in named.values()) >= 1, spec.question
        assert sum(len(v) for k, v in named.items() if k != "cell") <= 1, f"{spec.question!r} names more than one attribute"

        def fits(obj) -> bool:
            e = obj.entity
            return (
                all(e.colour == c for c in named["colour"])
                and all(e.pattern == p for p in named["pattern"])
                and all(e.shape == s for s in named["shape"])
                and all(cell_of(obj.center, spec.image_size) == c for c in named["cell"])
            )

        assert [o for o in spec.objects if fits(o)] == [spec.target], spec.question
        kinds.add(tuple(sorted(k for k, v in named.items() if v)))
    assert {("cell",), ("colour",), ("pattern",), ("shape",)} <= kinds  # every kind of clue occurs
    assert any("cell" in k and len(k) == 2 for k in kinds)  # and attribute + position


def test_scenes_follow_their_config():
    scene = SceneConfig(image_size=200, target_scale=(0.2, 0.3), prominent_fraction=0.0, distractor_scale=(0.1, 0.15), distractors=(2, 4))
    config = BenchmarkConfig(seed=1, scene=scene)
    specs = split_specs(config, "val", 60)
    assert all(s.image_size == 200 and render_scene(s).image.size == (200, 200) for s in specs[:3])
    assert all(40 <= s.target.size <= 60 for s in specs)
    assert all(20 <= o.size <= 30 for s in specs for o in s.objects[1:])
    assert all(len(s.objects) <= 5 for s in specs) and np.mean([len(s.objects) - 1 for s in specs]) >= 2
    prominent = split_specs(BenchmarkConfig(scene=SceneConfig(prominent_fraction=0.5, prominent_scale=(0.5, 0.6))), "test", 200)
    assert 0.4 <= np.mean([s.target.size >= 0.5 * 320 for s in prominent]) <= 0.6
    lone = split_specs(BenchmarkConfig(scene=SceneConfig(distractors=(0, 0))), "test", 5)
    assert all(len(s.objects) == 1 for s in lone)


def test_pools_hold_the_positive_and_the_hardest_negatives():
    config = dataclasses.replace(CONFIG, test_queries=50)
    specs = split_specs(config, "test")
    similarity = np.random.default_rng(0).normal(size=(len(specs), len(ENTITIES)))
    pools = mine_pools(specs, similarity, config, "test")
    missing = 0
    for spec, pool, sim in zip(specs, pools, similarity):
        target = spec.target.entity.index
        assert len(pool.entities) == len(set(pool.entities)) == config.pool_size
        hardest = [int(e) for e in np.argsort(-sim) if e != target]
        if any(pool.positive):
            assert [e for e, p in zip(pool.entities, pool.positive) if p] == [target]
            assert set(pool.entities) == {target, *hardest[: config.pool_size - 1]}
        else:
            missing += 1
            assert set(pool.entities) == set(hardest[: config.pool_size])
    assert missing == round(config.missing_positive_fraction * len(specs)) == 5
    assert mine_pools(specs, similarity, config, "test") == pools  # deterministic
    with pytest.raises(ValueError, match="similarity must have shape"):
        mine_pools(specs, similarity[:, :10], config, "test")


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: SceneConfig(clutter=1.5), "clutter"),
        (lambda: SceneConfig(target_scale=(0.3, 0.2)), "target_scale"),
        (lambda: SceneConfig(distractors=(2, 20)), "distractors"),
        (lambda: BenchmarkConfig(pool_size=1), "pool_size"),
        (lambda: BenchmarkConfig(missing_positive_fraction=-0.1), "missing_positive_fraction"),
        (lambda: BenchmarkConfig(test_queries=-1), "test_queries"),
    ],
)
def test_bad_config_names_the_field(make, field):
    with pytest.raises(ValueError, match=field):
        make()


def test_unknown_split_is_refused():
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        scene_spec(CONFIG, "dev", 0)


def test_a_mirrored_question_swaps_its_position_words_only():
    assert mirror_question("What is the star in the lower right?", True, False) == "What is the star in the lower left?"
    assert mirror_question("What is the star in the lower right?", False, True) == "What is the star in the upper right?"
    assert mirror_question("Top left: the striped object on the RIGHT", True, True) == "Bottom right: the striped object on the LEFT"
    assert mirror_question("What is the bright object, upright?", True, True) == "What is the bright object, upright?"
    assert mirror_question("at the top", False, False) == "at the top"


def test_fresh_scenes_are_seeded_and_never_a_split_scene():
    fresh = [fresh_scene(CONFIG, seed=0, index=i) for i in range(20)]
    assert [s.question for s in fresh] == [fresh_scene(CONFIG, 0, i).question for i in range(20)]
    assert [s.objects for s in fresh] != [fresh_scene(CONFIG, 1, i).objects for i in range(20)]
    split = {s.objects for name in ("train", "val", "test") for s in split_specs(CONFIG, name)}
    assert not split & {s.objects for s in fresh}
