"""Batched, seeded generation with ``transformers``: the engine of the CPU rollout server.

verl's rollout servers (vLLM, SGLang) answer many concurrent token-in/token-out requests
with one batched forward per decoding step. :class:`BatchedGenerator` does the same with
``model.generate`` on a CPU: :meth:`BatchedGenerator.serve` queues each request, and one
background task takes every request that is waiting, left-pads them into one batch and
generates them together (KV cache on), so a step of verl's agent loop that asks for 64
answers at once pays for a handful of batched forwards instead of 64 separate generations.

Sampling follows vLLM's per-request ``seed``: a request whose sampling parameters carry
``seed`` draws its tokens from its own ``torch.Generator`` seeded with it, so which tokens
it samples does not depend on which other requests share its batch or on their order (the
logits themselves can differ in the last bits with the batch's padding, see the README's
reproducibility notes). Requests without a seed draw from one generator of the server.
Greedy requests (``temperature`` 0) take the arg-max.

The returned log-probabilities are those of the sampled tokens under
``softmax(logits / temperature)`` of the raw logits, the distribution verl's actor scores
them with (``calculate_log_probs``).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch

MAX_BATCH = 128
"""Most requests generated together (their prompts are left-padded to the longest)."""


@dataclass
class Request:
    """One token-in/token-out request as verl's ``generate`` call makes it."""

    prompt_ids: list[int]
    sampling_params: dict[str, Any]
    images: list[Any] = field(default_factory=list)

    @property
    def temperature(self) -> float:
        return float(self.sampling_params.get("temperature", 1.0))

    def max_tokens(self, limit: int) -> int:
        return max(1, min(int(self.sampling_params.get("max_tokens", limit)), limit))


def log_probs_of(logits: torch.Tensor, token_ids: torch.Tensor, temperature: float) -> list[float]:
    """Log-probabilities of ``token_ids`` under ``softmax(logits / temperature)`` (greedy
    requests: ``temperature`` 1), the distribution verl's actor scores them with."""
    scaled = logits.float() / (temperature if temperature > 0 else 1.0)
    return torch.log_softmax(scaled, dim=-1).gather(-1, token_ids[:, None]).squeeze(-1).tolist()


def filter_top_k_top_p(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """``logits`` (one row) with every token outside the top-k and the top-p nucleus at -inf."""
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        ordered, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(ordered, dim=-1).cumsum(-1)
        drop = cumulative - torch.softmax(ordered, dim=-1) >= top_p  # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


class SeededSampler:
    """A ``transformers`` logits processor that samples each row with its own generator.

    ``generate`` runs greedy; this processor returns, per row, logits that are -inf
    everywhere but at the token it sampled (at the arg-max for a greedy row), so the
    arg-max ``generate`` takes is the sample. ``transformers`` keeps the raw logits
    (``output_logits``) for the log-probabilities.
    """

    def __init__(self, requests: Sequence[Request], fallback: torch.Generator):
        self.requests = list(requests)
        self.generators = []
        for request in self.requests:
            seed = request.sampling_params.get("seed")
            if seed is None:
                self.generators.append(fallback)
            else:
                generator = torch.Generator()
                generator.manual_seed(int(seed) % (1 << 63))
                self.generators.append(generator)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        chosen = torch.empty(scores.shape[0], dtype=torch.long)
        for row, (request, generator) in enumerate(zip(self.requests, self.generators)):
            logits = scores[row].float()
            temperature = request.temperature
            if temperature <= 0:
                chosen[row] = int(torch.argmax(logits))
                continue
            params = request.sampling_params
            logits = filter_top_k_top_p(logits / temperature, int(params.get("top_k", -1) or -1), float(params.get("top_p", 1.0)))
            chosen[row] = int(torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator))
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), chosen] = 0.0
        return out


class BatchedGenerator:
    """Generate many requests with one ``model.generate`` per batch (see the module docstring).

    Args:
        model: an image-text-to-text ``transformers`` model (Qwen2.5-VL, Qwen3-VL).
        processor: its processor (the image processor makes the pixel inputs).
        response_length: most tokens of one answer (verl's ``rollout.response_length``).
        seed: seed of the generator that requests without their own ``seed`` draw from.
        max_batch: most requests in one batch.
    """

    def __init__(self, model: Any, processor: Any, response_length: int, seed: int = 0, max_batch: int = MAX_BATCH):
        self.model = model
        self.processor = processor
        self.response_length = response_length
        self.max_batch = max_batch
        self.fallback = torch.Generator()
        self.fallback.manual_seed(seed)
        self.image_token_id = model.config.image_token_id
        self.eos_ids = _eos_ids(model)
        self.pad_id = _pad_id(model, processor)
        self.lock = asyncio.Lock()
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self.batches = 0
        self.requests = 0

    # ------------------------------------------------------------------ asyncio front end
    async def serve(self, request: Request) -> tuple[list[int], list[float]]:
        """Queue ``request``; returns its new token ids and their log-probabilities."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        await self._queue.put((request, done))
        return await done

    async def _drain(self) -> None:
        while True:
            batch = [await self._queue.get()]
            # Let the requests made in the same turn of the event loop join this batch.
            await asyncio.sleep(0)
            while not self._queue.empty() and len(batch) < self.max_batch:
                batch.append(self._queue.get_nowait())
            async with self.lock:
                try:
                    results = await asyncio.to_thread(self.generate, [request for request, _ in batch])
                except Exception as error:  # every waiting request fails loudly, none hangs
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(error)
                    continue
            for (_, done), result in zip(batch, results):
                if not done.done():
                    done.set_result(result)

    # ------------------------------------------------------------------ the batch
    def inputs(self, requests: Sequence[Request]) -> dict[str, torch.Tensor]:
        """Left-padded token ids, attention mask and every request's images, in order."""
        length = max(len(r.prompt_ids) for r in requests)
        ids = torch.full((len(requests), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(requests), length), dtype=torch.long)
        for row, request in enumerate(requests):
            ids[row, length - len(request.prompt_ids):] = torch.tensor(request.prompt_ids)
            mask[row, length - len(request.prompt_ids):] = 1
        inputs: dict[str, torch.Tensor] = {"input_ids": ids, "attention_mask": mask}
        images = [image for request in requests for image in request.images]
        if images:
            features = self.processor.image_processor(images=images, return_tensors="pt")
            inputs.update(
                pixel_values=features["pixel_values"].to(self.model.dtype),
                image_grid_thw=features["image_grid_thw"],
                mm_token_type_ids=(ids == self.image_token_id).long(),
            )
        return inputs

    def generate(self, requests: Sequence[Request]) -> list[tuple[list[int], list[float]]]:
        """Generate ``requests`` as one batch (synchronous; :meth:`serve` calls it in a thread)."""
        inputs = self.inputs(requests)
        budgets = [request.max_tokens(self.response_length) for request in requests]
        with torch.inference_mode():
            output = self.model.generate(
                **inputs,
                max_new_tokens=max(budgets),
                do_sample=False,
                logits_processor=[SeededSampler(requests, self.fallback)],
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                return_dict_in_generate=True,
                output_logits=True,
            )
        new = output.sequences[:, inputs["input_ids"].shape[1]:]
        logits = torch.stack(output.logits, dim=1)  # (batch, steps, vocab), the raw logits
        results = []
        for row, (request, budget) in enumerate(zip(requests, budgets)):
            tokens = new[row, :budget]
            ends = [i for i, token in enumerate(tokens.tolist()) if token in self.eos_ids]
            tokens = tokens[: ends[0] + 1] if ends else tokens
            results.append((tokens.tolist(), log_probs_of(logits[row, : len(tokens)], tokens, request.temperature)))
        self.batches += 1
        self.requests += len(requests)
        return results


def _eos_ids(model: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = model.config.get_text_config().eos_token_id
    return [eos] if isinstance(eos, int) else list(eos)


def _pad_id(model: Any, processor: Any) -> int:
    pad = model.generation_config.pad_token_id
    if pad is None:
        pad = getattr(getattr(processor, "tokenizer", None), "pad_token_id", None)
    return int(pad if pad is not None else _eos_ids(model)[0])
