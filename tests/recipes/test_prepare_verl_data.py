"""recipes/prepare_verl_data.py: query pools -> parquet rows that verl's RLHFDataset loads."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pandas as pd
import pytest
from omegaconf import OmegaConf

from agents.verl.agent_loop import query_pool
from agents.verl.settings import AGENT_NAME
from agents.qwen.prompts import to_verl_prompt
from agents.qwen.tiny import cached_tiny_qwen
from agents.verl.data import write_parquet
from envs.data.pools import DataError
from envs.settings import ImageSettings
from verl.utils import hf_processor, hf_tokenizer
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.utils.tokenizer import build_multimodal_processor_inputs

MAX_PIXELS = 64 * 28 * 28


@pytest.fixture(scope="module")
def recipe(load_recipe):
    return load_recipe("prepare_verl_data")


@pytest.fixture(scope="module")
def exported(recipe, scene_pool_files, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("verl-data")
    args = recipe.Args(train=scene_pool_files["train"], val=scene_pool_files["val"], out=out, max_steps=2, images=ImageSettings(max_pixels=MAX_PIXELS))
    return recipe.main(args)


@pytest.fixture(scope="module")
def qwen_processing(tmp_path_factory):
    """The tiny Qwen2.5-VL tokenizer and processor, loaded by verl's own helpers."""
    path = str(cached_tiny_qwen(tmp_path_factory.getbasetemp()))
    return hf_tokenizer(path), hf_processor(path)


def dataset_config(tmp_path, **overrides):
    return OmegaConf.create(
        {
            "cache_dir": str(tmp_path / "cache"),
            "prompt_key": "prompt",
            "image_key": "images",
            "max_prompt_length": 2048,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": None,  # filter in this process (no worker pool)
            **overrides,
        }
    )


def test_rows_point_back_to_their_pools(exported, scene_pool_files):
    train, val = pd.read_parquet(exported["train"]), pd.read_parquet(exported["val"])
    assert len(train) == 11 and len(val) == 6  # training drops the query whose pool has no positive
    row = val.iloc[-1]
    assert row["agent_name"] == AGENT_NAME and row["data_source"] == "region_rerank/val"
    assert json.loads(row["reward_model"]["ground_truth"]) == []  # no positive: kept for CondR@1
    info = row["extra_info"]
    pool = query_pool(info["pool_file"], info["query_id"])
    assert info["pool_file"] == os.path.abspath(scene_pool_files["val"])
    assert [m["content"] for m in row["prompt"]] == [m["content"] for m in to_verl_prompt(pool.question, max_steps=2)]
    assert row["images"][0]["image"] == str(pool.image) and row["images"][0]["max_pixels"] == MAX_PIXELS
    first = train.iloc[0]
    assert json.loads(first["reward_model"]["ground_truth"]) == [
        c.id for c in query_pool(first["extra_info"]["pool_file"], first["extra_info"]["query_id"]).candidates if c.positive
    ]


def test_rlhf_dataset_loads_rows_into_qwen_inputs(exported, qwen_processing, tmp_path):
    tokenizer, processor = qwen_processing
    dataset = RLHFDataset(str(exported["train"]), tokenizer, dataset_config(tmp_path), processor)
    assert len(dataset) == 11  # none filtered as overlong

    item = dataset[0]
    assert item["agent_name"] == AGENT_NAME and item["extra_info"]["query_id"]
    messages = item["raw_prompt"]
    image_item, text_item = messages[1]["content"]
    assert image_item["type"] == "image" and text_item["text"].startswith("Question:")

    # what the agent loop does with a row: chat template, qwen-vl-utils resize, processor
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images, _, _ = RLHFDataset._process_multi_modal_info(messages, image_patch_size=14, config=None)
    inputs = build_multimodal_processor_inputs(processor, text=[text], images=images)
    (grid,) = inputs["image_grid_thw"].tolist()
    image_tokens = grid[1] * grid[2] // 4
    assert images[0].width * images[0].height <= MAX_PIXELS  # the row's pixel limit reached the resize
    assert inputs["pixel_values"].shape[0] == grid[1] * grid[2]
    assert inputs["input_ids"][0].tolist().count(tokenizer.convert_tokens_to_ids("<|image_pad|>")) == image_tokens


def test_overlong_prompts_are_filtered_with_their_image_tokens(exported, qwen_processing, tmp_path):
    tokenizer, processor = qwen_processing
    dataset = RLHFDataset(str(exported["val"]), tokenizer, dataset_config(tmp_path, max_prompt_length=64), processor)
    assert len(dataset) == 0


def test_bad_input_is_named(recipe, tmp_path):
    with pytest.raises(DataError, match="missing.jsonl"):
        recipe.main(recipe.Args(train=tmp_path / "missing.jsonl", val=tmp_path / "missing.jsonl", out=tmp_path))
    with pytest.raises(ValueError, match="empty.parquet: no rows"):
        write_parquet([], tmp_path / "empty.parquet")


@pytest.mark.slow
def test_embedded_benchmark_exports_its_own_pool_files(recipe, tmp_path):
    written = recipe.main(recipe.Args(out=tmp_path, max_queries=4))
    for split in ("train", "val"):
        rows = pd.read_parquet(written[split])
        assert len(rows) == 4 and rows["data_source"].iloc[0] == f"region_rerank/synthetic-{split}"
        info = rows["extra_info"].iloc[0]
        assert info["pool_file"] == os.path.abspath(tmp_path / f"{split}_pools.jsonl")
        assert query_pool(info["pool_file"], info["query_id"]).question == info["question"]


@pytest.mark.parametrize("how", ["model_path", "family"])
def test_prompts_are_worded_for_the_policys_family(recipe, scene_pool_files, tmp_path_factory, how):
    """A Qwen3-VL policy's rows ask for 0-1000 boxes: by its checkpoint, or by --images.family."""
    out = tmp_path_factory.mktemp(f"verl-data-{how}")
    qwen3 = str(cached_tiny_qwen(tmp_path_factory.getbasetemp(), family="qwen3_vl"))
    images = ImageSettings(max_pixels=MAX_PIXELS, family="qwen3_vl" if how == "family" else None)
    args = recipe.Args(
        train=scene_pool_files["train"], val=scene_pool_files["val"], out=out, images=images,
        model_path=qwen3 if how == "model_path" else None,
    )
    rows = pd.read_parquet(recipe.main(args)["val"])
    question = rows["extra_info"].iloc[0]["question"]
    assert [m["content"] for m in rows["prompt"].iloc[0]] == [m["content"] for m in to_verl_prompt(question, family="qwen3_vl")]
    assert "relative coordinates from 0 to 1000" in rows["prompt"].iloc[0][0]["content"]


def test_an_unknown_family_is_refused_before_writing(recipe, scene_pool_files, tmp_path):
    args = recipe.Args(train=scene_pool_files["train"], val=scene_pool_files["val"], out=tmp_path / "out", images=ImageSettings(family="llava"))
    with pytest.raises(ValueError, match="unknown model family 'llava'; supported: qwen2_5_vl"):
        recipe.main(args)
    assert not (tmp_path / "out").exists()
