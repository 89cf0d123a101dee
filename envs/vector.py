"""The question's ``Text`` space, readable through ``AsyncVectorEnv``'s shared memory.

``gymnasium.vector.AsyncVectorEnv`` (shared memory on, its default) reads its observation
buffer once, when it is built, and hands out that object after every step: arrays read
from shared memory are views, so they follow the workers' writes, but gymnasium 1.4 reads
a ``Text`` batch as a tuple of strings, a copy that never changes. A question read that
way is its character 0 repeated (``"\\t\\t\\t..."``) on every step, silently.

:class:`QuestionText` is a ``Text`` whose batch is read through
``gymnasium.vector.utils.read_from_shared_memory``'s own extension point (a
``functools.singledispatch`` registration for this subclass only) as
:class:`SharedTexts`: a sequence that decodes the buffer when it is indexed, so it is
current after every step, and that deep-copies (what ``AsyncVectorEnv`` returns with its
default ``copy=True``) to a plain tuple of strings. Creating and writing the buffer are
gymnasium's own ``Text`` functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import read_from_shared_memory

__all__ = ["QuestionText", "SharedTexts"]


class QuestionText(spaces.Text):
    """The observation's question: a ``gymnasium.spaces.Text`` whose async vector batch
    stays current (see the module docstring); everything else is ``Text``'s."""


class SharedTexts(Sequence):
    """The questions in an ``AsyncVectorEnv``'s shared buffer, decoded when read.

    Args:
        space: the single env's question space.
        buffer: the shared ``int32`` array of ``n * space.max_length`` character indices
            (gymnasium's ``Text`` layout: index ``len(charset)`` pads).
        n: number of sub-envs.
    """

    def __init__(self, space: spaces.Text, buffer, n: int):
        self._space = space
        self._codes = np.frombuffer(buffer.get_obj(), dtype=np.int32).reshape(n, space.max_length)

    def __len__(self) -> int:
        return len(self._codes)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return tuple(self[i] for i in range(len(self))[index])
        characters = self._space.character_list
        return "".join(characters[code] for code in self._codes[index] if code < len(characters))

    def __deepcopy__(self, memo) -> tuple[str, ...]:
        return tuple(self)

    def __eq__(self, other) -> bool:
        return isinstance(other, Sequence) and tuple(self) == tuple(other)

    def __repr__(self) -> str:
        return repr(tuple(self))


@read_from_shared_memory.register(QuestionText)
def _read_questions(space: QuestionText, shared_memory, n: int = 1) -> SharedTexts:
    return SharedTexts(space, shared_memory, n)
