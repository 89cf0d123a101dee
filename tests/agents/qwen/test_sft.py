"""The supervised warm start of a tiny Qwen-VL policy (agents/qwen/sft.py).

The model, processor, chat template and scenes are real (a toy-size tiny Qwen2.5-VL and
the embedded benchmark's generator); what is checked is what RL relies on: the targets
are the annotated boxes widened to the patch grid, in the family's frame; the decision
token is taught the prior on every example; the example stream is seeded and never
repeats a scene; and a short warm start through the public recipe writes a checkpoint
whose greedy answers parse, with its validation report.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from agents.qwen.prompts import REGION_ANSWER_PREFIX
from agents.qwen.tiny import cached_tiny_qwen
from agents.qwen.sft import WarmStartConfig, answer_loss, fresh_example, snapped_box, target_answer
from envs.text_actions import FULL_MARKER, parse_action_text

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(cached_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen")))


def test_target_boxes_are_widened_to_the_patch_grid_and_hold_the_annotation():
    box = (100, 37, 161, 90)  # pixels of a 320 x 320 view shown at 224 x 224
    norm = snapped_box(box, (320, 320), (224, 224), 14)
    shown = np.array(norm) * 224
    assert np.allclose(shown, np.round(shown / 14) * 14)  # corners on the 14 px grid of the shown image
    assert norm[0] <= box[0] / 320 and norm[1] <= box[1] / 320 and norm[2] >= box[2] / 320 and norm[3] >= box[3] / 320
    assert snapped_box(box, (320, 320), (224, 224), 0) == [b / 320 for b in box]
    text = target_answer(True, box, (320, 320), (224, 224), "qwen2_5_vl", 14)
    assert text.startswith(REGION_ANSWER_PREFIX) and "[70, 14, 126, 70]" in text
    action = parse_action_text(text, "resized", (320, 320), (224, 224))
    assert action.decision == 1 and np.allclose(action.box, norm, atol=1e-6)
    assert target_answer(False, box, (320, 320), (224, 224), "qwen2_5_vl", 14) == FULL_MARKER


def test_the_decision_token_learns_the_prior_and_the_rest_its_target():
    vocab, region, full = 6, 4, 5
    logits = torch.zeros(1, 4, vocab, requires_grad=True)
    labels = torch.tensor([[-100, region, 2, 3]])  # prompt token, then the answer: decision, box, end
    loss = answer_loss(logits, labels, region, full, prior=0.5)
    # uniform logits: every answer token costs log(vocab), the decision too (0.5 + 0.5 of it)
    assert float(loss) == pytest.approx(np.log(vocab))
    loss.backward()
    decision_grad = logits.grad[0, 0]
    assert decision_grad[region] == pytest.approx(decision_grad[full]) and decision_grad[region] < 0
    assert (decision_grad[:region] > 0).all()  # mass moves to the two decisions only, equally


def test_fresh_examples_are_seeded_and_differ_from_each_other(processor):
    config = WarmStartConfig(size="toy")
    first = fresh_example(processor, config, 0)
    assert torch.equal(first.input_ids, fresh_example(processor, config, 0).input_ids)
    assert torch.equal(first.pixel_values, fresh_example(processor, config, 0).pixel_values)
    assert not torch.equal(first.pixel_values, fresh_example(processor, config, 1).pixel_values)
    other_seed = WarmStartConfig(size="toy", seed=1)
    assert not torch.equal(first.pixel_values, fresh_example(processor, other_seed, 0).pixel_values)
    answer = first.input_ids[first.labels != -100]
    assert answer[-1] == processor.tokenizer.eos_token_id  # the end of turn is learnt too


@pytest.mark.timeout(900)
def test_a_short_warm_start_writes_a_checkpoint_whose_greedy_answers_parse(tmp_path):
    out = tmp_path / "policy"
    command = [
        sys.executable, "recipes/warm_start_tiny_qwen.py", "--size", "toy", "--steps", "150", "--lr", "3e-3",
        "--val-queries", "8", "--sampled-answers", "8", "--render-workers", "0", "--out", str(out),
    ]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=880,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, (run.stdout + run.stderr)[-4000:]
    record = json.loads((out / "warm_start.json").read_text())
    val = record["validation"]
    assert record["loss_last_50"] < record["loss_first_50"] / 2
    assert val["valid_crops"] == 1.0  # with the crop prefix forced, every box parses and is valid
    assert 0.0 <= val["iou"] <= 1.0 and 0.0 <= val["mrr"] <= 1.0
    assert val["sampled"]["parse_rate"] >= 0.5
    # The folder is a complete checkpoint: what verl and recipes/evaluate.py --vlm load from it.
    from transformers import AutoModelForImageTextToText, AutoProcessor

    assert AutoProcessor.from_pretrained(out).image_processor is not None
    assert AutoModelForImageTextToText.from_pretrained(out).num_parameters() == record["parameters"]
