"""Torch's CPU threads: chosen by the caller, never inherited into a broken pool.

Two things live here, because both are about torch's intra-op threads:

- :func:`set_threads`, the one place recipes set the number of intra-op threads (their
  ``--threads`` flag); :data:`DEFAULT_THREADS` is the default every recipe shows (see
  ``docs/threads.md`` for the measurements behind it).
- A fork handler, registered when ``envs`` is imported: a child process started by
  ``fork`` (the default start method on Linux, what ``gym.make_vec(...,
  vectorization_mode="async")`` uses) runs torch with one intra-op thread.

Why the fork handler: this torch's CPU kernels run on a GNU OpenMP (libgomp) thread
pool. Once the parent has run one parallel kernel (building an open_clip model is
enough: its causal mask is a ``triu``), the pool exists in the parent, but ``fork`` copies
only the calling thread. The child's first parallel kernel then waits forever for pool
threads that do not exist (seen: every ``AsyncVectorEnv`` worker stuck in
``apply_triu_tril`` inside libgomp while the parent blocked in ``_check_spaces`` ->
``pipe.send``). With one thread, torch runs every kernel inline and never enters the
pool, so the child is safe; PyTorch's own ``DataLoader`` workers do the same
(``torch.set_num_threads(1)`` in each worker). ``spawn`` and ``forkserver`` children
start a fresh interpreter and are untouched. A forked child that wants more threads may
call :func:`set_threads` itself, but only if its parent never ran a parallel kernel.
"""

from __future__ import annotations

import os
import sys

DEFAULT_THREADS = 1
"""Intra-op threads every recipe uses unless told otherwise (``--threads``): on 2 cores
shared with another job one thread was 7-120x faster than two for the env, evaluation
and the CPU trainer (``recipes/bench_threads.py``, ``docs/threads.md``)."""


def set_threads(threads: int) -> None:
    """Set torch's intra-op CPU threads of this process (the recipes' ``--threads``).

    Raises:
        ValueError: if ``threads`` is not a positive integer.
    """
    if isinstance(threads, bool) or int(threads) != threads or threads < 1:
        raise ValueError(f"threads={threads!r}; expected a positive integer")
    import torch

    torch.set_num_threads(int(threads))


def _one_thread_in_forked_child() -> None:
    """After ``fork``, in the child: one intra-op thread (see the module docstring)."""
    torch = sys.modules.get("torch")  # a child of a process that never imported torch has no pool
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):  # POSIX only; Windows has no fork
    os.register_at_fork(after_in_child=_one_thread_in_forked_child)
