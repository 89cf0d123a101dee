"""Adapters from E-VQA / InfoSeek downloads to query pools (envs/adapters, recipes/prepare_data.py).

Every fixture file is written in the public format it stands for: E-VQA's CSV, the
E-VQA knowledge-base JSON, EchoSight's and OMGM's result JSON, InfoSeek's JSONL with
an id2image mapping, OMGM's wiki-image CSV.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from envs.adapters import (
    KbImages,
    PoolOptions,
    QueryImageRoots,
    build_evqa_pools,
    build_infoseek_pools,
    entity_key,
    iter_json_object,
    load_entity_map,
    load_id2image,
    load_inat_id2name,
    load_kb_image_map,
    load_knowledge_base,
    load_retrieval_results,
)
from envs.data import DataError, load_query_pools

WIKI = "https://en.wikipedia.org/wiki/"
EIFFEL, LOUVRE, OAK, NOTRE, ABSENT, GOLD_ONLY = (
    WIKI + "Eiffel_Tower",
    WIKI + "Louvre",
    WIKI + "Quercus_robur",
    WIKI + "Notre-Dame_de_Paris",
    WIKI + "Not_In_The_KB",
    WIKI + "Never_Retrieved",
)
IMG = "https://upload.wikimedia.org/wikipedia/commons/"
EVQA_HEADER = [
    "question", "answer", "dataset_image_ids", "dataset_name", "dataset_category_id", "question_type",
    "wikipedia_url", "wikipedia_title", "evidence", "evidence_section_id", "evidence_section_title",
    "encyclopedic_vqa_split", "question_original", "wikipedia_url_used_in_train",
]


def make_image(path: Path, color: tuple[int, int, int] = (10, 120, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 16), color).save(path)
    return path


def evqa_row(question: str, image_ids: str, dataset: str, qtype: str, url: str, **extra: str) -> dict:
    row = dict.fromkeys(EVQA_HEADER, "")
    row.update(question=question, answer="an answer", dataset_image_ids=image_ids, dataset_name=dataset,
               question_type=qtype, wikipedia_url=url, encyclopedic_vqa_split="test", **extra)
    return row


def write_csv(path: Path, rows: list[dict], header: list[str] = EVQA_HEADER) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return path


def kb_entry(url: str, title: str, lead: str, image_urls: list[str]) -> dict:
    return {
        "title": title, "url": url, "section_titles": [title, "History"], "section_texts": [lead, "Later."],
        "image_urls": image_urls, "image_reference_descriptions": ["" for _ in image_urls],
        "image_section_indices": [0 for _ in image_urls],
    }


@dataclass
class Downloads:
    root: Path
    annotations: Path
    kb: Path
    echosight: Path
    images: QueryImageRoots
    kb_images: KbImages


@pytest.fixture
def downloads(tmp_path: Path) -> Downloads:
    """A miniature E-VQA download: GLDv2 (nested), iNaturalist (id2name), KB, KB images, EchoSight results."""
    make_image(tmp_path / "gldv2" / "a" / "b" / "c" / "abc123.jpg", (200, 0, 0))
    make_image(tmp_path / "gldv2" / "d" / "e" / "f" / "def456.jpg", (0, 200, 0))
    make_image(tmp_path / "inat" / "val" / "03111_Plantae" / "img1001.jpg", (0, 0, 200))
    id2name = write_json(tmp_path / "val_id2name.json", {"1001": "val/03111_Plantae/img1001.jpg"})
    make_image(tmp_path / "kb_images" / "Tour_Eiffel_2.jpg")  # the first KB image URL was never downloaded
    make_image(tmp_path / "kb_images" / "Louvre_Pyramid.jpg")
    kb = write_json(tmp_path / "encyclopedic_kb_wiki.json", {
        EIFFEL: kb_entry(EIFFEL, "Eiffel Tower", "The Eiffel Tower is a   wrought-iron tower.",
                         [IMG + "1/1a/Tour_Eiffel_1.jpg", IMG + "2/2b/Tour_Eiffel_2.jpg"]),
        LOUVRE: kb_entry(LOUVRE, "Louvre", "The Louvre is a museum.", [IMG + "3/3c/Louvre_Pyramid.jpg"]),
        OAK: kb_entry(OAK, "Quercus robur", "Quercus robur is an oak.", []),
        NOTRE: kb_entry(NOTRE, "Notre-Dame de Paris", "A cathedral.", [IMG + "4/4d/Notre_Dame.jpg"]),
    })
    rows = [
        evqa_row("Who designed this tower?", "abc123|def456", "landmarks", "templated", EIFFEL,
                 evidence="It was designed by\nGustave Eiffel's company."),  # a quoted field over two lines
        evqa_row("Where is the museum founded by the architect of this?", "def456", "landmarks", "2_hop",
                 f"{EIFFEL}|{LOUVRE}"),
        evqa_row("How tall does this tree grow?", "1001", "inaturalist", "automatic", OAK),
        evqa_row("When was this built?", "zzz999", "landmarks", "multi_answer", NOTRE),  # image not downloaded
        evqa_row("What is this?", "def456", "landmarks", "templated", GOLD_ONLY),  # gold not in the top-K
    ]
    annotations = write_csv(tmp_path / "test.csv", rows)
    # EchoSight numbers E-VQA queries after removing the 2_hop row.
    echosight = write_json(tmp_path / "echosight_test.json", {
        "E-VQA_0": {"retrieved_entries": [LOUVRE, EIFFEL, ABSENT, EIFFEL], "retrieval_similarities": [0.9, 0.8, 0.7, 0.6],
                    "reranked_entries": [EIFFEL, LOUVRE], "reranked_sections": ["..."]},
        "E-VQA_1": {"retrieved_entries": [OAK, NOTRE], "retrieval_similarities": [0.9, 0.1], "reranked_entries": [OAK]},
        "E-VQA_2": {"retrieved_entries": [NOTRE], "retrieval_similarities": [0.5], "reranked_entries": [NOTRE]},
        "E-VQA_3": {"retrieved_entries": [EIFFEL, LOUVRE], "retrieval_similarities": [0.5, 0.4],
                    "reranked_entries": [LOUVRE]},
    })
    images = QueryImageRoots(landmarks=tmp_path / "gldv2", inaturalist=tmp_path / "inat",
                             inat_id2name=load_inat_id2name(id2name))
    return Downloads(tmp_path, annotations, kb, echosight, images, KbImages(root=tmp_path / "kb_images"))


def build(d: Downloads, retrieval: Path | None = None, **options):
    results = load_retrieval_results(retrieval or d.echosight)
    return build_evqa_pools(d.annotations, results, d.kb, images=d.images, kb_images=d.kb_images,
                            options=PoolOptions(**options))


def test_evqa_pools_follow_echosight_numbering_and_mark_the_gold_entity(downloads: Downloads) -> None:
    pools, summary = build(downloads, purpose="eval")
    assert [p.query_id for p in pools] == ["E-VQA_0", "E-VQA_1", "E-VQA_3"]
    first = pools[0]
    assert first.question == "Who designed this tower?"
    assert first.image == downloads.root / "gldv2" / "a" / "b" / "c" / "abc123.jpg"  # first of two image ids
    assert [c.id for c in first.candidates] == [LOUVRE, EIFFEL, ABSENT]  # duplicate Eiffel counted once
    assert [c.positive for c in first.candidates] == [False, True, False]
    eiffel = first.candidates[1]
    assert eiffel.image == downloads.root / "kb_images" / "Tour_Eiffel_2.jpg"  # first image found locally
    assert eiffel.text is None
    absent = first.candidates[2]  # not in the KB: no image, text from the URL
    assert absent.image is None and absent.text == "Not In The KB"
    assert pools[1].image == downloads.root / "inat" / "val" / "03111_Plantae" / "img1001.jpg"
    assert pools[1].candidates[0].positive  # the oak
    assert not pools[2].has_positive  # kept for evaluation
    assert summary.queries_read == 5 and summary.queries_kept == 3
    assert summary.dropped == {"question_type=2_hop": 1, "query_image_missing": 1}
    assert summary.queries_read == summary.queries_kept + sum(summary.dropped.values())
    assert summary.without_positive == 1
    assert summary.entities_missing_from_kb == 1
    # ABSENT, the oak (no images) and Notre-Dame (image never downloaded) fall back to text
    assert summary.kb_images_missing == 3
    assert summary.query_images_missing == ["landmarks:zzz999"]
    report = summary.report()
    assert "read 5 queries, kept 3" in report and "dropped 1: question_type=2_hop" in report
    assert "1 query images e.g. landmarks:zzz999" in report


def test_training_drops_queries_without_a_positive_and_reports_it(downloads: Downloads) -> None:
    pools, summary = build(downloads, purpose="train")
    assert [p.query_id for p in pools] == ["E-VQA_0", "E-VQA_1"]
    assert summary.dropped["no_positive_in_top_k"] == 1
    assert summary.queries_read == summary.queries_kept + sum(summary.dropped.values())
    assert "without a positive in the top-20: 1 (dropped)" in summary.report()


def test_top_k_and_candidate_features(downloads: Downloads) -> None:
    pools, _ = build(downloads, top_k=1)
    assert [len(p.candidates) for p in pools] == [1, 1, 1]
    assert not pools[0].has_positive  # Eiffel is second in the ranking
    text_pools, _ = build(downloads, features="text", max_text_chars=40)
    eiffel = text_pools[0].candidates[1]
    assert eiffel.image is None
    assert eiffel.text == "Eiffel Tower. The Eiffel Tower is a"  # title + lead, cut at a word
    both, _ = build(downloads, features="both")
    eiffel = both[0].candidates[1]
    assert eiffel.image is not None and eiffel.text.startswith("Eiffel Tower. The Eiffel Tower is a wrought-iron")


def test_echosight_reranked_entries_and_omgm_results(downloads: Downloads) -> None:
    reranked = load_retrieval_results(downloads.echosight, use_reranked=True)
    assert [e.url for e in reranked.rankings["E-VQA_0"]] == [EIFFEL, LOUVRE]
    omgm = write_json(downloads.root / "omgm_result.json", {
        f"E-VQA_{i}": {"retrieved_entities": [{"url": ABSENT, "title": "Some Title"}, {"url": EIFFEL, "title": "Eiffel Tower"}],
                       "retrieval_similarities": [0.5, 0.4]}
        for i in range(4)
    })
    pools, summary = build(downloads, retrieval=omgm, features="text")
    assert pools[0].candidates[0].text == "Some Title"  # absent from the KB: OMGM's title
    assert [c.positive for c in pools[0].candidates] == [False, True]
    assert summary.entities_missing_from_kb == 3


def test_flat_layouts_and_url_normalisation(tmp_path: Path) -> None:
    make_image(tmp_path / "gld_flat" / "abc123.jpg")
    make_image(tmp_path / "inat_flat" / "1001.JPEG")
    images = QueryImageRoots(landmarks=tmp_path / "gld_flat", landmarks_layout="flat", inaturalist=tmp_path / "inat_flat")
    assert images.resolve("landmarks", "abc123", "x") == tmp_path / "gld_flat" / "abc123.jpg"
    assert images.resolve("inaturalist", "1001", "x") == tmp_path / "inat_flat" / "1001.JPEG"
    assert images.resolve("landmarks", "nothere", "x") is None
    with pytest.raises(DataError, match=r"x: a 'infoseek' image is needed but no infoseek image root was given"):
        images.resolve("infoseek", "oven_1", "x")
    with pytest.raises(DataError, match=r"x: field 'dataset_name': unknown image dataset 'coco'"):
        images.resolve("coco", "1", "x")
    assert entity_key("http://en.wikipedia.org/wiki/Caf%C3%A9 de Flore/") == entity_key(WIKI + "Café_de_Flore")


def infoseek_downloads(tmp_path: Path) -> tuple[Path, Path, QueryImageRoots]:
    make_image(tmp_path / "infoseek_val" / "oven_0001.JPEG")
    make_image(tmp_path / "elsewhere" / "o2.jpg")
    id2image = tmp_path / "id2image.jsonl"
    id2image.write_text("\n".join(json.dumps(r) for r in [
        {"image_id": "oven_0001", "image_path": "infoseek_val/oven_0001.JPEG"},
        {"image_id": "oven_0002", "image_path": "elsewhere/o2.jpg"},
    ]) + "\n")
    lines = [
        {"data_id": "infoseek_val_00000001", "image_id": "oven_0001", "question": "Who built this?",
         "answer": ["Gustave Eiffel"], "answer_eval": ["Gustave Eiffel"], "data_split": "val_unseen_entity",
         "entity_id": "Q243"},
        {"data_id": "infoseek_val_00000002", "image_id": "oven_0002", "question": "When did it open?",
         "answer": ["1793"], "data_split": "val_unseen_question", "entity_id": "Q19675"},
        {"data_id": "infoseek_val_00000003", "image_id": "oven_0003", "question": "Missing image?",
         "answer": ["x"], "data_split": "val_unseen_question", "entity_id": "Q1"},
        {"data_id": "infoseek_val_00000004", "image_id": "oven_0001", "question": "Unmapped entity?",
         "answer": ["x"], "data_split": "val_unseen_question", "entity_id": "Q999"},
    ]
    annotations = tmp_path / "infoseek_val_withkb.jsonl"
    annotations.write_text("\n".join(json.dumps(r) for r in lines) + "\n\n")
    return annotations, id2image, QueryImageRoots(infoseek=tmp_path, infoseek_id2image=load_id2image(id2image))


def test_infoseek_jsonl_with_entity_map_and_id2image(downloads: Downloads) -> None:
    annotations, _, images = infoseek_downloads(downloads.root)
    entity_map = write_json(downloads.root / "qid2url.json", {"Q243": EIFFEL, "Q19675": LOUVRE})
    results = load_retrieval_results(write_json(downloads.root / "echosight_infoseek.json", {
        f"infoseek_val_0000000{i}": {"retrieved_entries": [EIFFEL, LOUVRE], "retrieval_similarities": [0.2, 0.1]}
        for i in range(1, 5)
    }))
    pools, summary = build_infoseek_pools(
        annotations, results, downloads.kb, images=images, kb_images=downloads.kb_images,
        entity_urls=load_entity_map(entity_map), options=PoolOptions(purpose="eval"))
    assert [p.query_id for p in pools] == ["infoseek_val_00000001", "infoseek_val_00000002", "infoseek_val_00000004"]
    assert pools[0].image == downloads.root / "infoseek_val" / "oven_0001.JPEG"
    assert [c.positive for c in pools[0].candidates] == [True, False]
    assert [c.positive for c in pools[1].candidates] == [False, True]
    assert not pools[2].has_positive
    assert summary.gold_entities_unmapped == 1 and summary.dropped == {"query_image_missing": 1}
    assert "gold entity ids with no URL in the entity map: 1" in summary.report()


def test_infoseek_flat_images_and_entity_ids_in_the_ranking(tmp_path: Path) -> None:
    annotations, _, _ = infoseek_downloads(tmp_path)
    kb = write_json(tmp_path / "kb.json", {})
    results = load_retrieval_results(write_json(tmp_path / "r.json", {
        "infoseek_val_00000001": {"retrieved_entries": ["Q5", "Q243"]}}))
    images = QueryImageRoots(infoseek=tmp_path / "infoseek_val")  # <root>/<image_id>.JPEG
    pools, summary = build_infoseek_pools(annotations, results, kb, images=images, options=PoolOptions(features="text"))
    assert [p.query_id for p in pools] == ["infoseek_val_00000001"]
    assert [c.positive for c in pools[0].candidates] == [False, True]
    assert summary.dropped == {"query_image_missing": 2, "no_retrieval_result": 1}


def test_malformed_annotations_name_file_line_and_field(downloads: Downloads, tmp_path: Path) -> None:
    results = load_retrieval_results(downloads.echosight)

    def run(path: Path) -> None:
        build_evqa_pools(path, results, downloads.kb, images=downloads.images, kb_images=downloads.kb_images)

    no_column = write_csv(tmp_path / "no_col.csv", [{"question": "q"}], header=["question", "answer"])
    with pytest.raises(DataError, match=r"no_col\.csv:1: missing column\(s\) dataset_image_ids, dataset_name"):
        run(no_column)
    rows = [
        evqa_row("A?", "abc123", "landmarks", "templated", EIFFEL, evidence="two\nlines"),
        evqa_row("B?", "", "landmarks", "templated", EIFFEL),
    ]
    with pytest.raises(DataError, match=r"empty_ids\.csv:4: field 'dataset_image_ids' is empty"):
        run(write_csv(tmp_path / "empty_ids.csv", rows))  # line 4: the first row spans lines 2-3
    rows = [evqa_row("A?", "abc123", "satellite", "templated", EIFFEL)]
    with pytest.raises(DataError, match=r"bad_ds\.csv:2: field 'dataset_name': unknown image dataset 'satellite'"):
        run(write_csv(tmp_path / "bad_ds.csv", rows))
    bad_line = tmp_path / "bad.jsonl"
    bad_line.write_text(json.dumps({"data_id": "d1", "image_id": "i", "question": "q", "entity_id": "Q1"}) + "\n"
                        + json.dumps({"data_id": "d2", "image_id": "i", "question": "q"}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:2: field 'entity_id' must be a non-empty string, got missing "
                                        r"\(the gold entity is in the \*_withkb\.jsonl files\)"):
        build_infoseek_pools(bad_line, results, downloads.kb, images=QueryImageRoots(infoseek=tmp_path),
                             options=PoolOptions(features="text"))


def test_malformed_retrieval_and_kb_name_file_entry_and_field(tmp_path: Path) -> None:
    bad = write_json(tmp_path / "echo.json", {"E-VQA_0": {"retrieved_entries": [EIFFEL]},
                                              "E-VQA_1": {"retrieved_entries": "not a list"}})
    with pytest.raises(DataError, match=r"echo\.json: entry 'E-VQA_1': field 'retrieved_entries' must be a list"):
        load_retrieval_results(bad, "echosight")
    with pytest.raises(DataError, match=r"echo\.json: entry 'E-VQA_0': missing field 'reranked_entries'"):
        load_retrieval_results(bad, use_reranked=True)
    with pytest.raises(DataError, match=r"o\.json: use_reranked needs EchoSight results"):
        load_retrieval_results(write_json(tmp_path / "o.json", {"q": {"retrieved_entities": []}}), use_reranked=True)
    bad_omgm = write_json(tmp_path / "omgm.json", {"q": {"retrieved_entities": [{"title": "no url"}]}})
    with pytest.raises(DataError, match=r"omgm\.json: entry 'q': field 'retrieved_entities\[0\]\.url'"):
        load_retrieval_results(bad_omgm)
    (tmp_path / "broken.json").write_text('{"q": {"retrieved_entries": [}\n')
    with pytest.raises(DataError, match=r"broken\.json:1: invalid JSON"):
        load_retrieval_results(tmp_path / "broken.json")
    kb = write_json(tmp_path / "kb.json", {EIFFEL: {"title": 7}})
    with pytest.raises(DataError, match=rf"kb\.json: entry '{EIFFEL}': field 'title' must be a string"):
        load_knowledge_base(kb)


def test_results_for_another_split_are_caught(downloads: Downloads) -> None:
    other = write_json(downloads.root / "other.json", {"infoseek_val_1": {"retrieved_entries": [EIFFEL]}})
    with pytest.raises(DataError, match=r"none of the 3 query ids \(e\.g\. 'E-VQA_0'\) has a retrieval result"):
        build(downloads, retrieval=other)


def test_knowledge_base_is_streamed_in_small_chunks(tmp_path: Path) -> None:
    data = {f"{WIKI}Entry_{i}": kb_entry(f"{WIKI}Entry_{i}", f"Entry {i} ü", "x" * (i * 13), [f"{IMG}{i}.jpg"]) for i in range(30)}
    data[f"{WIKI}Numbers"] = {"title": "n", "values": [1.5, -2e3, None, True, 12345678901234567890]}
    path = write_json(tmp_path / "kb.json", data)
    assert dict(iter_json_object(path, chunk_chars=7)) == data
    kept = load_knowledge_base(path, keep={entity_key(f"{WIKI}Entry_3")})
    assert list(kept) == [f"{WIKI}Entry_3"] and kept[f"{WIKI}Entry_3"].lead == "x" * 39
    (tmp_path / "cut.json").write_text(json.dumps(data)[:500])
    with pytest.raises(DataError, match=r"cut\.json: invalid JSON near character"):
        list(iter_json_object(tmp_path / "cut.json", chunk_chars=64))
    (tmp_path / "empty.json").write_text(" { } ")
    assert list(iter_json_object(tmp_path / "empty.json")) == []


def test_kb_image_maps_json_and_omgm_csv(tmp_path: Path) -> None:
    make_image(tmp_path / "wiki_img" / "full" / "wiki_image_split" / "wiki_entity_image_1" / "0001.jpg")
    make_image(tmp_path / "wiki_img" / "by_url" / "louvre.jpg")
    (tmp_path / "wiki_img" / "broken.jpg").write_text("not an image")
    omgm_csv = tmp_path / "wiki_image_url_part_1_processed.csv"
    write_csv(omgm_csv, [
        {"title": "Eiffel Tower", "image_URL": IMG + "x.jpg", "img_path": "broken.jpg", "caption": ""},
        {"title": "Eiffel Tower", "image_URL": IMG + "y.jpg",
         "img_path": "full/wiki_image_split/wiki_entity_image_1/0001.jpg", "caption": "The tower"},
    ], header=["title", "image_URL", "img_path", "caption"])
    json_map = write_json(tmp_path / "kb_images.json", {IMG + "3/3c/Louvre_Pyramid.jpg": "by_url/louvre.jpg"})
    mapping = load_kb_image_map(omgm_csv)
    assert mapping["Eiffel Tower"] == ["broken.jpg", "full/wiki_image_split/wiki_entity_image_1/0001.jpg"]
    mapping.update(load_kb_image_map(json_map))
    images = KbImages(root=tmp_path / "wiki_img", mapping=mapping)
    eiffel = images.first_image(EIFFEL, None, "Eiffel Tower")  # by title; the unreadable file is skipped
    assert eiffel == tmp_path / "wiki_img" / "full" / "wiki_image_split" / "wiki_entity_image_1" / "0001.jpg"
    louvre_entry = load_knowledge_base(write_json(tmp_path / "kb.json", {
        LOUVRE: kb_entry(LOUVRE, "Louvre", "museum", [IMG + "3/3c/Louvre_Pyramid.jpg"])}))[entity_key(LOUVRE)]
    assert images.first_image(LOUVRE, louvre_entry, "Louvre") == tmp_path / "wiki_img" / "by_url" / "louvre.jpg"
    assert images.first_image(WIKI + "Other", None, "Unknown") is None


def test_entity_map_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "wiki6m.jsonl"
    path.write_text(json.dumps({"wikidata_id": "Q243", "wikipedia_url": EIFFEL}) + "\n"
                    + json.dumps({"wikidata_id": "Q2"}) + "\n")
    with pytest.raises(DataError, match=r"wiki6m\.jsonl:2: missing field: one of wikipedia_url, url"):
        load_entity_map(path)


def test_recipe_writes_a_file_that_load_query_pools_reads(downloads: Downloads, capsys, load_recipe) -> None:
    recipe = load_recipe("prepare_data")
    d = downloads
    out = d.root / "data" / "evqa" / "eval.jsonl"
    common = [
        "--annotations", str(d.annotations), "--retrieval", str(d.echosight), "--kb", str(d.kb),
        "--landmarks-root", str(d.root / "gldv2"), "--inaturalist-root", str(d.root / "inat"),
        "--inat-id2name", str(d.root / "val_id2name.json"), "--kb-image-root", str(d.root / "kb_images"),
        "--features", "both", "--root", str(d.root),
    ]
    assert recipe.main(recipe.parse_args(["evqa", *common, "--purpose", "eval", "--out", str(out)])) == 0
    printed = capsys.readouterr().out
    assert "read 5 queries, kept 3" in printed and "dropped 1: question_type=2_hop" in printed
    assert f"wrote 3 query pools to {out}" in printed
    dataset = load_query_pools(out, root=d.root)
    assert [p.query_id for p in dataset] == ["E-VQA_0", "E-VQA_1", "E-VQA_3"]
    assert dataset[0].candidates[1].positive and dataset[0].candidates[1].image.name == "Tour_Eiffel_2.jpg"
    assert not json.loads(out.read_text().splitlines()[0])["image"].startswith("/")  # relative to --root

    train = d.root / "data" / "evqa" / "train.jsonl"
    assert recipe.main(recipe.parse_args(["evqa", *common, "--purpose", "train", "--out", str(train)])) == 0
    assert load_query_pools(train, root=d.root, purpose="train").dropped_without_positive == 0
    assert len(load_query_pools(train, root=d.root)) == 2


def test_recipe_reports_errors_and_checks_options(downloads: Downloads, capsys, monkeypatch, load_recipe) -> None:
    recipe = load_recipe("prepare_data")
    d = downloads
    args = ["evqa", "--annotations", str(d.root / "missing.csv"), "--retrieval", str(d.echosight), "--kb", str(d.kb),
            "--features", "text", "--purpose", "eval", "--out", str(d.root / "o.jsonl")]
    monkeypatch.setenv("COLUMNS", "200")  # tyro boxes its errors to the terminal width; keep them on one line
    assert recipe.main(recipe.parse_args(args)) == 2
    assert "missing.csv: annotation file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        recipe.main(recipe.parse_args([a for a in args if a != "text" and a != "--features"]))  # image features need KB images
    assert "--features image needs --kb-image-root" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        recipe.main(recipe.parse_args(["infoseek", "--help"]))
    assert exc.value.code == 0
    assert "--entity-map" in capsys.readouterr().out
