"""Writes that are never seen half-done: every cache and output a later run reads goes through here.

A file is written to a temporary name in its own folder, flushed to disk (``fsync``) and
renamed over the final name (``os.replace``, atomic on POSIX within one file system): a
reader sees the old file or the new one, never part of one, whatever kills the writer.
A folder is built under a temporary name beside the final one and renamed into place;
when two processes build the same folder at once, the first rename wins and the loser
discards its copy (:func:`atomic_dir`), so the folder is always one writer's whole work.

A killed writer leaves at most a hidden ``.<name>.*.tmp`` file or folder behind, which no
reader takes for the real thing.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator


def _fsync_dir(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is flushed,
    synced and renamed to ``path``; on an exception it is removed and ``path`` is untouched.

    ``mode`` is ``"w"`` or ``"wb"``; ``kwargs`` go to :func:`open` (``encoding``, ``newline``).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes whole files: mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    with atomic_open(path, "w", encoding=encoding) as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, data: Any, **dump_kwargs) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (``dump_kwargs`` go to :func:`json.dumps`)."""
    return atomic_write_text(path, json.dumps(data, **dump_kwargs))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj, path)``, atomically."""
    import torch

    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a folder under a temporary name beside ``path``; on a clean exit rename it to
    ``path``.

    Yields the temporary folder to write into. If ``path`` already exists when the build
    ends (a concurrent builder finished first), the finished folder is kept and this
    build is discarded: both callers then see one complete folder. On an exception the
    temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield partial
        try:
            os.rename(partial, path)
        except OSError as err:
            # ENOTEMPTY/EEXIST: the other builder won; its folder is as whole as ours.
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not path.is_dir():
                raise
        else:
            _fsync_dir(path.parent)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
