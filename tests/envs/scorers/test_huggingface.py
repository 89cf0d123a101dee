"""envs/scorers/huggingface.py: transformers CLIP and SigLIP folders as scorers, built offline at toy sizes."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers RegionRerank-v0)
from envs.data.pools import load_image
from envs.factory import make_scorer, scorer_backend
from envs.scorers.openclip import Scorer, check_scorer, l2_normalize
from envs.settings import ScorerSettings

WORDS = "a an the red green blue car tree square wall park gray on in of odd id colour what is this".split()
TEXT = dict(vocab_size=len(WORDS) + 3, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, max_position_embeddings=16)
VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8)


def build_tokenizer():
    """A word-level tokenizer over WORDS (ids 0-2: pad, eos, unk), every text ending in eos."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=16)


def build_folder(folder: Path, family: str, seed: int = 0) -> Path:
    """A random tiny ``family`` ("clip" or "siglip") model, tokenizer and image processor saved to ``folder``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, SiglipConfig, SiglipImageProcessor, SiglipModel

    ids = dict(pad_token_id=0, eos_token_id=1, bos_token_id=1)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if family == "clip":
            model = CLIPModel(CLIPConfig(text_config={**TEXT, **ids}, vision_config=VISION, projection_dim=24))
            processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        else:
            model = SiglipModel(SiglipConfig(text_config={**TEXT, **ids}, vision_config=VISION))
            processor = SiglipImageProcessor(size={"height": 32, "width": 32})
    build_tokenizer().save_pretrained(folder)
    processor.save_pretrained(folder)
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["clip", "siglip"])
def folder(request, tmp_path_factory) -> Path:
    return build_folder(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param)


@pytest.fixture(scope="module")
def hf_scorer(folder):
    torch.set_num_threads(1)
    return make_scorer(str(folder))


def reference_features(folder: Path, images=None, texts=None) -> np.ndarray:
    """Embeddings computed straight from transformers (one forward, no padding), for comparison."""
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder).eval()
    with torch.inference_mode():
        if images is not None:
            pixels = AutoImageProcessor.from_pretrained(folder)(images=images, return_tensors="pt")["pixel_values"]
            out = model.get_image_features(pixel_values=pixels)
        else:
            tokens = AutoTokenizer.from_pretrained(folder)(texts, padding="max_length", max_length=16, return_tensors="pt")
            out = model.get_text_features(**{k: v for k, v in tokens.items() if k in ("input_ids", "attention_mask")})
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    return l2_normalize(out.numpy())


def test_a_folder_is_the_transformers_backend_and_keeps_the_protocol(folder, hf_scorer, tiny_pool):
    from envs.scorers.huggingface import TransformersScorer

    assert scorer_backend(str(folder)) == "transformers" and scorer_backend("ViT-B-32") == "open_clip"
    assert isinstance(hf_scorer, TransformersScorer) and isinstance(hf_scorer, Scorer)
    assert hf_scorer.name.startswith(f"hf:{folder.name}@")
    assert check_scorer(hf_scorer, tiny_pool) == hf_scorer.dim == (24 if "clip" in folder.name else 32)
    with pytest.raises(ValueError, match="holds its weights"):
        make_scorer(ScorerSettings(str(folder), pretrained="w.pt"))


def test_embeddings_match_transformers_computed_directly(folder, hf_scorer, tiny_views):
    np.testing.assert_allclose(hf_scorer.embed_images(tiny_views), reference_features(folder, images=tiny_views), atol=1e-5)
    texts = ["a red square on a gray wall", "the blue car", "what is this"]
    np.testing.assert_allclose(hf_scorer.embed_texts(texts), reference_features(folder, texts=texts), atol=1e-5)
    assert hf_scorer.embed_images(tiny_views).std() > 1e-3  # random weights still tell the views apart


def test_embeddings_are_batch_invariant(hf_scorer, tiny_views):
    together = hf_scorer.embed_images(tiny_views)
    alone = np.concatenate([hf_scorer.embed_images([view]) for view in tiny_views])
    assert np.abs(together - alone).max() <= 1e-6
    texts = ["a red square", "the blue car on a wall", "odd id"]
    assert np.abs(hf_scorer.embed_texts(texts) - np.concatenate([hf_scorer.embed_texts([t]) for t in texts])).max() <= 1e-6


def test_candidates_combine_features_and_are_cached_in_memory_and_on_disk(folder, tiny_pool, tmp_path):
    scorer = make_scorer(ScorerSettings(str(folder), cache_dir=str(tmp_path), options={"batch_size": 4}))
    vectors = scorer.candidate_embeddings(tiny_pool)
    c0 = tiny_pool.candidates[0]  # image + text: Region-R1's sum, re-normalized
    expected = l2_normalize(scorer.embed_images([load_image(c0.image)])[0] + scorer.embed_texts([c0.text])[0])
    np.testing.assert_allclose(vectors[0], expected, atol=1e-6)
    forwards = (scorer.stats.image_forwards, scorer.stats.text_forwards)
    np.testing.assert_array_equal(scorer.embed_candidates(tiny_pool.candidates), vectors)
    assert (scorer.stats.image_forwards, scorer.stats.text_forwards) == forwards  # memory cache
    reader = make_scorer(ScorerSettings(str(folder), cache_dir=str(tmp_path)))
    np.testing.assert_array_equal(reader.candidate_embeddings(tiny_pool), vectors)
    assert reader.stats.image_forwards == reader.stats.text_forwards == 0 and reader.stats.disk_hits == 8


def test_other_weights_get_another_name(folder, hf_scorer, tmp_path):
    family = "clip" if "clip" in folder.name else "siglip"
    other = make_scorer(str(build_folder(tmp_path / "other", family, seed=1)))
    assert other.name != hf_scorer.name


def test_gym_make_with_a_transformers_folder_passes_check_env(folder, scene_pool_files):
    env = gym.make("RegionRerank-v0", dataset=scene_pool_files["val"], scorer=ScorerSettings(str(folder)), obs_size=32)
    check_env(env.unwrapped)
    env.reset(seed=0)
    _, reward, terminated, _, info = env.step({"decision": 1, "box": np.array([0.1, 0.1, 0.6, 0.6], np.float32)})
    assert terminated and info["outcome"] == "region" and np.isfinite(reward)
    predicted = env.unwrapped.score_actions([{"decision": 1, "box": [0.1, 0.1, 0.6, 0.6]}])[0]
    assert predicted.kind == "region"
