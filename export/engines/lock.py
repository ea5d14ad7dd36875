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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from .errors import LockTimeout


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


@dataclass
class Deadline:
    """One budget for all the lock waits of a run, so a start that meets several held
    locks fails after `seconds` in total, not after one timeout per lock."""

    seconds: float
    setting: str = ""              # where the budget is set, named in the error
    start: float = field(default_factory=time.monotonic)

    def remaining(self) -> float:
        return max(0.0, self.start + self.seconds - time.monotonic())


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


@contextlib.contextmanager
def target_lock(target: Path, timeout_s: float = 3600.0, poll_s: float = 0.5,
                on_wait: Callable[[str], None] | None = None, deadline: Deadline | None = None,
                shared: bool = False) -> Iterator[Path]:
    """Hold the exclusive build lock of `target`; report (once) who we are waiting for.

    Waits at most `timeout_s`, and never past `deadline` when one is given. `shared` takes
    the lock shared instead (many holders at once, excluding an exclusive one); shared
    holders do not write their name into the file.
    """
    path = lock_path(Path(target))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        t0 = time.monotonic()
        limit = min(timeout_s, deadline.remaining()) if deadline is not None else timeout_s
        told = False
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told and on_wait is not None:
                    on_wait(f"{target}: waiting for the build lock held by {_holder(fd)}")
                    told = True
                if time.monotonic() - t0 >= limit:
                    raise LockTimeout(_timeout_message(target, path, _holder(fd), time.monotonic() - t0,
                                                       timeout_s, deadline)) from None
                time.sleep(poll_s)
        if not shared:
            os.ftruncate(fd, 0)
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename} since {since}".encode(), 0)
        try:
            yield path
        finally:
            if not shared:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _timeout_message(target: Path, path: Path, holder: str, waited: float, timeout_s: float,
                     deadline: Deadline | None) -> str:
    if deadline is not None and deadline.remaining() <= 0:
        budget = (f"the overall deadline of {deadline.seconds:.0f} s for lock waits"
                  f"{f' ({deadline.setting})' if deadline.setting else ''} is spent")
    else:
        budget = f"gave up after {timeout_s:.0f} s"
    return (f"{target}: waited {waited:.0f} s for the build lock {path}, still held by {holder}; {budget}. "
            "Another build of the same plan is running (or hung): find that process (pod, node) and wait for "
            "it or stop it; a crashed holder's lock is released by the kernel (NFS: when its lease expires)")


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
