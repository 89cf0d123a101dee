"""A tiny, randomly initialised Qwen2.5-VL or Qwen3-VL built offline: for tests and CPU demos.

No model hub is reachable where this project is built, so the real models cannot be
downloaded. :func:`build_tiny_qwen` writes a folder that loads exactly like a real
checkpoint (``Qwen2_5_VLForConditionalGeneration`` / ``Qwen3VLForConditionalGeneration``
``.from_pretrained``, ``AutoModelForImageTextToText``, ``AutoProcessor.from_pretrained``,
verl's ``hf_tokenizer`` / ``hf_processor``): the same architecture at small sizes
(:data:`SIZES`: ``toy``, 0.37 M parameters, for tests; ``learner``, 2.6 M, the policy
``train_rgrpo.py verl-cpu`` trains, see :data:`LEARNER_SIZE_NOTE`), a tokenizer with one token
per coordinate value and per question word (:func:`build_tokenizer`), the Qwen2-VL chat
template, and the family's image processor (Qwen2.5-VL: 14 px patches, its real pixel
limits; Qwen3-VL: 16 px patches, so 32 px image tokens, and the project's default
``min_pixels``, see :func:`build_processor`). Every code path that touches the model
(processor, chat template, vision placeholders, M-RoPE, generation, the text parser)
therefore runs for real; only the weights are random, so the model writes gibberish until
:mod:`agents.qwen.sft` fine-tunes it.

    python -m agents.qwen.tiny runs/tiny-qwen                         # a toy Qwen2.5-VL
    python -m agents.qwen.tiny runs/tiny-qwen3 qwen3_vl               # a toy Qwen3-VL
    python -m agents.qwen.tiny runs/tiny-learner qwen2_5_vl learner   # the learner size
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from agents.qwen.family import QWEN2_5_VL, QWEN3_VL, ModelFamily, get_family
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

@dataclass(frozen=True)
class TinyQwenSize:
    """Widths and depths of a tiny Qwen-VL (the text model and the vision tower)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    mrope_section: tuple[int, int, int]
    """rotary frequencies of (time, height, width); they sum to head_dim / 2"""
    vision_depth: int
    vision_hidden_size: int
    vision_intermediate_size: int
    vision_heads: int
    rope_theta: float = 1_000_000.0
    """base of the text model's rotary frequencies (M-RoPE gives the width the lowest ones)"""

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


SIZES: dict[str, TinyQwenSize] = {
    # Tests and the verl-cpu end-to-end check: every code path, forwards in milliseconds.
    "toy": TinyQwenSize(64, 128, 2, 4, 2, (2, 3, 3), vision_depth=2, vision_hidden_size=32,
                        vision_intermediate_size=64, vision_heads=2),
    # The policy verl-cpu trains (see LEARNER_SIZE_NOTE).
    "learner": TinyQwenSize(192, 384, 4, 6, 2, (4, 6, 6), vision_depth=4, vision_hidden_size=96,
                            vision_intermediate_size=192, vision_heads=3),
}
"""The named sizes :func:`build_tiny_qwen` builds."""
LEARNER_SIZE_NOTE = """\
Why the learner is this size. ``python recipes/bench_tiny_qwen.py --sizes toy learner
"learner:hidden_size=256,intermediate_size=512,num_attention_heads=8,vision_depth=6,vision_hidden_size=128,vision_intermediate_size=256,vision_heads=4"``
(one torch thread, the 2-core build machine shared with a training run) measured, for
0.37 M / 2.64 M / 4.64 M parameters: 88 / 21 / 11 training sequences per second (forward,
backward, AdamW on 16 warm-start examples of ~110 tokens, 64 of them image tokens) and
1358 / 443 / 280 generated tokens per second (64 concurrent requests in the rollout
server's engine). A 600-step warm start on fresh scenes gave, greedy on 200 validation
queries, a box IoU of 0.201 (toy) against 0.225 (learner) and an always-crop MRR of 0.386
against 0.427: the learner grounds better at 4x the cost per step, while 4.6 M would halve
the steps a 45-minute RL run gets once more."""
_QWEN3_VISION_EXTRA = dict(num_position_embeddings=64, deepstack_visual_indexes=[0])  # an 8 x 8 grid, interpolated
QWEN3_MAX_PIXELS = 16384 * 32 * 32
"""Qwen3-VL's released ``longest_edge`` (16384 tokens of 32 x 32 px)."""
COORDINATE_TOKENS = 1001
"""The tokenizer has one token per integer 0 ... 1000: every coordinate of the Qwen2.5-VL
(pixels of a shown image up to 1000 px wide) and Qwen3-VL (0-1000) frames."""
NUMBER_SEPARATOR = ", "
"""Between the four numbers of a box (one token)."""


def _question_corpus() -> list[str]:
    """Every question of the embedded benchmark's templates: its words become single tokens."""
    from envs.data.synthetic.entities import COLOURS, PATTERNS, SHAPES
    from envs.data.synthetic.scenes import CELLS, QUESTION_TEMPLATES

    whats = [*SHAPES, *(f"{c} object" for c in COLOURS), *(f"{p} object" for p in PATTERNS), "object"]
    wheres = ["", *(" " + cell for cell in CELLS.values())]
    return [t.format(what=w, where=p) for t in QUESTION_TEMPLATES for w in whats for p in wheres]


def _tokenizer_corpus(family: ModelFamily = QWEN2_5_VL) -> list[str]:
    """Text the BPE is trained on: the family's prompt and answers and the benchmark's questions."""
    from agents.qwen.prompts import prompt_texts
    from envs.text_actions import FULL_MARKER

    texts = prompt_texts(family)
    return [texts.system_prompt, texts.crop_example, FULL_MARKER, "system user assistant <think></think>"] + _question_corpus() * 3


def build_tokenizer(vocab_size: int = 700, family: str | ModelFamily = QWEN2_5_VL):
    """A ``Qwen2Tokenizer`` for a tiny policy: a byte-level BPE trained on
    :func:`_tokenizer_corpus` of ``family`` (each word of the benchmark's questions one
    token), Qwen's special tokens (ids 0-7; ``<|im_end|>`` is EOS, ``<|endoftext|>`` pad),
    and added tokens for each of :func:`agents.qwen.prompts.fixed_prompt_texts` (system prompt,
    decision request, the crop answer's fixed prefix and suffix, ``NO_CROP_NEEDED``), for
    :data:`NUMBER_SEPARATOR` and for every integer below :data:`COORDINATE_TOKENS`.

    A prompt is then ~50 text tokens and a crop answer 10 (prefix, four numbers, three
    separators, suffix, end of turn): each coordinate is one prediction over its values,
    which is what lets a policy of a few million parameters learn *where*. The text the
    agent loop and the parser see is exactly the one a real Qwen writes.
    """
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    from agents.qwen.prompts import fixed_prompt_texts

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
    # Added tokens match longest first, so "136" is one token, not "13" + "6".
    plain = [*fixed_prompt_texts(family), NUMBER_SEPARATOR, *(str(n) for n in range(COORDINATE_TOKENS))]
    tokenizer.add_tokens([AddedToken(text, normalized=False, special=False) for text in plain])
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def build_config(tokenizer, family: str | ModelFamily = QWEN2_5_VL, size: str = "toy"):
    """A ``Qwen2_5_VLConfig`` or ``Qwen3VLConfig`` (by ``family``) of the named ``size``
    (:data:`SIZES`) whose special token ids are ``tokenizer``'s."""
    from transformers import Qwen2_5_VLConfig, Qwen3VLConfig

    family = get_family(family)
    dims = tiny_size(size)
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in QWEN_SPECIAL_TOKENS}
    rope = {"rope_type": "default", "rope_theta": dims.rope_theta, "mrope_section": list(dims.mrope_section)}
    if family is QWEN3_VL:
        rope["mrope_interleaved"] = True  # as the released Qwen3-VL configs
    text = dict(
        hidden_size=dims.hidden_size,
        intermediate_size=dims.intermediate_size,
        num_hidden_layers=dims.num_hidden_layers,
        num_attention_heads=dims.num_attention_heads,
        num_key_value_heads=dims.num_key_value_heads,
        max_position_embeddings=8192,
        vocab_size=len(tokenizer),
        rope_parameters=rope,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision = dict(
        depth=dims.vision_depth,
        hidden_size=dims.vision_hidden_size,
        intermediate_size=dims.vision_intermediate_size,
        num_heads=dims.vision_heads,
        spatial_merge_size=2,
        temporal_patch_size=2,
        out_hidden_size=dims.hidden_size,
    )
    if family is QWEN3_VL:
        text["head_dim"] = dims.head_dim
        vision.update(patch_size=16, **_QWEN3_VISION_EXTRA)
    else:
        # window attention in 8 x 8-patch windows, full attention in the middle and last blocks
        full = sorted({dims.vision_depth // 2 - 1, dims.vision_depth - 1})
        vision.update(patch_size=14, window_size=112, fullatt_block_indexes=full)
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


def tiny_size(name: str) -> TinyQwenSize:
    """The size named ``name`` (or ``NAME:key=value,...`` to change fields, for experiments);
    raises ``ValueError`` listing the names."""
    name, _, changes = name.partition(":")
    if changes and name in SIZES:
        import dataclasses

        fields = {f.name: f.type for f in dataclasses.fields(TinyQwenSize)}
        values = {}
        for item in changes.split(","):
            key, _, value = item.partition("=")
            if key not in fields:
                raise ValueError(f"TinyQwenSize has no field {key!r}")
            values[key] = tuple(int(v) for v in value.split("/")) if key == "mrope_section" else type(getattr(SIZES[name], key))(value)
        return dataclasses.replace(SIZES[name], **values)
    if name not in SIZES:
        raise ValueError(f"unknown tiny Qwen size {name!r}; choose from {sorted(SIZES)}")
    return SIZES[name]


def ordinal_coordinate_rows(tokenizer, width: int, like: "torch.Tensor") -> tuple[list[int], "torch.Tensor"]:
    """Token ids of the coordinate values and a sinusoidal row per value (scaled to the
    spread of ``like``): neighbouring values start with similar embeddings and output
    rows, so a box coordinate is learnt as a quantity, not as 1001 unrelated classes."""
    import torch

    ids = [tokenizer.convert_tokens_to_ids(str(n)) for n in range(COORDINATE_TOKENS)]
    values = torch.arange(COORDINATE_TOKENS, dtype=torch.float32)[:, None]
    freqs = 0.2 * torch.exp(torch.linspace(0.0, -4.0, width // 2))[None, :]
    rows = torch.cat([torch.sin(values * freqs), torch.cos(values * freqs)], dim=1)
    return ids, rows * (like.std() / rows.std())


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
    the small images of a CPU run pass :func:`agents.qwen.vision.check_pixel_limits`.

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


def cached_tiny_qwen(
    root: str | os.PathLike, seed: int = 0, family: str | ModelFamily = QWEN2_5_VL, size: str = "toy"
) -> Path:
    """``root/tiny-qwen-seed<seed>`` (Qwen2.5-VL) or ``root/tiny-qwen3-vl-seed<seed>`` (with
    ``-<size>`` for a size other than ``toy``), built by :func:`build_tiny_qwen` unless already there."""
    family = get_family(family)
    name = f"tiny-qwen-seed{seed}" if family is QWEN2_5_VL else f"tiny-{family.name.replace('_', '-')}-seed{seed}"
    path = Path(root) / (name if size == "toy" else f"{name}-{size}")
    if not (path / "model.safetensors").is_file():
        build_tiny_qwen(path, seed, family=family, size=size)
    return path


def build_tiny_qwen(
    path: str | os.PathLike, seed: int = 0, family: str | ModelFamily = QWEN2_5_VL, size: str = "toy"
) -> Path:
    """Write a tiny random model of ``family`` and ``size`` (weights, config, tokenizer,
    processor) to ``path``.

    The folder loads with ``from_pretrained`` and with verl's ``hf_processor`` under
    ``HF_HUB_OFFLINE=1``; the weights are a pure function of ``seed`` (the coordinate
    tokens' rows start ordinal: :func:`ordinal_coordinate_rows`). Returns the path.
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

    family = get_family(family)
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(family=family)
    config = build_config(tokenizer, family, size)
    model_cls = Qwen3VLForConditionalGeneration if family is QWEN3_VL else Qwen2_5_VLForConditionalGeneration
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_cls(config)
    with torch.no_grad():
        for weights in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
            ids, rows = ordinal_coordinate_rows(tokenizer, weights.shape[1], weights)
            weights[ids] = rows
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.generation_config.pad_token_id = config.text_config.pad_token_id
    tokenizer.save_pretrained(out)
    build_processor(tokenizer, family=family).save_pretrained(out)
    model.save_pretrained(out)  # last: its weights file marks a complete folder
    return out


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3, 4):
        raise SystemExit("usage: python -m agents.qwen.tiny OUTPUT_FOLDER [qwen2_5_vl|qwen3_vl] [toy|learner]")
    family_arg = sys.argv[2] if len(sys.argv) >= 3 else QWEN2_5_VL
    print(build_tiny_qwen(sys.argv[1], family=family_arg, size=sys.argv[3] if len(sys.argv) == 4 else "toy"))


SHIPPED_POLICY = Path(__file__).resolve().parent / "assets" / "tiny-qwen-rr"
"""The warm-started toy-size tiny Qwen2.5-VL shipped for smoke tests (``train_rgrpo.py verl-cpu --policy toy``),
written by ``python recipes/warm_start_tiny_qwen.py --size toy --steps 600 --lr 3e-3 --out agents/qwen/assets/tiny-qwen-rr``
(its ``warm_start.json`` holds the settings and the validation report)."""


def shipped_policy_path() -> Path:
    """:data:`SHIPPED_POLICY`; raises ``FileNotFoundError`` naming the recipe that writes it."""
    if not (SHIPPED_POLICY / "model.safetensors").is_file():
        raise FileNotFoundError(
            f"{SHIPPED_POLICY}: no warm-started toy Qwen2.5-VL; run python recipes/warm_start_tiny_qwen.py "
            f"--size toy --steps 600 --lr 3e-3 --out {SHIPPED_POLICY}"
        )
    return SHIPPED_POLICY
