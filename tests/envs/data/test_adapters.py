"""Adapters from E-VQA / InfoSeek downloads to query pools (envs/adapters, recipes/prepare_data.py).

Every fixture file is written in the public format it stands for, with the upstream
file it imitates named beside it: E-VQA's CSV and knowledge-base JSON
(google-research encyclopedic_vqa/README.md), EchoSight's result JSON
(test/test_reranker.py --save_result) and E_VQA_Hard_Neg.json (dataset/dataset.py),
OMGM's result JSON and wiki-image CSV, InfoSeek's question and withkb JSONL files,
Wiki6M's title file and OVEN's image layout (see the InfoSeek section).
"""

from __future__ import annotations

import csv
import gzip
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from envs.data.adapters import (
    KbImages,
    PoolOptions,
    QueryImageRoots,
    build_evqa_pools,
    build_infoseek_pools,
    entity_key,
    iter_json_object,
    load_id2image,
    load_inat_id2name,
    load_kb_image_map,
    load_knowledge_base,
    load_retrieval_results,
    load_wiki6m_titles,
    normalize_title,
)
from envs.data.pools import DataError, load_query_pools, write_query_pools

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
    both, _ = build(downloads, features="image+text")  # also spelled "both"
    assert both == build(downloads, features="both")[0]
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


# ---------------------------------------------------------------- InfoSeek, as published
#
# Question file: the fields of the example in open-vision-language/infoseek README.md
# ("InfoSeek Annotation"): data_id, image_id, question, answer, answer_eval, data_split.
# KB mapping (infoseek_{split}_withkb.jsonl): data_id, entity_id, entity_text, read as
# data_id -> entity_id by TIGER-AI-Lab/UniIR src/data/preprocessing/infoseek_data_preprocessor.py
# (load_infoseek_withkb_file_as_dict); entity_text is the entity's Wikipedia title, as
# open-vision-language/oven README.md describes it.
# Wiki6M_ver_1_0_title_only.jsonl: {"wikidata_id", "wikipedia_title"} per line, as read by
# edchengg/oven_eval run_bm25_index.py forks and UniIR's load_oven_wiki6m_file_as_dict.
# Images: edchengg/oven_eval image_downloads/merge_oven_images.py writes
# oven_images/{oven_id.split('_')[-1][:2]}/{oven_id}{ext}, keeping the source extension.
# KB: EchoSight's infoseek_100k_wiki.json is in E-VQA's KB format (EchoSight README.md).

Q_ROWS = [
    ("infoseek_val_00000001", "oven_01963180", "Who designed this tower?", "Q243"),
    ("infoseek_val_00000002", "oven_02000001", "When did this museum open?", "Q19675"),
    ("infoseek_val_00000003", "oven_03000002", "Image never downloaded?", "Q90"),
    ("infoseek_val_00000004", "oven_01963180", "What is this arch?", "Q64436"),
    ("infoseek_val_00000005", "oven_01963180", "No withkb line?", None),
    ("infoseek_val_00000006", "oven_02000001", "No title anywhere?", "Q7"),
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@dataclass
class InfoSeek:
    root: Path
    questions: Path
    withkb: Path
    wiki6m: Path
    retrieval: Path
    images: QueryImageRoots


@pytest.fixture
def infoseek(downloads: Downloads) -> InfoSeek:
    """InfoSeek val as published: question file + withkb file, Wiki6M titles, OVEN images, EchoSight-format results."""
    root = downloads.root
    make_image(root / "oven_images" / "01" / "oven_01963180.jpg")
    make_image(root / "oven_images" / "02" / "oven_02000001.JPEG")  # merge_oven_images.py keeps the extension
    questions = [{"data_id": d, "image_id": i, "question": q, "answer": ["x"], "answer_eval": ["x"],
                  "data_split": "val_unseen_entity"} for d, i, q, _ in Q_ROWS]
    questions.insert(2, dict(questions[0], question="a repeated data_id"))  # UniIR de-duplicates these
    withkb = [
        {"data_id": "infoseek_val_00000001", "entity_id": "Q243", "entity_text": "Eiffel Tower"},
        {"data_id": "infoseek_val_00000001", "entity_id": "Q243", "entity_text": "Eiffel Tower"},
        {"data_id": "infoseek_val_00000002", "entity_id": "Q19675", "entity_text": "louvre"},  # not in Wiki6M
        {"data_id": "infoseek_val_00000003", "entity_id": "Q90", "entity_text": "Paris"},
        {"data_id": "infoseek_val_00000004", "entity_id": "Q64436", "entity_text": "Arc de Triomphe"},
        {"data_id": "infoseek_val_00000006", "entity_id": "Q7", "entity_text": ""},
        {"data_id": "infoseek_val_00000099", "entity_id": "Q1", "entity_text": "Universe"},  # no question
    ]
    wiki6m = [{"wikidata_id": "Q243", "wikipedia_title": "Eiffel Tower"},
              {"wikidata_id": "Q64436", "wikipedia_title": "Arc de Triomphe"},  # not in the KB
              {"wikidata_id": "Q90", "wikipedia_title": "Paris"}]
    ranking = {"retrieved_entries": [LOUVRE, EIFFEL], "retrieval_similarities": [0.4, 0.3]}
    retrieval = write_json(root / "infoseek_val_retrieval.json", {d: ranking for d, *_ in Q_ROWS})
    return InfoSeek(root, write_jsonl(root / "infoseek_val.jsonl", questions),
                    write_jsonl(root / "infoseek_val_withkb.jsonl", withkb),
                    write_jsonl(root / "Wiki6M_ver_1_0_title_only.jsonl", wiki6m), retrieval,
                    QueryImageRoots(infoseek=root / "oven_images"))


def test_infoseek_question_and_withkb_files_joined_on_data_id(infoseek: InfoSeek, downloads: Downloads) -> None:
    pools, summary = build_infoseek_pools(
        infoseek.questions, infoseek.withkb, load_retrieval_results(infoseek.retrieval), downloads.kb,
        images=infoseek.images, kb_images=downloads.kb_images, wiki6m=infoseek.wiki6m,
        options=PoolOptions(purpose="eval"))
    assert [p.query_id for p in pools] == ["infoseek_val_00000001", "infoseek_val_00000002",
                                           "infoseek_val_00000004", "infoseek_val_00000006"]
    assert pools[0].question == "Who designed this tower?"  # the first of the repeated data_id
    assert pools[0].image == infoseek.root / "oven_images" / "01" / "oven_01963180.jpg"  # OVEN layout, no mapping
    assert pools[1].image == infoseek.root / "oven_images" / "02" / "oven_02000001.JPEG"
    assert [c.positive for c in pools[0].candidates] == [False, True]  # Q243 -> Wiki6M "Eiffel Tower" -> KB
    assert [c.positive for c in pools[1].candidates] == [True, False]  # entity_text "louvre" -> "Louvre"
    assert not pools[2].has_positive and not pools[3].has_positive
    assert summary.queries_read == 7 and summary.queries_read == summary.queries_kept + sum(summary.dropped.values())
    assert summary.dropped == {"duplicate_data_id": 1, "query_image_missing": 1, "no_entity_in_withkb": 1}
    assert summary.gold_unmapped == {"title_not_in_kb": 1, "entity_id_without_title": 1}
    assert summary.notes == {"withkb_duplicate_data_id": 1, "withkb_without_question": 1,
                             "entity_id_not_in_wiki6m": 2}
    report = summary.report()
    assert "written queries whose gold entity maps to no KB entry: 2" in report
    assert "note 1: withkb_without_question" in report


def test_infoseek_titles_from_entity_text_without_wiki6m(infoseek: InfoSeek, downloads: Downloads) -> None:
    pools, summary = build_infoseek_pools(
        infoseek.questions, infoseek.withkb, load_retrieval_results(infoseek.retrieval), downloads.kb,
        images=infoseek.images, options=PoolOptions(purpose="train", features="text"))
    assert [p.query_id for p in pools] == ["infoseek_val_00000001", "infoseek_val_00000002"]
    assert summary.dropped["no_positive_in_top_k"] == 2 and summary.gold_unmapped == {}
    assert "entity_id_not_in_wiki6m" not in summary.notes


def test_infoseek_image_layouts_and_titles(tmp_path: Path) -> None:
    make_image(tmp_path / "oven_images" / "12" / "oven_12345678.png")
    make_image(tmp_path / "flat" / "oven_00000007.JPEG")  # EchoSight's flat InfoSeek folders
    nested, flat = QueryImageRoots(infoseek=tmp_path / "oven_images"), QueryImageRoots(infoseek=tmp_path / "flat")
    assert nested.resolve("infoseek", "oven_12345678", "x") == tmp_path / "oven_images" / "12" / "oven_12345678.png"
    assert flat.resolve("infoseek", "oven_00000007", "x") == tmp_path / "flat" / "oven_00000007.JPEG"
    assert nested.resolve("infoseek", "oven_12999999", "x") is None
    id2image = write_jsonl(tmp_path / "id2image.jsonl", [{"image_id": "img_a", "image_path": "flat/oven_00000007.JPEG"}])
    mapped = QueryImageRoots(infoseek=tmp_path, infoseek_id2image=load_id2image(id2image))
    assert mapped.resolve("infoseek", "img_a", "x") == tmp_path / "flat" / "oven_00000007.JPEG"
    assert normalize_title("café_de   Flore ") == "Café de Flore" == normalize_title("Café de Flore")
    assert normalize_title("iPhone") == "IPhone"  # MediaWiki's first-letter rule, as in its URLs


def test_infoseek_ids_in_the_ranking_and_gzipped_wiki6m(infoseek: InfoSeek, downloads: Downloads) -> None:
    gz = infoseek.root / "Wiki6M_ver_1_0.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as handle:
        handle.write(json.dumps({"wikidata_id": "Q243", "wikipedia_title": "Eiffel Tower", "wikipedia_content": "..."}) + "\n")
    assert load_wiki6m_titles(gz) == {"Q243": "Eiffel Tower"}
    results = load_retrieval_results(write_json(infoseek.root / "ids.json", {
        "infoseek_val_00000004": {"retrieved_entries": ["Q5", "Q64436"]}}))  # a ranking of Wikidata ids
    pools, summary = build_infoseek_pools(infoseek.questions, infoseek.withkb, results, downloads.kb,
                                          images=infoseek.images, options=PoolOptions(features="text"))
    assert [c.positive for c in pools[0].candidates] == [False, True]
    assert summary.dropped["no_retrieval_result"] == 3


def test_malformed_infoseek_files_name_file_line_and_field(infoseek: InfoSeek, downloads: Downloads) -> None:
    results = load_retrieval_results(infoseek.retrieval)

    def run(questions: Path = infoseek.questions, withkb: Path = infoseek.withkb, wiki6m: Path | None = None) -> None:
        build_infoseek_pools(questions, withkb, results, downloads.kb, images=infoseek.images, wiki6m=wiki6m,
                             options=PoolOptions(features="text"))

    bad_kb = write_jsonl(infoseek.root / "bad_withkb.jsonl", [{"data_id": "d1", "entity_id": "Q1"}, {"data_id": "d2"}])
    with pytest.raises(DataError, match=r"bad_withkb\.jsonl:2: field 'entity_id' must be a non-empty string, got "
                                        r"missing \(a withkb line holds data_id, entity_id, entity_text\)"):
        run(withkb=bad_kb)
    # the withkb file given as the question file (what the old README's one-file command did): a hint
    with pytest.raises(DataError, match=r"infoseek_val_withkb\.jsonl:1: field 'question' must be a non-empty string, "
                                        r"got missing \(this looks like a withkb line: --annotations takes"):
        run(questions=infoseek.withkb)
    bad_q = write_jsonl(infoseek.root / "bad_q.jsonl", [{"data_id": "d1", "image_id": 7, "question": "q"}])
    with pytest.raises(DataError, match=r"bad_q\.jsonl:1: field 'image_id' must be a non-empty string, got int 7"):
        run(questions=bad_q)
    bad_wiki = write_jsonl(infoseek.root / "wiki.jsonl", [{"wikidata_id": "Q1", "title": "wrong field"}])
    with pytest.raises(DataError, match=r"wiki\.jsonl:1: field 'wikipedia_title' must be a non-empty string, got missing"):
        run(wiki6m=bad_wiki)
    with pytest.raises(DataError, match=r"nothere\.jsonl: Wiki6M title file not found"):
        run(wiki6m=infoseek.root / "nothere.jsonl")


# ---------------------------------------------------------------- EchoSight's E_VQA_Hard_Neg.json
#
# Go2Heart/EchoSight dataset/dataset.py reads it as
# negative_db[question_image_path.split("/")[-1].split(".")[0]] -> [{"entry": url, "similarity": s}, ...]
# where the path is the first of dataset_image_ids through dataset_utils.get_image (GLDv2
# nested by id, iNaturalist through train_id2name.json).


def test_echosight_hard_negatives_are_keyed_by_query_image(downloads: Downloads) -> None:
    hard_neg = write_json(downloads.root / "E_VQA_Hard_Neg.json", {
        "abc123": [{"entry": LOUVRE, "similarity": 0.5}, {"entry": EIFFEL, "similarity": 0.7},
                   {"entry": EIFFEL, "similarity": 0.6}],
        "img1001": [{"entry": NOTRE, "similarity": 0.2}, {"entry": OAK, "similarity": 0.2}],  # tie: file order
        "def456": [{"entry": LOUVRE, "similarity": 0.9}],
    })
    results = load_retrieval_results(hard_neg)
    assert results.keyed_by == "image"
    assert [e.url for e in results.rankings["abc123"]] == [EIFFEL, EIFFEL, LOUVRE]
    pools, summary = build(downloads, retrieval=hard_neg, purpose="train")
    assert [p.query_id for p in pools] == ["E-VQA_0", "E-VQA_1"]
    assert [c.id for c in pools[0].candidates] == [EIFFEL, LOUVRE] and pools[0].candidates[0].positive
    assert [c.id for c in pools[1].candidates] == [NOTRE, OAK] and pools[1].candidates[1].positive
    assert summary.dropped == {"question_type=2_hop": 1, "query_image_missing": 1, "no_positive_in_top_k": 1}
    bad = write_json(downloads.root / "bad_neg.json", {"abc123": [{"entry": EIFFEL, "similarity": "high"}]})
    with pytest.raises(DataError, match=r"bad_neg\.json: entry 'abc123': field '\[0\]\.similarity' must be a finite number"):
        load_retrieval_results(bad)
    other = write_json(downloads.root / "other_neg.json", {"zzz": [{"entry": EIFFEL, "similarity": 1.0}]})
    with pytest.raises(DataError, match=r"none of the 3 query images \(e\.g\. 'abc123'\) has a retrieval result"):
        build(downloads, retrieval=other)


def test_summary_counts_agree_with_the_written_file(downloads: Downloads) -> None:
    # The query without a positive (E-VQA_3) is ranked entities with no image and no KB entry:
    # training drops it, and its candidates must not be counted.
    retrieval = write_json(downloads.root / "r.json", {
        "E-VQA_0": {"retrieved_entries": [LOUVRE, EIFFEL]},
        "E-VQA_1": {"retrieved_entries": [OAK, NOTRE]},
        "E-VQA_3": {"retrieved_entries": [ABSENT, OAK, NOTRE]},
    })
    kb_keys = set(load_knowledge_base(downloads.kb))
    missing = {}
    for purpose in ("train", "eval"):
        pools, summary = build(downloads, retrieval=retrieval, purpose=purpose)
        out = write_query_pools(pools, downloads.root / f"{purpose}.jsonl", downloads.root)
        written = load_query_pools(out, root=downloads.root)
        candidates = [c for p in written for c in p.candidates]
        assert summary.queries_kept == len(written)
        assert summary.kb_images_missing == sum(c.image is None for c in candidates)
        assert summary.entities_missing_from_kb == sum(entity_key(c.id) not in kb_keys for c in candidates)
        assert summary.without_positive == sum(not p.has_positive for p in written)
        assert summary.queries_read == summary.queries_kept + sum(summary.dropped.values())
        missing[purpose] = (summary.kb_images_missing, summary.entities_missing_from_kb)
    # OAK and NOTRE of E-VQA_1 have no local image; E-VQA_3 (ABSENT, OAK, NOTRE) only counts when written
    assert missing == {"train": (2, 0), "eval": (5, 1)}


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
    assert "--withkb" in capsys.readouterr().out


def test_recipe_infoseek_from_the_published_files(infoseek: InfoSeek, downloads: Downloads, capsys, load_recipe) -> None:
    recipe = load_recipe("prepare_data")
    out = infoseek.root / "data" / "infoseek" / "eval.jsonl"
    args = ["infoseek", "--annotations", str(infoseek.questions), "--withkb", str(infoseek.withkb),
            "--wiki6m", str(infoseek.wiki6m), "--retrieval", str(infoseek.retrieval), "--kb", str(downloads.kb),
            "--infoseek-root", str(infoseek.root / "oven_images"), "--kb-image-root", str(infoseek.root / "kb_images"),
            "--purpose", "eval", "--out", str(out)]
    assert recipe.main(recipe.parse_args(args)) == 0
    printed = capsys.readouterr().out
    assert "read 7 queries, kept 4" in printed and "dropped 1: duplicate_data_id" in printed
    assert f"wrote 4 query pools to {out}" in printed
    assert [p.query_id for p in load_query_pools(out)][:2] == ["infoseek_val_00000001", "infoseek_val_00000002"]
