"""The verl agent loop (agents/verl/agent_loop.py) end to end on CPU.

Everything is real except the inference server: a tiny randomly initialised Qwen2.5-VL or
Qwen3-VL (built offline by agents/qwen/tiny.py; every test that uses the model runs for
both families, each with its own box frame, prompt and resize factor) generates through
transformers behind a stand-in
for verl's server manager, which can also return scripted answers (a random model never
writes a valid crop). The processor, chat template, verl's Continuous Token builder,
the text parser, the env, the scorer and the reward are the ones training uses; the
worker test runs verl's own AgentLoopWorker with its padding and multi-modal
post-processing.
"""

from __future__ import annotations

import asyncio
import copy
import os
import uuid
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from qwen_vl_utils import fetch_image

import verl
from agents.verl.agent_loop import FORCED_REGION_PREFIX, RegionRerankAgentLoop
from agents.verl.episode import request_seed
from agents.verl.settings import AGENT_NAME, LoopSettings, agent_loop_config
from agents.evaluation.baselines import grid_boxes, region_action
from agents.qwen.family import get_family, patch_size, resize_factor
from agents.qwen.tiny import cached_tiny_qwen
from agents.verl.plugin import compute_rgrpo_advantage, decisions_for_batch
from envs.actions import MALFORMED
from envs.boxes import QWEN_MIN_PIXELS, qwen_resized_size
from envs.data.pools import write_query_pools
from envs.region_rerank import RegionRerankEnv
from envs.settings import EnvSettings, ImageSettings
from envs.text_actions import FULL_MARKER, format_action_text
from rewards import RewardConfig
from verl.experimental.agent_loop.agent_loop import AgentLoopWorker, DictConfigWrap, _agent_loop_registry
from verl.protocol import DataProto
from verl.utils.dataset.rl_dataset import RLHFDataset
from verl.workers.rollout.replica import TokenOutput

MAX_PIXELS = 64 * 28 * 28
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


# --------------------------------------------------------------------------- the stand-in server
class TransformersServer:
    """Stand-in for verl's LLM server manager: generates with a transformers model.

    ``script`` scripts the answers: a list is consumed one answer per call, a callable
    gets the call (``prompt_ids``, ``images``) and returns the answer. A string answer is
    returned as its tokens plus EOS; ``None`` (or an exhausted list) lets the model
    generate. Vision placeholder tokens are suppressed: a trained policy never writes
    them, a random one would.
    """

    def __init__(self, model, processor, max_new_tokens: int = 24):
        self.model, self.processor, self.tokenizer = model, processor, processor.tokenizer
        self.max_new_tokens = max_new_tokens
        self.script: list[str | None] | Callable[[dict], str | None] = []
        self.calls: list[dict] = []
        self.suppress = self.tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))

    def _scripted(self, call: dict) -> str | None:
        if callable(self.script):
            return self.script(call)
        return self.script.pop(0) if self.script else None

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, **kwargs) -> TokenOutput:
        self.calls.append({"prompt_ids": list(prompt_ids), "images": list(image_data or []), "params": dict(sampling_params)})
        answer = self._scripted(self.calls[-1])
        if answer is not None:
            ids = self.tokenizer.encode(answer, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        else:
            features = self.processor.image_processor(images=image_data, return_tensors="pt")
            input_ids = torch.tensor([prompt_ids])
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                pixel_values=features["pixel_values"],
                image_grid_thw=features["image_grid_thw"],
                mm_token_type_ids=(input_ids == self.model.config.image_token_id).long(),
                max_new_tokens=min(self.max_new_tokens, sampling_params["max_tokens"]),
                do_sample=sampling_params.get("temperature", 1.0) > 0,
                suppress_tokens=self.suppress,
            )
            ids = output[0, len(prompt_ids) :].tolist()
        self.calls[-1]["token_ids"] = ids
        return TokenOutput(token_ids=ids, log_probs=[-0.5] * len(ids))


# --------------------------------------------------------------------------- fixtures
FAMILY_NAMES = ["qwen2_5_vl", "qwen3_vl"]
FRAME_IN_USE: dict = {}
"""The family of the model under test and its processor's resize factor, set by the
``qwen`` fixture, for the frame helpers below (:func:`resized`, :func:`crop_text`)."""


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def tiny_qwen_dir(tmp_path_factory, family) -> Path:
    return cached_tiny_qwen(tmp_path_factory.getbasetemp(), family=family)


@pytest.fixture(scope="module")
def qwen(tiny_qwen_dir, family):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.set_num_threads(1)
    model, processor = AutoModelForImageTextToText.from_pretrained(tiny_qwen_dir).eval(), AutoProcessor.from_pretrained(tiny_qwen_dir)
    assert model.config.model_type == family
    FRAME_IN_USE.update(family=get_family(family), factor=resize_factor(processor), patch_size=patch_size(processor))
    return model, processor


@pytest.fixture()
def server(qwen) -> TransformersServer:
    return TransformersServer(*qwen)


@pytest.fixture(scope="module")
def pool_file(tiny_pool, tmp_path_factory) -> Path:
    return write_query_pools([tiny_pool], tmp_path_factory.mktemp("pools") / "pools.jsonl")


@pytest.fixture(scope="module")
def settings(tiny_model_name, tiny_checkpoint) -> dict:
    """The loop's keyword arguments, as verl passes them from the config file."""
    return {"scorer": {"model": tiny_model_name, "pretrained": str(tiny_checkpoint)}, "images": {"max_pixels": MAX_PIXELS}}


def with_(settings: dict, **changes) -> dict:
    """``settings`` with single fields changed, each in its settings object (env, images or the loop's own)."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in settings.items()}
    for key, value in changes.items():
        group = "env" if key in EnvSettings.__dataclass_fields__ else "images" if key in ImageSettings.__dataclass_fields__ else None
        if group is None:
            out[key] = value
        else:
            out.setdefault(group, {})[key] = value
    return out


def compose_trainer_config(*overrides: str):
    """verl's own ppo_trainer config, as the trainer hands it to the agent loop."""
    GlobalHydra.instance().clear()
    config_dir = str(Path(verl.__file__).parent / "trainer" / "config")
    with initialize_config_dir(config_dir=config_dir, version_base=None):
        return compose(
            config_name="ppo_trainer",
            overrides=["actor_rollout_ref.rollout.name=vllm", "data.max_prompt_length=2048", "data.max_response_length=512", *overrides],
        )


@pytest.fixture(scope="module")
def trainer_config():
    return compose_trainer_config()


@pytest.fixture()
def reference_env(tiny_pool, tiny_scorer):
    """A separate env on the same query and scorer, to replay what the loop should have done."""

    def make(**kwargs) -> RegionRerankEnv:
        return RegionRerankEnv([tiny_pool], tiny_scorer, **kwargs)

    return make


def run_loop(config, server, processor, extra_info: dict, temperature: float = 0.0, sample: dict | None = None, **settings):
    """Build the loop inside the event loop (as verl does) and run one episode (``sample``:
    further keyword arguments verl passes with the row, e.g. ``global_steps``, ``session_id``)."""

    async def episode():
        loop = RegionRerankAgentLoop(
            trainer_config=DictConfigWrap(config),
            server_manager=server,
            tokenizer=processor.tokenizer,
            processor=processor,
            dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(config.data),
            hf_model_type=server.model.config.model_type,
            **settings,
        )
        return await loop.run({"temperature": temperature, "top_p": 1.0}, extra_info=extra_info, raw_prompt=[], **(sample or {}))

    return asyncio.run(episode())


def resized(image, max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """Size of ``image`` as the model under test sees it (its processor's resize factor)."""
    return qwen_resized_size(image.width, image.height, QWEN_MIN_PIXELS, max_pixels, FRAME_IN_USE["factor"])


def _extent(view_image) -> tuple[int, int]:
    """What the box numbers of the model under test count: pixels of the image it sees
    (Qwen2.5-VL) or 0-1000 of it (Qwen3-VL)."""
    return resized(view_image) if FRAME_IN_USE["family"].frame == "resized" else (1000, 1000)


def snapped(norm_box, view_image) -> np.ndarray:
    """``norm_box`` moved to the integers the model writes for ``view_image`` in its frame."""
    w, h = _extent(view_image)
    return np.round(np.asarray(norm_box) * [w, h, w, h]) / [w, h, w, h]


def crop_text(norm_box, view_image) -> str:
    """Region-R1's tool call for ``norm_box``, in the frame of the model under test."""
    return format_action_text(1, norm_box, frame=FRAME_IN_USE["family"].frame, resized_size=resized(view_image))


def image_token_count(processor, images) -> int:
    grid = processor.image_processor(images=images, return_tensors="pt")["image_grid_thw"]
    return int((grid.prod(-1) // 4).sum())


# --------------------------------------------------------------------------- episodes
def test_a_seeded_run_gives_each_request_the_seed_of_its_step_query_member_and_draw(
    trainer_config, server, qwen, pool_file, settings, tiny_pool
):
    extra = {"pool_file": str(pool_file), "query_id": tiny_pool.query_id}

    def seeds(seed, step, member) -> list:
        server.calls.clear()
        run_loop(trainer_config, server, qwen[1], extra, 1.0, {"global_steps": step, "session_id": member},
                 **with_(settings, seed=seed))
        return [call["params"].get("seed") for call in server.calls]

    first = seeds(7, 3, 1)
    assert first == [request_seed(7, 3, tiny_pool.query_id, 1, 0)]
    assert seeds(7, 3, 1) == first  # a repeated run asks for the same samples
    assert seeds(7, 3, 2) != first and seeds(7, 4, 1) != first and seeds(8, 3, 1) != first
    assert seeds(None, 3, 1) == [None]  # unseeded: the server draws as it likes


def test_random_model_writes_malformed_answers_and_pays_the_penalty(trainer_config, server, qwen, pool_file, settings, tiny_pool):
    processor = qwen[1]
    out = run_loop(
        trainer_config, server, processor, {"pool_file": str(pool_file), "query_id": tiny_pool.query_id},
        **with_(settings, reward={"malformed_penalty": -0.5}),
    )
    (call,) = server.calls
    assert out.reward_score == -0.5
    assert out.extra_fields["decision"] == MALFORMED and out.extra_fields["outcome"] == "malformed"
    assert out.extra_fields["reward_extra_info"]["malformed"] == 1.0
    # the model's own tokens are the whole response, all trained on
    assert out.response_ids == call["token_ids"] and out.response_mask == [1] * len(call["token_ids"])
    assert out.prompt_ids == call["prompt_ids"]
    # one image, expanded to exactly the tokens the processor makes of it
    tokenizer = processor.tokenizer
    assert out.multi_modal_data["images"] == call["images"] and len(call["images"]) == 1
    assert out.prompt_ids.count(tokenizer.convert_tokens_to_ids("<|image_pad|>")) == image_token_count(processor, call["images"])
    prompt_text = tokenizer.decode(out.prompt_ids)
    assert "image_zoom_in_tool" in prompt_text and tiny_pool.question in prompt_text


def test_scripted_crop_pays_the_rank_improvement_reward_of_that_crop(trainer_config, server, qwen, pool_file, settings, tiny_pool, reference_env):
    env = reference_env()
    _, info = env.reset(options={"query_index": 0})
    w, h = resized(info["policy_image"])
    # the best grid box by the reward, snapped to the integer pixels the model writes
    boxes = [snapped(b, info["policy_image"]) for b in grid_boxes()]
    outcomes = env.score_actions([region_action(b) for b in boxes])
    best = int(np.argmax([o.reward for o in outcomes]))
    server.script = [crop_text(boxes[best], info["policy_image"])]

    out = run_loop(trainer_config, server, qwen[1], {"pool_file": str(pool_file), "query_id": tiny_pool.query_id}, **settings)

    assert server.calls[0]["images"][0].size == (w, h)  # the parser's frame is the image the model saw
    assert out.reward_score == pytest.approx(outcomes[best].reward, abs=1e-6)
    assert out.extra_fields["decision"] == 1 and out.extra_fields["outcome"] == "region"
    assert out.extra_fields["final_rank"] == int(outcomes[best].stats.rank)
    assert out.extra_fields["baseline_rank"] == info["baseline_rank"]
    assert out.extra_fields["reward_terms"]["reward"] == pytest.approx(outcomes[best].reward, abs=1e-6)


def test_full_answer_pays_the_full_reward(trainer_config, server, qwen, pool_file, settings, tiny_pool, reference_env):
    _, info = reference_env().reset(options={"query_index": 0})
    server.script = [f"<think>the subject fills the image</think>{FULL_MARKER}"]
    out = run_loop(trainer_config, server, qwen[1], {"pool_file": str(pool_file), "query_id": tiny_pool.query_id}, **settings)
    assert out.extra_fields["decision"] == 0 and out.extra_fields["outcome"] == "full"
    assert out.reward_score == (1.0 if info["baseline_rank"] == 1 else 0.0)


def test_multi_step_zoom_shows_every_crop_in_order_and_trains_only_model_tokens(
    trainer_config, server, qwen, pool_file, settings, tiny_pool, reference_env
):
    processor = qwen[1]
    boxes = [np.array([0.0, 0.0, 0.75, 0.75]), np.array([0.25, 0.25, 1.0, 1.0])]
    # replay in a reference env: the views the policy should see and the reward it should get
    env = reference_env(max_steps=3)
    _, info = env.reset(options={"query_index": 0})
    views, texts = [info["policy_image"]], []
    for box in boxes:
        box = snapped(box, views[-1])
        texts.append(crop_text(box, views[-1]))
        _, _, _, _, info = env.step(region_action(box))
        views.append(info["policy_image"])
    _, expected_reward, terminated, _, info = env.step({"decision": 0, "box": np.zeros(4)})
    assert terminated
    server.script = texts + [FULL_MARKER]

    out = run_loop(
        trainer_config, server, processor, {"pool_file": str(pool_file), "query_id": tiny_pool.query_id},
        **with_(settings, max_steps=3),
    )

    # each call sees one more view; the views are the crops, resized as the model sees them
    assert [len(call["images"]) for call in server.calls] == [1, 2, 3]
    shown = out.multi_modal_data["images"]
    assert shown == server.calls[-1]["images"]
    for image, view in zip(shown, views):
        expected = fetch_image(
            {"image": view, "min_pixels": QWEN_MIN_PIXELS, "max_pixels": MAX_PIXELS}, image_patch_size=FRAME_IN_USE["patch_size"]
        )
        assert image.size == resized(view)
        np.testing.assert_array_equal(np.asarray(image), np.asarray(expected))
    assert out.reward_score == pytest.approx(expected_reward, abs=1e-6)
    assert out.extra_fields["decisions"] == [1, 1, 0] and out.extra_fields["steps"] == 2
    assert out.extra_fields["final_rank"] == info["rank"]

    # the response: answer, view, answer, view, answer; views are masked out of the loss
    tokenizer = processor.tokenizer
    response = np.array(out.response_ids)
    mask = np.array(out.response_mask)
    assert len(response) == len(mask)
    trained = tokenizer.decode(response[mask == 1], skip_special_tokens=True)
    assert trained == "".join(texts) + FULL_MARKER
    masked = tokenizer.decode(response[mask == 0])
    assert masked.count("<|vision_start|>") == 2 and "This is the cropped region" in masked
    image_pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert (out.prompt_ids + out.response_ids).count(image_pad) == image_token_count(processor, shown)
    assert out.num_turns == 6  # 3 answers, 2 follow-ups, the first prompt


def test_episode_stops_on_the_current_crop_when_the_response_budget_is_spent(
    trainer_config, server, qwen, pool_file, settings, tiny_pool, reference_env
):
    env = reference_env(max_steps=3)
    _, info = env.reset(options={"query_index": 0})
    box = snapped([0.0, 0.0, 0.75, 0.75], info["policy_image"])
    text = crop_text(box, info["policy_image"])
    env.step(region_action(box))
    _, expected_reward, _, _, _ = env.step({"decision": 0, "box": np.zeros(4)})

    answer_tokens = len(qwen[1].tokenizer.encode(text)) + 1
    config = copy.deepcopy(trainer_config)
    config.actor_rollout_ref.rollout.response_length = answer_tokens + 8  # no room for the next view
    server.script = [text]
    out = run_loop(config, server, qwen[1], {"pool_file": str(pool_file), "query_id": tiny_pool.query_id}, **with_(settings, max_steps=3))

    assert len(server.calls) == 1 and len(out.multi_modal_data["images"]) == 1
    assert out.extra_fields["truncated"] and out.extra_fields["outcome"] == "stop"
    assert out.reward_score == pytest.approx(expected_reward, abs=1e-6)
    assert len(out.response_ids) <= config.actor_rollout_ref.rollout.response_length


# --------------------------------------------------------------------------- decision-balanced groups
def run_group(config, server, processor, pool_file, query_id, n: int, **settings):
    """n rollouts of one query with one uid, created in one tick as verl's worker does."""

    async def group():
        uid = uuid.uuid4().hex

        async def one():
            loop = RegionRerankAgentLoop(
                trainer_config=DictConfigWrap(config), server_manager=server, tokenizer=processor.tokenizer,
                processor=processor, dataset_cls=RLHFDataset, data_config=DictConfigWrap(config.data),
                hf_model_type=server.model.config.model_type, **settings,
            )
            return await loop.run(
                {"temperature": 1.0, "top_p": 1.0}, uid=uid, raw_prompt=[],
                extra_info={"pool_file": str(pool_file), "query_id": query_id},
            )

        return await asyncio.gather(*[asyncio.create_task(one()) for _ in range(n)])

    return asyncio.run(group())


def test_group_without_full_is_forced_to_hold_one_with_its_tokens_masked(trainer_config, server, qwen, pool_file, settings, tiny_pool, reference_env):
    _, info = reference_env().reset(options={"query_index": 0})
    crop = crop_text([0.1, 0.1, 0.9, 0.9], info["policy_image"])
    server.script = [crop] * 4 + [crop]  # four REGION answers, then one redraw that is REGION again
    outs = run_group(trainer_config, server, qwen[1], pool_file, tiny_pool.query_id, 4, **with_(settings, balance_budget=1))

    assert len(server.calls) == 5  # the forced FULL needs no generation
    assert sorted(o.extra_fields["decision"] for o in outs) == [0, 1, 1, 1]
    assert {o.extra_fields["balance_path"] for o in outs} == {"forced"}
    (forced,) = [o for o in outs if o.extra_fields["decision"] == 0]
    assert forced.response_mask == [0] * len(forced.response_ids)  # forced tokens are not trained
    assert qwen[1].tokenizer.decode(forced.response_ids, skip_special_tokens=True) == FULL_MARKER
    assert forced.reward_score == (1.0 if info["baseline_rank"] == 1 else 0.0)


def test_group_without_region_completes_a_forced_tool_call_with_its_own_box(trainer_config, server, qwen, pool_file, settings, tiny_pool):
    # the policy's own box: 10-40 px of the image it sees, or 100-400 of 1000 (Qwen3-VL)
    numbers = "10, 10, 40, 40" if FRAME_IN_USE["family"].frame == "resized" else "100, 100, 400, 400"
    server.script = [FULL_MARKER] * 3 + [numbers + "]}}\n</tool_call>"]
    outs = run_group(trainer_config, server, qwen[1], pool_file, tiny_pool.query_id, 3, **with_(settings, balance_budget=0))

    assert sorted(o.extra_fields["decision"] for o in outs) == [0, 0, 1]
    (forced,) = [o for o in outs if o.extra_fields["decision"] == 1]
    tokenizer = qwen[1].tokenizer
    prefix = tokenizer.encode(FORCED_REGION_PREFIX, add_special_tokens=False)
    assert forced.response_ids[: len(prefix)] == prefix and forced.response_mask[: len(prefix)] == [0] * len(prefix)
    assert all(forced.response_mask[len(prefix) :])  # the box the policy wrote is trained
    assert server.calls[-1]["prompt_ids"][-len(prefix) :] == prefix
    assert forced.extra_fields["outcome"] == "region" and forced.extra_fields["balance_path"] == "forced"


def test_group_that_holds_both_decisions_is_left_alone(trainer_config, server, qwen, pool_file, settings, tiny_pool, reference_env):
    _, info = reference_env().reset(options={"query_index": 0})
    server.script = [FULL_MARKER, crop_text([0.0, 0.0, 0.5, 0.5], info["policy_image"]), None]
    outs = run_group(trainer_config, server, qwen[1], pool_file, tiny_pool.query_id, 3, **settings)
    assert len(server.calls) == 3
    assert {o.extra_fields["balance_path"] for o in outs} == {"balanced"}


def test_group_with_too_few_parsed_answers_is_not_balanced(trainer_config, server, qwen, pool_file, settings, tiny_pool, reference_env):
    _, info = reference_env().reset(options={"query_index": 0})
    server.script = [crop_text([0.0, 0.0, 0.5, 0.5], info["policy_image"]), None, None]  # the model's own answers are malformed
    torch.manual_seed(0)  # the stand-in samples at temperature 1
    outs = run_group(trainer_config, server, qwen[1], pool_file, tiny_pool.query_id, 3, **settings)
    assert len(server.calls) == 3
    assert sorted(o.extra_fields["decision"] for o in outs) == [MALFORMED, MALFORMED, 1]
    assert {o.extra_fields["balance_path"] for o in outs} == {"few_valid"}


def test_greedy_sampling_is_never_balanced(trainer_config, server, qwen, pool_file, settings, tiny_pool):
    server.script = [FULL_MARKER] * 2
    out = run_loop(trainer_config, server, qwen[1], {"pool_file": str(pool_file), "query_id": tiny_pool.query_id}, **settings)
    assert out.extra_fields["balance_path"] == "off"


# --------------------------------------------------------------------------- verl's worker
def test_verl_worker_runs_multi_step_groups_and_hands_decisions_to_rgrpo(
    tiny_qwen_dir, qwen, pool_file, settings, tiny_pool, tmp_path, reference_env
):
    n = 4
    loop_file = tmp_path / "agent_loop.yaml"
    loop_file.write_text(yaml.safe_dump(agent_loop_config(LoopSettings.from_kwargs(**with_(settings, max_steps=2)))))
    config = compose_trainer_config(
        f"actor_rollout_ref.model.path={tiny_qwen_dir}",
        f"actor_rollout_ref.rollout.agent.agent_loop_config_path={loop_file}",
        f"actor_rollout_ref.rollout.n={n}",
    )
    worker = AgentLoopWorker(config, TransformersServer(*qwen))
    rows = {
        "raw_prompt": [[] for _ in range(n)],
        "agent_name": [AGENT_NAME] * n,
        "extra_info": [{"pool_file": str(pool_file), "query_id": tiny_pool.query_id, "index": 0}] * n,
        "index": [0] * n,
        "uid": ["query-0"] * n,  # one group, as verl repeats a prompt n times
    }
    non_tensors = {}
    for key, values in rows.items():
        non_tensors[key] = np.empty(n, dtype=object)
        non_tensors[key][:] = values
    batch = DataProto.from_dict(tensors={"dummy_tensor": torch.zeros(n, 1, dtype=torch.uint8)}, non_tensors=non_tensors)

    # expected rewards: crop then keep it, or FULL at once
    env = reference_env(max_steps=2)
    _, info = env.reset(options={"query_index": 0})
    box = snapped([0.2, 0.2, 0.8, 0.8], info["policy_image"])
    crop = crop_text(box, info["policy_image"])
    env.step(region_action(box))
    crop_reward = env.step({"decision": 0, "box": np.zeros(4)})[1]
    full_reward = 1.0 if info["baseline_rank"] == 1 else 0.0
    # every first answer crops; the group's redraw brings FULL; second turns keep the crop
    first_answers = [crop] * n + [FULL_MARKER]
    worker.llm_client.script = lambda call: first_answers.pop(0) if len(call["images"]) == 1 else FULL_MARKER

    out = asyncio.run(worker.generate_sequences(batch))

    decisions = list(out.non_tensor_batch["decision"])
    assert sorted(decisions) == [0, 1, 1, 1]
    assert set(out.non_tensor_batch["balance_path"]) == {"resampled"}
    # the episode reward sits on the last response token, where verl's reward managers put it
    np.testing.assert_allclose(
        sorted(out.batch["rm_scores"].sum(-1).tolist()), sorted([full_reward] + [crop_reward] * 3), atol=1e-6
    )
    # the actor's inputs: every view of each sample, with Qwen-VL's 3-D positions (plus text positions)
    assert out.batch["position_ids"].shape[:2] == (n, 4)
    views = [len(inputs["image_grid_thw"]) for inputs in out.non_tensor_batch["multi_modal_inputs"]]
    assert [v for _, v in sorted(zip(decisions, views))] == [1, 2, 2, 2]
    # the rgrpo estimator reads the decisions verl put in non_tensor_batch
    uids = out.non_tensor_batch["uid"]
    assert decisions_for_batch(uids, out.non_tensor_batch) == decisions
    advantages, _ = compute_rgrpo_advantage(
        out.batch["rm_scores"], out.batch["response_mask"], index=uids, non_tensor_batch=out.non_tensor_batch
    )
    assert torch.isfinite(advantages).all()
    if crop_reward != full_reward:
        assert torch.count_nonzero(advantages.sum(-1)) == n


# --------------------------------------------------------------------------- configuration
@pytest.mark.verl_contract  # reads verl's private _agent_loop_registry
def test_loop_is_registered_only_through_its_config_file(settings):
    # Importing the loop must not put a settings-less entry in verl's registry: verl imports
    # it lazily at the first episode, and such an entry would replace the config file's.
    assert AGENT_NAME not in _agent_loop_registry or "images" in _agent_loop_registry[AGENT_NAME]
    (entry,) = agent_loop_config(LoopSettings.from_kwargs(**with_(settings, max_steps=2, reward={"w_margin": 0.0})))
    assert entry["name"] == AGENT_NAME and entry["_target_"] == "agents.verl.agent_loop.RegionRerankAgentLoop"
    loaded = LoopSettings.from_kwargs(**{k: v for k, v in entry.items() if k not in ("name", "_target_")})
    assert loaded.env.max_steps == 2 and loaded.env.reward == RewardConfig(w_margin=0.0)
    assert loaded.scorer.model == settings["scorer"]["model"]


def test_shipped_agent_loop_file_holds_the_defaults():
    shipped = Path(__file__).resolve().parents[3] / "recipes" / "config" / "agent_loop.yaml"
    assert yaml.safe_load(shipped.read_text()) == agent_loop_config()


def test_bad_settings_are_rejected_by_name(trainer_config, server, qwen, settings):
    with pytest.raises(ValueError, match=r"region_rerank agent-loop settings: unknown key\(s\) \['max_steps'\]"):
        LoopSettings.from_kwargs(max_steps=2)
    with pytest.raises(ValueError, match=r"settings.env: max_steps must be >= 1"):
        LoopSettings.from_kwargs(env={"max_steps": 0})
    with pytest.raises(ValueError, match="pixel limits"):
        run_loop(trainer_config, server, qwen[1], {}, **with_(settings, min_pixels=100))


def test_row_without_a_pool_file_is_rejected(trainer_config, server, qwen, settings):
    with pytest.raises(KeyError, match="pool_file.*prepare_verl_data"):
        run_loop(trainer_config, server, qwen[1], {"query_id": "q0"}, **settings)


def test_search_and_two_box_answers_are_stepped_and_paid_as_the_env_pays_them(
    trainer_config, server, qwen, settings, tiny_pool, tiny_scorer, tmp_path
):
    import dataclasses
    import json

    from envs.factory import pools_index
    from envs.data.kb_index import KbItem, write_kb_file

    kb_file = write_kb_file([KbItem(c.id, c.image, c.text) for c in tiny_pool.candidates], tmp_path / "kb.jsonl")
    pool = dataclasses.replace(tiny_pool, candidates=tiny_pool.candidates[:3], kb=kb_file)
    pool_file = write_query_pools([pool], tmp_path / "pools.jsonl")
    reference = RegionRerankEnv([pool], tiny_scorer, kb_index=pools_index([pool], tiny_scorer), search=True, max_regions=2)
    _, info = reference.reset(options={"query_index": 0})
    w, h = _extent(info["policy_image"])
    boxes = [snapped([0.0, 0.0, 0.5, 0.5], info["policy_image"]), snapped([0.5, 0.5, 1.0, 1.0], info["policy_image"])]
    framed = [[int(round(v)) for v in np.asarray(b) * [w, h, w, h]] for b in boxes]
    answers = {
        "search": ('<tool_call>{"name": "kb_search_tool", "arguments": {}}</tool_call>',
                   {"decision": 0, "box": np.zeros(4), "search": 1}),
        "region": ('<tool_call>' + json.dumps({"name": "image_zoom_in_tool", "arguments": {"bbox_2d": framed}}) + "</tool_call>",
                   {"decision": 1, "box": np.stack(boxes)}),
    }
    for outcome, (text, action) in answers.items():
        reference.reset(options={"query_index": 0})
        expected = reference.score_actions([action])[0]
        server.script = [text]
        out = run_loop(trainer_config, server, qwen[1], {"pool_file": str(pool_file), "query_id": pool.query_id},
                       **with_(settings, search=True, max_regions=2))
        assert out.extra_fields["outcome"] == outcome
        assert out.reward_score == pytest.approx(expected.reward, abs=1e-6)
        assert out.extra_fields["final_rank"] == int(expected.stats.rank)
