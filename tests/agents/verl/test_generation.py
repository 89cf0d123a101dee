"""The CPU rollout's generation engine (agents/verl/generation.py) with a real tiny Qwen2.5-VL.

The model is the tiny Qwen2.5-VL of agents/qwen/tiny.py with its processor; the requests
are what the agent loop sends (chat-template prompts with an image, verl's sampling
parameters). What is checked is what the verl run relies on: concurrent requests are
generated in shared batches, a request's seed fixes its sample whatever shares its batch,
answers stop at the end-of-turn token and at their own ``max_tokens``, and a failing
batch fails every waiting request instead of hanging.
"""

from __future__ import annotations

import asyncio
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from agents.qwen.prompts import build_messages
from agents.qwen.tiny import cached_tiny_qwen
from agents.verl.generation import BatchedGenerator, Request, filter_top_k_top_p, log_probs_of

MAX_PIXELS = 64 * 28 * 28


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    from qwen_vl_utils import process_vision_info
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = cached_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen"))
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(path)

    def request(i: int, **params) -> Request:
        rng = np.random.default_rng(i)
        image = Image.fromarray(rng.integers(0, 255, (56 + 28 * (i % 3), 84, 3), dtype=np.uint8))
        messages = build_messages(f"What is the object number {i}?", image, max_pixels=MAX_PIXELS)
        images, _ = process_vision_info(messages, image_patch_size=14)
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        ids = processor(text=[text], images=images, return_tensors="pt")["input_ids"][0].tolist()
        return Request(ids, {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "max_tokens": 12, **params}, images)

    generator = BatchedGenerator(model, processor, response_length=24, seed=0)
    return generator, request


def test_a_seeded_request_samples_the_same_tokens_alone_and_in_any_batch(engine):
    generator, request = engine
    alone = generator.generate([request(0, seed=7)])[0]
    batched = generator.generate([request(1, seed=3), request(0, seed=7), request(2)])
    reordered = generator.generate([request(0, seed=7), request(2, seed=11), request(1, seed=3)])
    assert batched[1][0] == alone[0] == reordered[0][0]
    np.testing.assert_allclose(batched[1][1], alone[1], atol=1e-4)
    assert generator.generate([request(0, seed=8)])[0][0] != alone[0]  # another seed, another sample


def test_greedy_requests_take_the_arg_max_and_report_its_log_probs(engine):
    generator, request = engine
    tokens, log_probs = generator.generate([request(3, temperature=0.0, max_tokens=5)])[0]
    ids = torch.tensor([request(3).prompt_ids + tokens[:-1]])
    with torch.inference_mode():
        inputs = generator.inputs([Request(ids[0].tolist(), {}, request(3).images)])
        logits = generator.model(**inputs).logits[0, -len(tokens):]
    assert tokens == logits.argmax(-1).tolist()
    np.testing.assert_allclose(log_probs, log_probs_of(logits, torch.tensor(tokens), 1.0), atol=1e-4)


def test_answers_stop_at_their_own_budget_and_at_the_end_of_turn(engine):
    generator, request = engine
    results = generator.generate([request(4, seed=1, max_tokens=3), request(5, seed=2, max_tokens=40)])
    assert len(results[0][0]) <= 3 and len(results[1][0]) <= 24  # the server's response_length caps 40
    for tokens, log_probs in results:
        assert len(tokens) == len(log_probs)
        assert all(t not in generator.eos_ids for t in tokens[:-1])


def test_concurrent_requests_share_batches_and_each_gets_its_answer(engine):
    generator, request = engine
    requests = [request(i, seed=100 + i) for i in range(12)]
    before = generator.batches

    async def all_at_once():
        return await asyncio.gather(*(generator.serve(r) for r in requests))

    served = asyncio.run(all_at_once())
    assert generator.batches - before < len(requests)  # batched, not one generate per request
    alone = [generator.generate([r])[0][0] for r in requests[:3]]
    assert [tokens for tokens, _ in served[:3]] == alone


@pytest.mark.timeout(60)
def test_a_failing_batch_fails_every_waiting_request_instead_of_hanging(engine):
    generator, request = engine
    broken = Request([10**9], {"temperature": 1.0}, [])  # a token id beyond the vocabulary

    async def run():
        fresh = BatchedGenerator(generator.model, generator.processor, response_length=8)
        return await asyncio.gather(fresh.serve(broken), fresh.serve(request(6)), return_exceptions=True)

    results = asyncio.run(run())
    assert any(isinstance(r, Exception) for r in results)


def test_top_k_and_top_p_keep_the_most_likely_tokens():
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])
    assert torch.isinf(filter_top_k_top_p(logits, 2, 1.0)).tolist() == [False, False, True, True]
    # softmax: 0.64, 0.24, 0.09, 0.03: the nucleus 0.8 needs the first two
    assert torch.isinf(filter_top_k_top_p(logits, -1, 0.8)).tolist() == [False, False, True, True]
    assert not torch.isinf(filter_top_k_top_p(logits, -1, 1.0)).any()
