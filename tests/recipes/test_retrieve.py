"""recipes/retrieve.py: our own top-K over the KB, read back by recipes/prepare_data.py.

The fixtures follow the published layouts (as in tests/envs/data/test_adapters.py): an E-VQA CSV
(google-research encyclopedic_vqa/README.md) with GLDv2's nested image tree, the E-VQA KB
JSON, an InfoSeek question file (open-vision-language/infoseek README.md) with OVEN's
oven_images/<2 digits>/<id>.<ext> layout (edchengg/oven_eval merge_oven_images.py). The
scorer is the embedded rr-tiny; a query image is a copy of its gold entity's KB image, so
the gold entity must come first.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from envs.data.pools import load_query_pools

WIKI = "https://en.wikipedia.org/wiki/"
COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220), (220, 220, 30), (200, 30, 200), (30, 200, 200)]
HEADER = ["question", "answer", "dataset_image_ids", "dataset_name", "dataset_category_id", "question_type",
          "wikipedia_url", "wikipedia_title", "evidence", "evidence_section_id", "evidence_section_title",
          "encyclopedic_vqa_split", "question_original", "wikipedia_url_used_in_train"]


def scene(path: Path, colour: tuple[int, int, int], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=(96, 128, 3), dtype=np.uint8)
    pixels[20:76, 30:100] = colour
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@dataclass
class Download:
    root: Path
    kb: Path
    csv: Path
    questions: Path
    entities: list[str]


@pytest.fixture
def download(tmp_path: Path) -> Download:
    root = tmp_path
    entities = [f"{WIKI}Entity_{i}" for i in range(len(COLOURS))]
    kb = {}
    for i, url in enumerate(entities):
        name = f"Entity_{i}.png"
        scene(root / "kb_images" / name, COLOURS[i], seed=i)
        kb[url] = {"title": f"Entity {i}", "url": url, "section_titles": [f"Entity {i}"],
                   "section_texts": [f"Entity {i} is a coloured thing."],
                   "image_urls": [f"https://upload.wikimedia.org/wikipedia/commons/a/ab/{name}"],
                   "image_reference_descriptions": [""], "image_section_indices": [0]}
    kb[f"{WIKI}No_picture"] = {"title": "No picture", "url": f"{WIKI}No_picture", "section_titles": ["No picture"],
                               "section_texts": ["Text only."], "image_urls": [],
                               "image_reference_descriptions": [], "image_section_indices": []}
    (root / "kb.json").write_text(json.dumps(kb))
    rows = []
    for n, (image_id, gold, qtype) in enumerate([("abc001", 2, "templated"), ("abd002", 0, "2_hop"),
                                                 ("abe003", 4, "automatic"), ("abf004", 1, "multi_answer")]):
        shutil.copy(root / "kb_images" / f"Entity_{gold}.png", _nested(root / "gldv2", image_id))
        row = dict.fromkeys(HEADER, "")
        row.update(question=f"What is {n}?", answer="a", dataset_image_ids=image_id, dataset_name="landmarks",
                   question_type=qtype, wikipedia_url=entities[gold] if qtype != "2_hop" else f"{entities[0]}|{entities[1]}")
        rows.append(row)
    rows.append(dict(rows[0], dataset_image_ids="zzz999"))  # image not downloaded
    with (root / "test.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)
    for image_id, gold in (("oven_01000001", 3), ("oven_42000002", 5)):
        target = root / "oven_images" / image_id.split("_")[-1][:2] / f"{image_id}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / "kb_images" / f"Entity_{gold}.png", target)
    questions = [{"data_id": f"infoseek_val_0000000{i}", "image_id": image_id, "question": "What is this?",
                  "answer": ["x"], "answer_eval": ["x"], "data_split": "val_unseen_question"}
                 for i, image_id in enumerate(["oven_01000001", "oven_42000002"])]
    (root / "infoseek_val.jsonl").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return Download(root, root / "kb.json", root / "test.csv", root / "infoseek_val.jsonl", entities)


def _nested(root: Path, image_id: str) -> Path:
    path = root / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def common(d: Download, out: Path, *extra: str) -> list[str]:
    return ["--kb", str(d.kb), "--kb-image-root", str(d.root / "kb_images"), "--cache-dir", str(d.root / "cache"),
            "--landmarks-root", str(d.root / "gldv2"), "--infoseek-root", str(d.root / "oven_images"),
            "--threads", "1", "--workers", "1", "--batch-size", "4", "--chunk-rows", "3", "--top-k", "5",
            "--no-progress", "--out", str(out), *extra]


def test_evqa_top_k_feeds_prepare_data_and_the_cache_is_reused(download: Download, load_recipe, capsys) -> None:
    retrieve, prepare = load_recipe("retrieve"), load_recipe("prepare_data")
    out = download.root / "retrieval" / "evqa_test.json"
    args = ["evqa", "--annotations", str(download.csv), *common(download, out)]
    assert retrieve.main(retrieve.parse_args(args)) == 0
    results = json.loads(out.read_text())
    # numbered as EchoSight numbers E-VQA: the 2_hop row is skipped; the missing image has no entry
    assert list(results) == ["E-VQA_0", "E-VQA_1", "E-VQA_2"]
    firsts = [results[q]["retrieved_entries"][0] for q in results]
    assert firsts == [download.entities[2], download.entities[4], download.entities[1]]
    for entry in results.values():
        sims = entry["retrieval_similarities"]
        assert len(entry["retrieved_entries"]) == 5 == len(sims) and sims == sorted(sims, reverse=True)
        assert f"{WIKI}No_picture" not in entry["retrieved_entries"]  # no image: not in an image index
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["kb_entries_read"] == 7 and meta["kb_indexed"] == 6 and meta["kb_left_out"] == {"no_image": 1}
    assert meta["kb_embedded"] == 7 and meta["kb_from_cache"] == 0
    assert meta["queries_read"] == 5 and meta["queries_written"] == 3
    assert meta["queries_dropped"] == {"question_type=2_hop": 1, "query_image_missing": 1}
    assert meta["scorer"].startswith("rr-tiny@")
    printed = capsys.readouterr().out
    assert "KB entities: 7, searchable 6" in printed and "left out 1: no_image" in printed

    # a second run embeds nothing it has embedded before, and writes the same file
    first = out.read_text()
    assert retrieve.main(retrieve.parse_args(args)) == 0
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert (meta["kb_embedded"], meta["kb_from_cache"], meta["query_images_embedded"]) == (0, 7, 0)
    assert out.read_text() == first

    pools_file = download.root / "data" / "eval.jsonl"
    prepare_args = ["evqa", "--annotations", str(download.csv), "--retrieval", str(out), "--kb", str(download.kb),
                    "--landmarks-root", str(download.root / "gldv2"), "--kb-image-root", str(download.root / "kb_images"),
                    "--purpose", "eval", "--out", str(pools_file)]
    assert prepare.main(prepare.parse_args(prepare_args)) == 0
    pools = load_query_pools(pools_file)
    assert [p.query_id for p in pools] == ["E-VQA_0", "E-VQA_1", "E-VQA_2"]
    assert all(p.candidates[0].positive and p.candidates[0].image.name.startswith("Entity_") for p in pools)


def test_infoseek_queries_keyed_by_data_id_with_text_features(download: Download, load_recipe) -> None:
    retrieve = load_recipe("retrieve")
    out = download.root / "infoseek_val.json"
    args = ["infoseek", "--annotations", str(download.questions), *common(download, out, "--features", "image+text")]
    args[args.index("--cache-dir") + 1] = "None"  # embeddings in memory only
    assert retrieve.main(retrieve.parse_args(args)) == 0
    results = json.loads(out.read_text())
    assert list(results) == ["infoseek_val_00000000", "infoseek_val_00000001"]  # images found in the OVEN layout
    assert [r["retrieved_entries"][0] for r in results.values()] == [download.entities[3], download.entities[5]]
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["kb_indexed"] == 7 and meta["kb_partial"] == {"text_only (no readable image)": 1}
    assert meta["index_folder"] is None and not (download.root / "cache").exists()


def test_bad_options_and_missing_faiss(download: Download, load_recipe, capsys, monkeypatch) -> None:
    retrieve = load_recipe("retrieve")
    out = download.root / "r.json"
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        retrieve.parse_args(["evqa", "--annotations", str(download.csv), "--scorer.pretrained", "eva.pt",
                             *common(download, out)])
    assert "pretrained= needs a model name" in capsys.readouterr().err
    monkeypatch.setitem(__import__("sys").modules, "faiss", None)  # as if faiss were not installed
    args = ["evqa", "--annotations", str(download.csv), *common(download, out, "--backend", "faiss")]
    assert retrieve.main(retrieve.parse_args(args)) == 2
    assert "pip install 'region-rerank[faiss]'" in capsys.readouterr().err
    missing = ["evqa", "--annotations", str(download.root / "nothere.csv"), *common(download, out)]
    assert retrieve.main(retrieve.parse_args(missing)) == 2
    assert "nothere.csv: annotation file not found" in capsys.readouterr().err
