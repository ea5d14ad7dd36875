"""Run a command under a hard memory cap, and say which cap it was.

Preferred: a fresh cgroup v2 child with `memory.max` (counts everything the process
really touches, page cache included, and kills the whole group at the cap). Only
possible where this process sits in a cgroup v2 hierarchy whose `memory` controller is
enabled for children and the folder is writable. Otherwise: rlimits set in the child
before exec. RLIMIT_DATA (heap + private anonymous mappings, Linux >= 4.7) is the real
cap; RLIMIT_AS gets generous headroom because gRPC threads reserve large stacks of
virtual memory they never touch (perf_analyzer dies at thread start under a tight AS).
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .units import human_bytes

AS_HEADROOM = 4 << 30
DEFAULT_CAP_CEILING = 4 << 30
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"))


@dataclass(frozen=True)
class CapInfo:
    bytes: int
    method: str          # "cgroup-v2" or "rlimit"
    detail: str          # the cgroup path or the rlimits set

    def describe(self) -> str:
        return f"memory cap {human_bytes(self.bytes)} via {self.method} ({self.detail})"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CappedRun:
    returncode: int
    wall_s: float
    peak_rss_bytes: int      # the child's max RSS (getrusage via wait4)
    cap: CapInfo
    killed_at_cap: bool      # the cgroup OOM-killed it, or the allocator hit the rlimit
    timed_out: bool


def default_cap() -> int:
    """min(4 GiB, half of MemAvailable): shared CI machines must stay usable."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return min(DEFAULT_CAP_CEILING, int(line.split()[1]) * 1024 // 2)
    except OSError:
        pass
    return DEFAULT_CAP_CEILING


def _own_cgroup_v2() -> Path | None:
    """The writable cgroup v2 folder of this process with `memory` delegable, else None."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    rel = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), None)
    if rel is None:
        return None
    for root in CGROUP_ROOTS:
        if not (root / "cgroup.controllers").is_file():
            continue
        base = root / rel.lstrip("/")
        try:
            delegated = (base / "cgroup.subtree_control").read_text().split()
        except OSError:
            continue
        if "memory" in delegated and os.access(base, os.W_OK):
            return base
    return None


class MemoryCap:
    """Prepare the cap, give Popen its `preexec_fn`, clean up afterwards."""

    def __init__(self, cap_bytes: int, prefer_cgroup: bool = True):
        self.cap_bytes = int(cap_bytes)
        self._cgroup: Path | None = None
        base = _own_cgroup_v2() if prefer_cgroup else None
        if base is not None:
            cg = base / f"visionserve-perf-{os.getpid()}-{time.monotonic_ns()}"
            try:
                cg.mkdir()
                (cg / "memory.max").write_text(str(self.cap_bytes))
                if (cg / "memory.swap.max").exists():
                    (cg / "memory.swap.max").write_text("0")
                self._cgroup = cg
            except OSError:
                self._remove_cgroup(cg)
        if self._cgroup is not None:
            self.info = CapInfo(self.cap_bytes, "cgroup-v2", f"memory.max in {self._cgroup}")
        else:
            self.info = CapInfo(self.cap_bytes, "rlimit",
                                f"RLIMIT_DATA={human_bytes(self.cap_bytes)}, RLIMIT_AS=cap+"
                                f"{human_bytes(AS_HEADROOM)}; no writable cgroup v2 memory controller")

    def preexec(self) -> None:  # runs in the child between fork and exec
        if self._cgroup is not None:
            (self._cgroup / "cgroup.procs").write_text(str(os.getpid()))
        else:
            resource.setrlimit(resource.RLIMIT_DATA, (self.cap_bytes, self.cap_bytes))
            total = self.cap_bytes + AS_HEADROOM
            resource.setrlimit(resource.RLIMIT_AS, (total, total))

    def oom_killed(self) -> bool:
        if self._cgroup is None:
            return False
        try:
            for line in (self._cgroup / "memory.events").read_text().splitlines():
                key, val = line.split()
                if key == "oom_kill" and int(val) > 0:
                    return True
        except OSError:
            pass
        return False

    def close(self) -> None:
        if self._cgroup is not None:
            self._remove_cgroup(self._cgroup)
            self._cgroup = None

    @staticmethod
    def _remove_cgroup(cg: Path) -> None:
        for _ in range(50):  # the group empties a moment after its last process is reaped
            try:
                cg.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)


# Allocation failures as perf_analyzer (C++) and glibc report them under an rlimit.
_ALLOC_FAILURE_MARKERS = ("std::bad_alloc", "Cannot allocate memory", "Resource temporarily unavailable",
                          "MemoryError", "Unable to allocate",
                          "out of memory")


# Linux charges a forked child with its parent's peak RSS (copied at fork, kept across
# exec), so a child forked from a big process (pytest with torch loaded) reports the
# parent's gigabytes. A small launcher, exec'd first, forks the real command from its own
# small address space and records that grandchild's ru_maxrss (as GNU time does).
_LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as exc:
        sys.stderr.write(f"cannot run {sys.argv[2]}: {exc}\\n")
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


def _child_maxrss(path: Path, usage) -> int:
    try:
        return int(path.read_text()) * 1024
    except (OSError, ValueError):   # launcher killed (timeout, cap): fall back to its own figure
        return int(usage.ru_maxrss) * 1024
    finally:
        path.unlink(missing_ok=True)


def run_capped(cmd: list[str], cap_bytes: int, *, env: dict | None = None, stdout_path: Path,
               stderr_path: Path, timeout_s: float, cwd: Path | None = None) -> CappedRun:
    """Run `cmd` to completion under the cap; stdout/stderr go to files (no pipe deadlocks)."""
    cap = MemoryCap(cap_bytes)
    t0 = time.monotonic()
    timed_out = False
    try:
        with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
            rss_path = Path(stdout_path).with_suffix(".maxrss")
            rss_path.unlink(missing_ok=True)
            proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(rss_path), *cmd], stdout=out, stderr=err,
                                    env=env, cwd=cwd, preexec_fn=cap.preexec, start_new_session=True)
            deadline = t0 + timeout_s
            while True:
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    break
                if time.monotonic() > deadline:
                    timed_out = True
                    os.killpg(proc.pid, 9)
                    pid, status, usage = os.wait4(proc.pid, 0)
                    break
                time.sleep(0.05)
            proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping again
        tail = Path(stderr_path).read_text(errors="replace")[-4000:] + \
            Path(stdout_path).read_text(errors="replace")[-2000:]
        killed = cap.oom_killed() or (proc.returncode != 0 and any(m in tail for m in _ALLOC_FAILURE_MARKERS))
        return CappedRun(returncode=proc.returncode, wall_s=time.monotonic() - t0,
                         peak_rss_bytes=_child_maxrss(rss_path, usage), cap=cap.info,
                         killed_at_cap=killed, timed_out=timed_out)
    finally:
        cap.close()
