"""Per-target build lock and atomic placement.

Several GPUs or pods may run `make export-engines` on one shared repository at once.
Each target (a plan file) has its own lock file beside it; the first process builds,
the others wait, then re-check staleness under the lock and find the plan up to date.
Files are written to a temporary name in the same directory and `os.replace`d into
place, so Triton or a reader never sees half a plan.

flock(2) locks belong to the open file description: threads or processes that open the
lock file separately exclude each other, and the kernel drops the lock if the holder
dies (no stale lock files to clean up). On NFS, Linux emulates flock with POSIX locks.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Iterator

from .errors import LockTimeout


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def target_lock(target: Path, timeout_s: float = 3600.0, poll_s: float = 0.5,
                on_wait: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold the exclusive build lock of `target`; report (once) who we are waiting for."""
    path = lock_path(Path(target))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    on_wait(f"{target}: waiting for the build lock held by {holder}")
                    told = True
                if time.monotonic() >= deadline:
                    raise LockTimeout(f"{target}: build lock {path} still held after {timeout_s:.0f} s; "
                                      "another build is running (or hung) - wait, or stop it") from None
                time.sleep(poll_s)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def temp_name(target: Path) -> Path:
    """A unique temporary sibling of `target` (same filesystem, so os.replace is atomic)."""
    return target.with_name(f".{target.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")


def place_bytes(data: bytes, target: Path) -> Path:
    tmp = temp_name(target)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def place_file(src: Path, target: Path) -> Path:
    """Atomically make `target` a copy of `src` (hard link when possible: no extra bytes)."""
    tmp = temp_name(target)
    try:
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target
