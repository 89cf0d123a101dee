"""recipes/build_index.py: the knowledge-base index SEARCH queries, built once and cached."""

from __future__ import annotations

from envs.data.kb_index import KbItem, write_kb_file


def test_builds_a_kb_file_once_then_reads_it_back(load_recipe, scene_pools, tmp_path, tiny_model_name, tiny_checkpoint, capsys):
    recipe = load_recipe("build_index")
    items = [KbItem(c.id, image=c.image, text=c.text) for c in scene_pools[0].candidates]
    kb_file = write_kb_file(items, tmp_path / "kb.jsonl")
    argv = ["file", "--kb-file", str(kb_file), "--cache-dir", str(tmp_path / "cache"), "--no-progress",
            "--scorer.model", tiny_model_name, "--scorer.pretrained", str(tiny_checkpoint)]
    assert recipe.main(argv) == 0
    first = capsys.readouterr().out
    assert "6 of 6 entities" in first and "features='image+text'" in first and "embedded 6" in first
    assert recipe.main(argv) == 0
    assert "embedded 0 in" in capsys.readouterr().out  # read back from the cache: no forward


def test_a_bad_kb_file_is_a_clear_error(load_recipe, tmp_path, capsys):
    recipe = load_recipe("build_index")
    (tmp_path / "kb.jsonl").write_text('{"id": "a"}\n', encoding="utf-8")
    assert recipe.main(["file", "--kb-file", str(tmp_path / "kb.jsonl"), "--cache-dir", "None"]) == 2
    assert "kb.jsonl:1: entity 'a' has neither 'image' nor 'text'" in capsys.readouterr().err
