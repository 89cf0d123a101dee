"""The question as numbers: the hashed bag of words SB3-style learners read."""

from __future__ import annotations

import inspect
import json
import re
import subprocess
import sys

import numpy as np

from envs.data.synthetic import CELLS, BenchmarkConfig, split_specs
from envs.wrappers import HashedQuestion, hashed_bag_of_words


def test_words_are_hashed_the_same_in_every_process_and_case():
    vector = hashed_bag_of_words("What is the striped object at the TOP?", 2048)
    code = "from envs.wrappers import hashed_bag_of_words; import json; print(json.dumps(hashed_bag_of_words('what is the striped object at the top', 2048).nonzero()[0].tolist()))"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert vector.nonzero()[0].tolist() == json.loads(other.stdout)
    assert vector.dtype == np.float32 and set(np.unique(vector)) == {0.0, 1.0}


def test_the_default_buckets_keep_every_position_word_apart_from_every_other_word():
    # A learner can only map "top" to a box if no other word of the questions shares its bucket.
    questions = [spec.question for spec in split_specs(BenchmarkConfig(train_queries=400), "train")]
    vocabulary = {word for question in questions for word in re.findall(r"[a-z]+", question.lower())}
    positions = {word for phrase in CELLS.values() for word in phrase.split()} - {"in", "the", "at", "on"}
    assert positions <= vocabulary
    dim = inspect.signature(HashedQuestion).parameters["dim"].default
    bucket = {word: int(hashed_bag_of_words(word, dim).argmax()) for word in vocabulary}
    for word in positions:
        assert [w for w in vocabulary if w != word and bucket[w] == bucket[word]] == [], word
