"""verl's synchronous replay buffer with a short poll: the sampler of ``train_rgrpo.py verl-cpu``.

verl's v1 trainer waits for a step's rollouts by polling TransferQueue; its built-in
:class:`~verl.trainer.ppo.v1.replay_buffer.ReplayBuffer` sleeps ``poll_interval`` = 2 s
between polls and the config cannot change it. On a GPU a step takes minutes and 2 s is
noise; on a CPU a step of a tiny policy takes a few seconds, and the generation phase
came in 2-second quanta. :class:`QuickPollReplayBuffer` is the same buffer with a
:data:`POLL_INTERVAL_S` poll, plugged in through verl's own extension point::

    trainer.v1.sampler.custom_sampler.path=pkg://agents.verl.sampler
    trainer.v1.sampler.custom_sampler.name=QuickPollReplayBuffer
"""

from __future__ import annotations

from typing import Any

from verl.trainer.ppo.v1.replay_buffer import ReplayBuffer

POLL_INTERVAL_S = 0.05
"""Seconds between TransferQueue polls (verl's default: 2.0)."""


class QuickPollReplayBuffer(ReplayBuffer):
    """verl's synchronous replay buffer, polling every :data:`POLL_INTERVAL_S` seconds."""

    def __init__(self, *args: Any, poll_interval: float = POLL_INTERVAL_S, **kwargs: Any):
        super().__init__(*args, poll_interval=poll_interval, **kwargs)
