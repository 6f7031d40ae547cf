"""Atomic writes and exclusive locks (nas/files.py), with real threads and processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import BinaryIO

import pytest

from nas.files import exclusive_lock, write_atomic


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_atomic(path, lambda f: f.write(b"old, complete"))

    def dies_half_way(f: BinaryIO) -> None:
        f.write(b"new, but only ha")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_atomic(path, dies_half_way)
    assert path.read_bytes() == b"old, complete"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_concurrent_writers_of_one_name_never_share_a_temporary(tmp_path: Path) -> None:
    """Both writers are mid-write at once; each file that lands is one writer's whole content."""
    path = tmp_path / "epoch_1.pt"
    both_writing = threading.Barrier(2, timeout=10)
    temporaries: list[str] = []

    def writer(content: bytes) -> None:
        def write(f: BinaryIO) -> None:
            temporaries.append(os.readlink(f"/proc/self/fd/{f.fileno()}"))  # the file being written
            f.write(content[:5])
            both_writing.wait()
            f.write(content[5:])

        write_atomic(path, write)

    threads = [threading.Thread(target=writer, args=(c * 1000,)) for c in (b"a", b"b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert len(set(temporaries)) == 2 and all(Path(t).parent == tmp_path for t in temporaries)
    assert path.read_bytes() in (b"a" * 1000, b"b" * 1000)
    assert [p.name for p in tmp_path.iterdir()] == ["epoch_1.pt"]


HOLD_LOCK = """
import fcntl, sys, time
handle = open(sys.argv[1], "a")
fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(60)
"""


def test_lock_waits_for_its_holder_and_is_freed_when_the_holder_dies(tmp_path: Path) -> None:
    lock = tmp_path / "key.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        waited: list[bool] = []

        def on_wait() -> None:  # the holder crashes while we wait: the kernel releases its lock
            waited.append(True)
            holder.kill()

        with exclusive_lock(lock, on_wait):
            assert holder.wait(timeout=10) != 0
        assert waited == [True]
        with exclusive_lock(lock, lambda: waited.append(False)):  # free now: no wait
            pass
        assert waited == [True] and lock.exists()
    finally:
        holder.kill()
        holder.wait(timeout=10)
