"""A tiny, randomly initialised Qwen2.5-VL or Qwen3-VL built offline: for tests and CPU demos.

No model hub is reachable where this project is built, so the real models cannot be
downloaded. :func:`build_tiny_qwen` writes a folder that loads exactly like a real
checkpoint (``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration``
``.from_pretrained``, ``AutoModelForImageTextToText``, ``AutoProcessor.from_pretrained``,
verl's ``hf_tokenizer`` / ``hf_processor``): the same architecture at toy sizes (about
0.2 M parameters), a byte-level BPE tokenizer trained on the family's prompt with Qwen's
special tokens, the Qwen2-VL chat template, and the family's image processor (Qwen2.5-VL:
14 px patches, its real pixel limits; Qwen3-VL: 16 px patches, so 32 px image tokens,
and the project's default ``min_pixels``, see :func:`build_processor`). Every code path that touches
the model (processor, chat template, vision placeholders, M-RoPE, generation, the
text parser) therefore runs for real; only the weights are random, so the model writes
gibberish unless a caller scripts its output.

    python -m agents.tiny_qwen runs/tiny-qwen                # build a tiny Qwen2.5-VL
    python -m agents.tiny_qwen runs/tiny-qwen3 qwen3_vl      # build a tiny Qwen3-VL
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from agents.model_family import QWEN2_5_VL, QWEN3_VL, ModelFamily, get_family
from envs.boxes import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS

QWEN_SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
"""Qwen2.5-VL's special tokens that the chat template and the processor use."""

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The chat template Qwen2-VL and Qwen2.5-VL ship (one ``<|image_pad|>`` per image, which
the processor expands to the image's token count)."""

_TEXT_SIZES = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=8192,
)
# M-RoPE splits head_dim / 2 = 8 rotary frequencies over (time, height, width).
_MROPE_SECTION = [2, 3, 3]
_TOWER_SIZES = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, spatial_merge_size=2, temporal_patch_size=2)
_VISION_SIZES = dict(_TOWER_SIZES, patch_size=14, window_size=112, fullatt_block_indexes=[1])
_QWEN3_TEXT_SIZES = dict(_TEXT_SIZES, head_dim=16)
_QWEN3_VISION_SIZES = dict(
    _TOWER_SIZES,
    patch_size=16,
    num_position_embeddings=64,  # an 8 x 8 grid, interpolated to each image's
    deepstack_visual_indexes=[0],
)
QWEN3_MAX_PIXELS = 16384 * 32 * 32
"""Qwen3-VL's released ``longest_edge`` (16384 tokens of 32 x 32 px)."""


def _tokenizer_corpus(family: ModelFamily = QWEN2_5_VL) -> list[str]:
    """Text the BPE is trained on: the family's prompt, answers and box numbers, so
    questions and boxes tokenize compactly."""
    from agents.prompts import prompt_texts
    from envs.text_actions import FULL_MARKER

    texts = prompt_texts(family)
    numbers = ", ".join(str(n) for n in range(1000))
    return [texts.system_prompt, texts.crop_example, FULL_MARKER, numbers, "system user assistant <think></think>"] * 2


def build_tokenizer(vocab_size: int = 1024, family: str | ModelFamily = QWEN2_5_VL):
    """A ``Qwen2Tokenizer`` with a byte-level BPE trained on :func:`_tokenizer_corpus` of ``family``,
    Qwen's special tokens (ids 0-7; ``<|im_end|>`` is EOS, ``<|endoftext|>`` pad) and one
    added token for each of :func:`agents.prompts.fixed_prompt_texts` (the system prompt,
    the decision request, the crop answer's fixed prefix and suffix, ``NO_CROP_NEEDED``).

    With these, a prompt is ~100 tokens instead of ~630 and a crop answer ~15 instead of
    ~54: a policy of a few hundred thousand parameters can learn to write the answer
    format, and its forwards on a CPU cost what the image costs, not the prompt.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from agents.prompts import fixed_prompt_texts

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    family = get_family(family)
    bpe.train_from_iterator(_tokenizer_corpus(family), trainer)
    model = json.loads(bpe.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = Qwen2Tokenizer(
        vocab=model["vocab"],
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(QWEN_SPECIAL_TOKENS[1:])})
    # Plain (not special) tokens: decoding keeps them, so the parser reads the full answer.
    tokenizer.add_tokens([AddedToken(text, normalized=False, special=False) for text in fixed_prompt_texts(family)])
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def build_config(tokenizer, family: str | ModelFamily = QWEN2_5_VL):
    """A ``Qwen2_5_VLConfig`` or ``Qwen3VLConfig`` (by ``family``) at toy sizes whose special
    token ids are ``tokenizer``'s."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    family = get_family(family)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    rope = {"rope_type": "default", "rope_theta": 1_000_000.0, "mrope_section": _MROPE_SECTION}
    if family is QWEN3_VL:
        rope["mrope_interleaved"] = True  # as the released Qwen3-VL configs
    text = dict(
        _QWEN3_TEXT_SIZES if family is QWEN3_VL else _TEXT_SIZES,
        vocab_size=len(tokenizer),
        rope_parameters=rope,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(_QWEN3_VISION_SIZES if family is QWEN3_VL else _VISION_SIZES, out_hidden_size=_TEXT_SIZES["hidden_size"])
    cls = Qwen3VLConfig if family is QWEN3_VL else Qwen2_5_VLConfig
    return cls(
        text_config=text,
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def build_processor(
    tokenizer,
    min_pixels: int = QWEN_MIN_PIXELS,
    max_pixels: int | None = None,
    family: str | ModelFamily = QWEN2_5_VL,
):
    """The family's processor around ``tokenizer``.

    Qwen2.5-VL: its image processor (14 px patches merged 2 x 2) with the released pixel
    limits by default. Qwen3-VL: the image processor its checkpoints name
    (``Qwen2VLImageProcessor`` with 16 px patches merged 2 x 2, mean and std 0.5), its video
    processor, ``longest_edge`` :data:`QWEN3_MAX_PIXELS`; ``shortest_edge`` defaults to the
    project's ``min_pixels`` (:data:`envs.boxes.QWEN_MIN_PIXELS`, the
    ``ImageSettings`` default) rather than the released 65536, so the default settings and
    the small images of a CPU run pass :func:`agents.qwen_vision.check_pixel_limits`.

    The pixel limits go in ``size`` (passing ``min_pixels``/``max_pixels`` to the image
    processor would change the class defaults for every later instance).
    """
    from transformers import (
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    family = get_family(family)
    if family is QWEN3_VL:
        size = {"shortest_edge": min_pixels, "longest_edge": max_pixels or QWEN3_MAX_PIXELS}
        half = [0.5, 0.5, 0.5]
        return Qwen3VLProcessor(
            image_processor=Qwen2VLImageProcessor(size=size, patch_size=16, merge_size=2, image_mean=half, image_std=half),
            tokenizer=tokenizer,
            video_processor=Qwen3VLVideoProcessor(size=size, patch_size=16, merge_size=2),
            chat_template=QWEN2_VL_CHAT_TEMPLATE,
        )
    size = {"shortest_edge": min_pixels, "longest_edge": max_pixels or QWEN_MAX_PIXELS}
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(size=size),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )


def cached_tiny_qwen(root: str | os.PathLike, seed: int = 0, family: str | ModelFamily = QWEN2_5_VL) -> Path:
    """``root/tiny-qwen-seed<seed>`` (Qwen2.5-VL) or ``root/tiny-qwen3-vl-seed<seed>``, built by
    :func:`build_tiny_qwen` unless already there."""
    family = get_family(family)
    name = f"tiny-qwen-seed{seed}" if family is QWEN2_5_VL else f"tiny-{family.name.replace('_', '-')}-seed{seed}"
    path = Path(root) / name
    if not (path / "model.safetensors").is_file():
        build_tiny_qwen(path, seed, family=family)
    return path


def build_tiny_qwen(path: str | os.PathLike, seed: int = 0, family: str | ModelFamily = QWEN2_5_VL) -> Path:
    """Write a tiny random model of ``family`` (weights, config, tokenizer, processor) to ``path``.

    The folder loads with ``from_pretrained`` and with verl's ``hf_processor`` under
    ``HF_HUB_OFFLINE=1``; the weights are a pure function of ``seed``. Returns the path.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    family = get_family(family)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family=family)
    config = build_config(tokenizer, family)
    model_cls = Qwen3VLForConditionalGeneration if family is QWEN3_VL else Qwen2_5_VLForConditionalGeneration
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    tokenizer.save_pretrained(out)
    build_processor(tokenizer, family=family).save_pretrained(out)
    model.save_pretrained(out)  # last: its weights file marks a complete folder
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit("usage: python -m agents.tiny_qwen OUTPUT_FOLDER [qwen2_5_vl|qwen3_vl]")
    print(build_tiny_qwen(sys.argv[1], family=sys.argv[2] if len(sys.argv) == 3 else QWEN2_5_VL))


SHIPPED_POLICY = Path(__file__).resolve().parent / "assets" / "tiny-qwen-rr"
"""The warm-started tiny Qwen2.5-VL that ``--backend verl-cpu`` trains by default
(written by ``recipes/warm_start_tiny_qwen.py``)."""


def shipped_policy_path() -> Path:
    """:data:`SHIPPED_POLICY`; raises ``FileNotFoundError`` naming the recipe that writes it."""
    if not (SHIPPED_POLICY / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{SHIPPED_POLICY}: no warm-started tiny Qwen2.5-VL; run python recipes/warm_start_tiny_qwen.py"
        )
    return SHIPPED_POLICY
