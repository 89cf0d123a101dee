"""envs/atomic.py: files and folders written so that a killed writer leaves nothing a later
run would take for whole, and two concurrent builders leave one writer's whole folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from envs.atomic import atomic_dir, atomic_open, atomic_write_bytes, atomic_write_json, atomic_write_text

REPO = Path(__file__).resolve().parents[2]

# Writers that report each chunk they have written ("chunk N" on stdout) and, when stepped,
# wait for a line on stdin before the next: the test kills them at a known point of the write.
SLOW_FILE_WRITER = """
import sys
from envs.atomic import atomic_open
path, chunks = sys.argv[1], int(sys.argv[2])
with atomic_open(path, "w") as handle:
    for n in range(chunks):
        handle.write("x" * 1000 + "\\n")
        handle.flush()
        print(f"chunk {n}", flush=True)
        sys.stdin.readline()
"""

SLOW_DIR_WRITER = """
import os, sys
from envs.atomic import atomic_dir
path, files, stepped = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "stepped"
with atomic_dir(path) as partial:
    for n in range(files):
        (partial / f"part{n}.txt").write_text(str(os.getpid()))
        print(f"chunk {n}", flush=True)
        if stepped:
            sys.stdin.readline()
    (partial / "done.txt").write_text(str(os.getpid()))
print("finished", flush=True)
"""


def start(script: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)], cwd=REPO,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})


def kill_after(process: subprocess.Popen, chunk: int) -> None:
    """SIGKILL a stepped writer once it has reported writing ``chunk`` (and waits for a step)."""
    for line in process.stdout:
        if line.strip() == f"chunk {chunk}":
            break
        process.stdin.write("\n")
        process.stdin.flush()
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_whole_file_writes_round_trip(tmp_path):
    assert atomic_write_text(tmp_path / "a" / "t.txt", "héllo").read_text(encoding="utf-8") == "héllo"
    assert atomic_write_bytes(tmp_path / "b.bin", b"\0\1").read_bytes() == b"\0\1"
    assert json.loads(atomic_write_json(tmp_path / "c.json", {"k": [1, 2]}).read_text()) == {"k": [1, 2]}
    assert visible(tmp_path) == ["a", "b.bin", "c.json"] and not list(tmp_path.glob(".*"))


def test_a_failed_write_keeps_the_old_file(tmp_path):
    path = atomic_write_text(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as handle:
            handle.write("new, half")
            raise RuntimeError("writer failed")
    assert path.read_text() == "old" and list(tmp_path.iterdir()) == [path]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunk", [0, 3, 9])
def test_a_killed_file_writer_leaves_the_old_file_or_none(tmp_path, chunk):
    fresh, existing = tmp_path / "fresh.txt", atomic_write_text(tmp_path / "existing.txt", "old")
    for path in (fresh, existing):
        kill_after(start(SLOW_FILE_WRITER, path, 10), chunk)
    assert not fresh.exists() and existing.read_text() == "old"
    assert visible(tmp_path) == ["existing.txt"]  # only hidden temporaries beside it


@pytest.mark.timeout(60)
@pytest.mark.parametrize("chunk", [0, 5])
def test_a_killed_folder_builder_leaves_no_folder_and_the_next_build_completes(tmp_path, chunk):
    target = tmp_path / "cache"
    kill_after(start(SLOW_DIR_WRITER, target, 6, "stepped"), chunk)
    assert not target.exists()
    finished = start(SLOW_DIR_WRITER, target, 3, "free")
    assert finished.communicate(timeout=30)[0].strip().endswith("finished")
    assert visible(target) == ["done.txt", "part0.txt", "part1.txt", "part2.txt"]


@pytest.mark.timeout(60)
def test_two_concurrent_folder_builders_leave_one_whole_folder(tmp_path):
    target = tmp_path / "cache"
    builders = [start(SLOW_DIR_WRITER, target, 8, "stepped") for _ in range(2)]
    # Step both in lockstep so their builds overlap, then let them finish together.
    for _ in range(8):
        for builder in builders:
            builder.stdout.readline()
        for builder in builders:
            builder.stdin.write("\n")
            builder.stdin.flush()
    for builder in builders:
        assert builder.communicate(timeout=30)[0].strip().endswith("finished") and builder.returncode == 0
    assert visible(target) == ["done.txt", *(f"part{n}.txt" for n in range(8))]
    owners = {(target / name).read_text() for name in visible(target)}
    assert len(owners) == 1  # every file from the same builder, never a mix
    assert visible(tmp_path) == ["cache"] and not list(tmp_path.glob(".*"))  # the loser's copy is gone


def test_an_interrupted_folder_build_in_process_removes_its_copy(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "cache") as partial:
            (partial / "half.txt").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
