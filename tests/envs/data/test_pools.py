"""Query-pool JSONL loading, validation and writing (envs/data/pools.py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from PIL import Image

from envs.data.pools import (
    DEFAULT_MAX_IMAGE_PIXELS,
    Candidate,
    DataError,
    ImageCache,
    QueryPool,
    load_image,
    load_query_pools,
    read_image_size,
    write_query_pools,
)


def make_image(path: Path, size: tuple[int, int] = (32, 24), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=0 if mode == "L" else (200, 30, 30)).save(path)
    return path


def write_lines(path: Path, records: list) -> Path:
    """Write records (dicts, or raw strings written as-is) one per line."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def record(query_id: str = "q1", **overrides) -> dict:
    base = {
        "query_id": query_id,
        "question": "Which building is this?",
        "image": "images/q.png",
        "candidates": [
            {"id": "c1", "image": "kb/c1.png", "positive": True},
            {"id": "c2", "text": "A red tower.", "positive": False},
        ],
    }
    base.update(overrides)
    return base


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    make_image(tmp_path / "images" / "q.png", (40, 30))
    make_image(tmp_path / "kb" / "c1.png")
    make_image(tmp_path / "kb" / "c2.png")
    return tmp_path


def test_round_trip_keeps_every_field(data_dir: Path) -> None:
    pools = [
        QueryPool(
            query_id="q1",
            question="Which building is this?",
            image=data_dir / "images" / "q.png",
            candidates=(
                Candidate("c1", True, image=data_dir / "kb" / "c1.png", text="Tower, a tall building."),
                Candidate("c2", False, image=data_dir / "kb" / "c2.png"),
                Candidate("c3", False, text="Only text."),
            ),
            box=(1.0, 2.5, 30.0, 20.0),
        ),
        QueryPool("q2", "Ünïcode question?", data_dir / "images" / "q.png", (Candidate("c1", False, text="x"),)),
    ]
    out = write_query_pools(pools, data_dir / "pools.jsonl", data_dir)
    loaded = load_query_pools(out)
    assert loaded.pools == pools
    assert loaded.source == str(out)
    first = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert first["image"] == "images/q.png"  # written relative to the root
    assert first["candidates"][0]["image"] == "kb/c1.png"


def test_write_outside_root_uses_absolute_paths(data_dir: Path, tmp_path_factory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    out_path = elsewhere / "pools.jsonl"
    pool = QueryPool("q1", "?", data_dir / "images" / "q.png", (Candidate("c1", True, image=data_dir / "kb" / "c1.png"),))
    write_query_pools([pool], out_path)
    assert Path(json.loads(out_path.read_text())["image"]).is_absolute()
    assert load_query_pools(out_path).pools == [pool]


def test_relative_paths_resolve_against_file_folder_or_root(data_dir: Path) -> None:
    sub = data_dir / "splits"
    sub.mkdir()
    rec = record(image="../images/q.png", candidates=[{"id": "c1", "image": "../kb/c1.png", "positive": True}])
    path = write_lines(sub / "eval.jsonl", [rec])
    pool = load_query_pools(path)[0]
    assert pool.image == data_dir / "images" / "q.png"  # '..' normalised, absolute
    assert pool.image.is_absolute() and pool.candidates[0].image == data_dir / "kb" / "c1.png"
    path2 = write_lines(sub / "eval2.jsonl", [record()])
    pool2 = load_query_pools(path2, root=data_dir)[0]
    assert pool2.image == data_dir / "images" / "q.png"


def test_box_is_parsed_to_a_tuple_of_floats(data_dir: Path) -> None:
    path = write_lines(data_dir / "p.jsonl", [record(box=[1, 2, 30.5, 20])])
    box = load_query_pools(path)[0].box
    assert box == (1.0, 2.0, 30.5, 20.0) and all(isinstance(v, float) for v in box)
    assert load_query_pools(write_lines(data_dir / "n.jsonl", [record(box=None)]))[0].box is None


@pytest.mark.parametrize("box", [[5, 2, 5, 20], [1, 20, 30, 2], [-1, 2, 30, 20], [1, 2, 30], [1, 2, 30, True], "1,2,3,4"])
def test_malformed_box_is_refused(data_dir: Path, box) -> None:
    path = write_lines(data_dir / "p.jsonl", [record(box=box)])
    with pytest.raises(DataError, match=rf"p\.jsonl:1: field 'box'"):
        load_query_pools(path)


def test_box_outside_the_image_is_refused(data_dir: Path) -> None:
    path = write_lines(data_dir / "p.jsonl", [record(box=[0, 0, 41, 30])])  # image is 40x30
    with pytest.raises(DataError, match=r"p\.jsonl:1: field 'box'.*40x30"):
        load_query_pools(path)


def test_train_drops_pools_without_positive_and_says_how_many(data_dir: Path, caplog) -> None:
    negatives = [{"id": "c1", "image": "kb/c1.png", "positive": False}]
    path = write_lines(data_dir / "p.jsonl", [record("q1"), record("q2", candidates=negatives), record("q3", candidates=negatives)])
    evaluation = load_query_pools(path, purpose="eval")
    assert [p.query_id for p in evaluation] == ["q1", "q2", "q3"]
    assert evaluation.dropped_without_positive == 0
    with caplog.at_level(logging.WARNING, logger="envs.data.pools"):
        train = load_query_pools(path, purpose="train")
    assert [p.query_id for p in train] == ["q1"]
    assert train.dropped_without_positive == 2
    assert "dropped 2 of 3 queries without a positive" in caplog.text


def test_blank_lines_are_skipped_and_line_numbers_stay_true(data_dir: Path) -> None:
    path = write_lines(data_dir / "p.jsonl", [record("q1"), "", "   ", record("q2", question=7)])
    with pytest.raises(DataError, match=r"p\.jsonl:4: field 'question' must be str, got int 7"):
        load_query_pools(path)
    ok = write_lines(data_dir / "ok.jsonl", [record("q1"), "", record("q2")])
    assert len(load_query_pools(ok)) == 2


def candidates_with(entry: dict) -> list[dict]:
    return [{"id": "c0", "text": "fine", "positive": True}, entry]


ERROR_CASES = {
    "invalid json": ('{"query_id": "q2", ', r"invalid JSON"),
    "not an object": ("[1, 2]", r"must be a JSON object"),
    "missing query_id": ({k: v for k, v in record().items() if k != "query_id"}, r"missing field 'query_id'"),
    "mistyped query_id": (record(query_id=12), r"field 'query_id' must be str, got int 12"),
    "missing question": ({k: v for k, v in record().items() if k != "question"}, r"missing field 'question'"),
    "missing image": ({k: v for k, v in record().items() if k != "image"}, r"missing field 'image'"),
    "mistyped candidates": (record(candidates={"id": "c1"}), r"field 'candidates' must be list"),
    "empty pool": (record(candidates=[]), r"field 'candidates' is empty"),
    "candidate without id": (record(candidates=candidates_with({"text": "t", "positive": False})), r"missing field 'candidates\[1\]\.id'"),
    "mistyped positive": (
        record(candidates=candidates_with({"id": "c1", "text": "t", "positive": "yes"})),
        r"field 'candidates\[1\]\.positive' must be bool, got str 'yes'",
    ),
    "missing positive": (record(candidates=candidates_with({"id": "c1", "text": "t"})), r"missing field 'candidates\[1\]\.positive'"),
    "neither image nor text": (
        record(candidates=candidates_with({"id": "c9", "positive": False})),
        r"field 'candidates\[1\]' \(id 'c9'\) has neither 'image' nor 'text'",
    ),
    "duplicate candidate": (
        record(candidates=candidates_with({"id": "c0", "text": "again", "positive": False})),
        r"field 'candidates\[1\]\.id': duplicate candidate id 'c0' \(also candidates\[0\]\)",
    ),
    "missing query image": (record(image="images/nope.png"), r"field 'image': image file not found: .*nope\.png"),
    "missing candidate image": (
        record(candidates=candidates_with({"id": "c1", "image": "kb/gone.png", "positive": False})),
        r"field 'candidates\[1\]\.image': image file not found: .*gone\.png",
    ),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_errors_name_file_line_and_field(data_dir: Path, case: str) -> None:
    bad, pattern = ERROR_CASES[case]
    path = write_lines(data_dir / "pools.jsonl", [record("q0"), bad])  # the bad record is on line 2
    with pytest.raises(DataError, match=rf"pools\.jsonl:2: .*{pattern}"):
        load_query_pools(path)


def test_duplicate_query_ids_name_both_lines(data_dir: Path) -> None:
    path = write_lines(data_dir / "pools.jsonl", [record("q1"), record("q2"), record("q1")])
    with pytest.raises(DataError, match=r"pools\.jsonl:3: field 'query_id': duplicate query id 'q1' \(first at line 1\)"):
        load_query_pools(path)


def test_missing_file_and_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"absent\.jsonl: query-pool file not found"):
        load_query_pools(tmp_path / "absent.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no query records"):
        load_query_pools(tmp_path / "empty.jsonl")


def test_unreadable_image_is_refused(data_dir: Path) -> None:
    (data_dir / "kb" / "fake.png").write_text("this is not an image")
    bad = record(candidates=[{"id": "c1", "image": "kb/fake.png", "positive": True}])
    path = write_lines(data_dir / "pools.jsonl", [bad])
    with pytest.raises(DataError, match=r"pools\.jsonl:1: field 'candidates\[0\]\.image': unreadable image .*fake\.png"):
        load_query_pools(path)


def test_oversized_image_is_refused_from_its_header(data_dir: Path) -> None:
    path = write_lines(data_dir / "pools.jsonl", [record()])
    with pytest.raises(DataError, match=r"pools\.jsonl:1: field 'image': image .*q\.png is 40x30 = 1200 pixels, more than max_image_pixels=1000"):
        load_query_pools(path, max_image_pixels=1000)
    assert len(load_query_pools(path, max_image_pixels=1200)) == 1


def test_verify_images_false_skips_file_checks(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "p.jsonl", [record()])  # no image files exist
    pool = load_query_pools(path, verify_images=False)[0]
    assert pool.image == tmp_path / "images" / "q.png"


def test_load_image_returns_loaded_rgb(tmp_path: Path) -> None:
    path = make_image(tmp_path / "gray.png", (7, 5), mode="L")
    image = load_image(path)
    assert image.mode == "RGB" and image.size == (7, 5)
    assert image.getpixel((0, 0)) == (0, 0, 0)  # pixels are available after the file is closed


def test_image_cache_decodes_once_until_the_file_changes_and_stays_bounded(tmp_path: Path) -> None:
    import os

    first, second = make_image(tmp_path / "a.png", (8, 8)), make_image(tmp_path / "b.png", (8, 8))
    cache = ImageCache(max_pixels=100)
    image = cache.load(first)
    assert cache.load(first) is image and (cache.hits, cache.misses) == (1, 1)
    assert list(image.getdata()) == list(load_image(first).getdata())
    cache.load(second)  # 128 px > 100: the least recently used image (a.png) is dropped
    assert cache.load(first) is not image and cache.misses == 3
    Image.new("RGB", (8, 8), (255, 0, 0)).save(first)
    os.utime(first, ns=(1, 1))
    assert cache.load(first).getpixel((0, 0)) == (255, 0, 0)  # rewritten in place: decoded again
    with pytest.raises(DataError, match=r"missing\.png"):
        cache.load(tmp_path / "missing.png")


def test_load_image_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"image file not found: .*missing\.png"):
        load_image(tmp_path / "missing.png")
    make_image(tmp_path / "big.png", (50, 50))
    with pytest.raises(DataError, match=r"big\.png is 50x50 = 2500 pixels, more than max_image_pixels=2499"):
        load_image(tmp_path / "big.png", max_pixels=2499)
    whole = tmp_path / "whole.jpg"
    Image.effect_noise((64, 64), 50).convert("RGB").save(whole, quality=95)
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(whole.read_bytes()[:600])
    with pytest.raises(DataError, match=r"unreadable image .*truncated\.jpg"):
        load_image(truncated)


def test_pillow_bomb_error_becomes_data_error_and_global_limit_is_untouched(tmp_path: Path, monkeypatch) -> None:
    make_image(tmp_path / "img.png", (50, 50))
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # Pillow refuses > 200 pixels itself
    with pytest.raises(DataError, match=r"img\.png exceeds Pillow's decompression-bomb limit"):
        load_image(tmp_path / "img.png", max_pixels=10_000)
    monkeypatch.undo()
    load_image(tmp_path / "img.png")
    assert Image.MAX_IMAGE_PIXELS == DEFAULT_MAX_IMAGE_PIXELS


def test_read_image_size_reads_the_header(tmp_path: Path) -> None:
    assert read_image_size(make_image(tmp_path / "a.png", (13, 9))) == (13, 9)
    with pytest.raises(DataError, match=r"a\.png is 13x9 = 117 pixels, more than max_image_pixels=100"):
        read_image_size(tmp_path / "a.png", max_pixels=100)
    with pytest.raises(DataError, match=r"image file not found: .*b\.png"):
        read_image_size(tmp_path / "b.png")


# --- values the loader must name, not crash on ------------------------------------------


@pytest.mark.parametrize(
    "line, message",
    [
        (json.dumps(record(box=[1, 2, 3, 4])).replace("[1, 2, 3, 4]", "[1" + "0" * 400 + ", 2, 3, 4]"), "field 'box' holds a number too large"),
        ('{"query_id": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
        (json.dumps(record(box=[1, 2, 3, 4])).replace("[1, 2, 3, 4]", "[" + "9" * 5000 + ", 2, 3, 4]"), "invalid JSON"),
        (json.dumps(record(box=[1, 2, 3, 1e999])), "field 'box'"),
        (json.dumps(record(question="What is \ud800 this?")), "field 'question' is not valid Unicode"),
        (json.dumps(record(candidates=[{"id": "c\udcff", "image": "kb/c1.png", "positive": True}])), "field 'candidates[0].id' is not valid Unicode"),
    ],
)  # fmt: skip
def test_overflowing_deep_and_invalid_unicode_values_are_data_errors(data_dir: Path, line: str, message: str) -> None:
    path = write_lines(data_dir / "pools.jsonl", [record("ok"), line])
    with pytest.raises(DataError) as err:
        load_query_pools(path)
    assert str(err.value).startswith(f"{path}:2: ") and message in str(err.value)


def test_non_utf8_bytes_name_the_line(data_dir: Path) -> None:
    path = data_dir / "pools.jsonl"
    path.write_bytes(json.dumps(record("ok")).encode() + b"\n" + json.dumps(record("q2")).encode()[:-2] + b'\xff"}\n')
    with pytest.raises(DataError, match=rf"{path}:2: not valid UTF-8"):
        load_query_pools(path)


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_images_are_caught_at_load(data_dir: Path, suffix: str) -> None:
    noisy = Image.effect_noise((64, 48), 80).convert("RGB")  # noise: the pixel data dominates the file
    noisy.save(data_dir / "kb" / f"bad{suffix}")
    truncate(data_dir / "kb" / f"bad{suffix}")
    candidates = [{"id": "c1", "image": "kb/c1.png", "positive": True}, {"id": "c9", "image": f"kb/bad{suffix}", "positive": False}]
    path = write_lines(data_dir / "pools.jsonl", [record("q1"), record("q2", candidates=candidates)])
    with pytest.raises(DataError, match=rf"{path}:2: field 'candidates\[1\].image': unreadable image .*bad{suffix} \(truncated"):
        load_query_pools(path)
    assert len(load_query_pools(path, decode_images=False)) == 2  # headers only: the fast check passes it


def test_an_image_that_fails_at_reset_names_the_record(data_dir: Path, tiny_scorer) -> None:
    from envs.region_rerank import RegionRerankEnv

    Image.effect_noise((64, 48), 80).convert("RGB").save(data_dir / "images" / "late.png")
    candidates = [{"id": "c1", "image": "kb/c1.png", "positive": True}, {"id": "c2", "image": "kb/c2.png", "positive": False}]
    path = write_lines(
        data_dir / "pools.jsonl", [record("q1", candidates=candidates), record("q2", image="images/late.png", candidates=candidates)]
    )
    env = RegionRerankEnv(load_query_pools(path), tiny_scorer)
    truncate(data_dir / "images" / "late.png")  # corrupted after loading
    with pytest.raises(DataError, match=rf"^{path}:2: field 'image': unreadable image .*late.png"):
        env.reset(options={"query_id": "q2"})
    # A candidate the scorer has not encoded yet.
    Image.effect_noise((64, 48), 80).convert("RGB").save(data_dir / "kb" / "c2.png")
    truncate(data_dir / "kb" / "c2.png")
    with pytest.raises(DataError, match=rf"^{path}:1: field 'candidates\[1\].image': candidate 'c2'"):
        env.reset(options={"query_id": "q1"})


def test_iter_jsonl_reads_gzip_and_names_the_line_of_a_broken_stream(tmp_path):
    import gzip

    from envs.data.pools import iter_jsonl

    good = tmp_path / "ok.jsonl.gz"
    with gzip.open(good, "wt", encoding="utf-8") as handle:
        handle.write('{"a": 1}\n\n{"a": 2}\n')
    assert [(n, r) for n, _, r in iter_jsonl(good)] == [(1, {"a": 1}), (3, {"a": 2})]
    truncated = tmp_path / "cut.jsonl.gz"
    truncated.write_bytes(good.read_bytes()[:-12])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz:\d+: not a readable gzip file"):
        list(iter_jsonl(truncated))


def test_gold_ids_and_kb_are_optional_and_round_trip(data_dir: Path) -> None:
    kb_file = data_dir / "kb.jsonl"
    kb_file.write_text('{"id": "c1", "text": "Tower"}\n', encoding="utf-8")
    plain = load_query_pools(write_lines(data_dir / "plain.jsonl", [record()]))[0]
    assert plain.gold_ids is None and plain.kb is None
    assert plain.gold == ("c1",)  # without gold_ids: the positive candidates' ids
    pool = QueryPool("q9", "?", data_dir / "images" / "q.png", (Candidate("c2", False, text="x"),),
                     gold_ids=("c1",), kb=kb_file)
    out = write_query_pools([pool], data_dir / "search.jsonl", data_dir)
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written["gold_ids"] == ["c1"] and written["kb"] == "kb.jsonl"
    loaded = load_query_pools(out)[0]
    assert loaded.gold_ids == ("c1",) and loaded.kb == kb_file and loaded.gold == ("c1",)
    assert not loaded.has_positive  # the pool lacks its gold entity: what SEARCH can recover


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"gold_ids": "c1"}, "field 'gold_ids' must be a list of non-empty strings"),
        ({"gold_ids": ["c1", ""]}, "field 'gold_ids' must be a list of non-empty strings"),
        ({"kb": 3}, "field 'kb' must be str"),
        ({"kb": "missing.jsonl"}, "field 'kb': knowledge-base file not found"),
    ],
)
def test_bad_gold_ids_or_kb_name_the_line_and_field(data_dir: Path, overrides, message) -> None:
    path = write_lines(data_dir / "bad.jsonl", [record(**overrides)])
    with pytest.raises(DataError, match=f"bad.jsonl:1: {message}"):
        load_query_pools(path)
