"""Pre-flight of a plan-store volume: does it do what export/engines/store.py relies on?

    writable   this user (the image's uid 1000) creates folders and files there (on Kubernetes:
               the StorageClass's driver applied the pod's fsGroup)
    read-only  a published file (mode 0444) refuses this user's writes
    rename     a folder renamed into place appears whole, under its new name only
    flock      an exclusive lock here excludes another process; shared locks coexist and keep
               an exclusive one out
    crash      the lock of a process killed while holding it is released
    turns      processes (and, with peers > 1, pods on other nodes) taking turns under the lock
               never overlap: a counter each increments under the lock loses no update, and
               every peer sees the others' writes

Run by `python -m deploy preflight [--peers N]`, e.g. the storage pre-flight Job
(k8s/storage-preflight/) whose N pods land on different nodes. Every check says what
failed and what to change; nothing here needs a GPU.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import LockTimeout
from .lock import Deadline, place_bytes, target_lock

_TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
mode = fcntl.LOCK_SH if sys.argv[2] == "shared" else fcntl.LOCK_EX
try:
    fcntl.flock(fd, mode | fcntl.LOCK_NB)
    print("acquired")
except BlockingIOError:
    print("blocked")
"""

_HOLD_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
time.sleep(600)
"""

_TURNS = """
import sys, time
from pathlib import Path
from export.engines.preflight import take_turns
take_turns(Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]))
"""


@dataclass
class Report:
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    def add(self, name: str, ok: bool, detail: str) -> None:
        self.checks.append((name, ok, detail))

    @property
    def ok(self) -> bool:
        return all(ok for _, ok, _ in self.checks)

    def text(self) -> str:
        rows = [f"{'PASS' if ok else 'FAIL'}  {name:<10} {detail}" for name, ok, detail in self.checks]
        return "\n".join(rows + [f"pre-flight: {'passed' if self.ok else 'FAILED'}"])


def _try_lock(path: Path, mode: str) -> str:
    out = subprocess.run([sys.executable, "-c", _TRY_LOCK, str(path), mode], capture_output=True, text=True,
                         timeout=60)
    return out.stdout.strip() or f"error: {out.stderr.strip()[-200:]}"


def check_writable(work: Path, report: Report) -> bool:
    who = f"uid {os.getuid()} gid {os.getgid()} groups {sorted(os.getgroups())}"
    try:
        (work / "dir").mkdir(parents=True)
        (work / "dir" / "file").write_bytes(b"x")
    except OSError as exc:
        report.add("writable", False, f"{who} cannot create files in {work.parent} ({exc}): the volume's driver "
                   "did not apply the pod's fsGroup (CSIDriver fsGroupPolicy) or the export squashes this uid; "
                   "chown the folder to the image's uid/gid once, or pick a StorageClass that applies fsGroup")
        return False
    st = (work / "dir" / "file").stat()
    report.add("writable", True, f"{who} creates files (owned by uid {st.st_uid} gid {st.st_gid})")
    return True


def check_read_only(work: Path, report: Report) -> None:
    f = work / "published"
    f.write_bytes(b"plan")
    os.chmod(f, stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    if os.geteuid() == 0:
        report.add("read-only", True, "running as root: mode 0444 does not stop root; the image runs as uid 1000")
        return
    try:
        with open(f, "ab"):
            pass
        report.add("read-only", False, "a 0444 file accepted a write: the volume ignores permissions "
                   "(e.g. an SMB mount with file_mode): published plans are not protected")
    except PermissionError:
        report.add("read-only", True, "a 0444 file refuses writes")


def check_rename(work: Path, report: Report) -> None:
    part = work / ".partial-key"
    part.mkdir()
    (part / "model.plan").write_bytes(b"plan")
    os.chmod(part, 0o555)
    try:
        os.rename(part, work / "key")
        ok = (work / "key" / "model.plan").read_bytes() == b"plan" and not part.exists()
        report.add("rename", ok, "a read-only folder renamed into place appears whole" if ok
                   else "the renamed folder is not visible whole under its new name")
    except OSError as exc:
        report.add("rename", False, f"renaming a folder failed ({exc}): plans cannot be published atomically")


def check_flock(work: Path, report: Report) -> None:
    target = work / "lock"
    with target_lock(target, timeout_s=10):
        other = _try_lock(work / ".lock.lock", "exclusive")
    with target_lock(target, timeout_s=10, shared=True):
        shared = _try_lock(work / ".lock.lock", "shared")
        exclusive = _try_lock(work / ".lock.lock", "exclusive")
    ok = (other, shared, exclusive) == ("blocked", "acquired", "blocked")
    report.add("flock", ok, "exclusive excludes, shared coexist and exclude exclusive" if ok else
               f"another process got: exclusive-vs-exclusive {other}, shared-vs-shared {shared}, "
               f"exclusive-vs-shared {exclusive} (wanted blocked, acquired, blocked): the volume's locks do not "
               "work across processes (NFSv3 without lockd, some SMB/FUSE drivers); builders would race")


def check_crash_release(work: Path, report: Report, wait_s: float = 90.0) -> None:
    lock = work / ".crash.lock"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        if holder.stdout.readline().strip() != "locked":
            report.add("crash", False, "the helper process could not take the lock")
            return
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(10)
        t0 = time.monotonic()
        while _try_lock(lock, "exclusive") != "acquired":
            if time.monotonic() - t0 > wait_s:
                report.add("crash", False, f"a killed holder's lock was still held after {wait_s:.0f} s: a crashed "
                           "builder would block every start until the deadline")
                return
            time.sleep(1)
        report.add("crash", True, f"a killed holder's lock was released after {time.monotonic() - t0:.1f} s")
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait(10)


# -- turns under the lock (processes here, or pods on several nodes) --------------------------
def take_turns(run: Path, turns: int, hold_s: float, wait_s: float = 600.0) -> None:
    """Increment run/counter `turns` times under the run's lock (read, hold, write), then
    leave a done-<host>-<pid> file. Overlapping holders lose increments."""
    deadline = Deadline(wait_s, "pre-flight turns")
    for _ in range(turns):
        with target_lock(run / "counter", deadline=deadline, poll_s=0.05):
            f = run / "counter"
            n = int(f.read_text()) if f.is_file() else 0
            time.sleep(hold_s)
            place_bytes(str(n + 1).encode(), f)
    (run / f"done-{socket.gethostname()}-{os.getpid()}").write_text(str(turns))


def verify_turns(counter: int, done: list[str], turns_each: int) -> tuple[bool, str]:
    """Pure: did every turn of every peer count? (`done` = names of the done files)."""
    want = len(done) * turns_each
    hosts = sorted({d.removeprefix("done-").rsplit("-", 1)[0] for d in done})
    if counter != want:
        return False, (f"{len(done)} holders x {turns_each} turns should count {want}, the counter says {counter}: "
                       "two holders were inside the lock at once (locks do not exclude across nodes)")
    return True, f"{want} turns by {len(done)} holders on {len(hosts)} node(s) ({', '.join(hosts)}), none lost"


def check_turns(root: Path, report: Report, peers: int, run_id: str, turns: int = 3, hold_s: float = 0.2,
                wait_s: float = 600.0, log: Callable[[str], None] = print) -> None:
    """peers == 1: two local processes take turns. peers > 1: this pod is one of `peers`
    (same run_id) and waits for the others' done files before checking."""
    run = root / ".preflight" / (run_id or f"local-{socket.gethostname()}-{os.getpid()}")
    run.mkdir(parents=True, exist_ok=True)
    if peers <= 1:
        procs = [subprocess.Popen([sys.executable, "-c", _TURNS, str(run), str(turns), str(hold_s)],
                                  env=_with_project_path()) for _ in range(2)]
        codes = [p.wait(wait_s) for p in procs]
        if any(codes):
            report.add("turns", False, f"the turn-taking processes failed (exit {codes})")
            return
        expected = 2
    else:
        take_turns(run, turns, hold_s, wait_s)
        expected = peers
        t0 = time.monotonic()
        while len(list(run.glob("done-*"))) < peers and time.monotonic() - t0 < wait_s:
            time.sleep(1)
    done = sorted(p.name for p in run.glob("done-*"))
    if len(done) < expected:
        report.add("turns", False, f"only {len(done)} of {expected} peers finished within {wait_s:.0f} s "
                   f"(run {run.name}): pods not scheduled, or they do not see each other's writes")
        return
    ok, detail = verify_turns(int((run / "counter").read_text()), done, turns)
    if ok and peers > 1 and len({d.rsplit("-", 1)[0] for d in done}) < 2:
        detail += " - all on ONE node: cross-node exclusion is unproven (check the Job's anti-affinity)"
    report.add("turns", ok, detail)
    log(f"pre-flight run {run.name}: {detail}")
    if peers <= 1:
        shutil.rmtree(run, ignore_errors=True)


def _with_project_path() -> dict:
    root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def run_preflight(root: Path, peers: int = 1, run_id: str = "", log: Callable[[str], None] = print,
                  crash_wait_s: float = 90.0, wait_s: float = 600.0) -> Report:
    report = Report()
    root = Path(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".preflight-", dir=root))
    except OSError as exc:
        report.add("writable", False, f"cannot create a folder in {root} as uid {os.getuid()} ({exc}): fsGroup not "
                   "applied by the volume's driver, or a read-only mount")
        return report
    try:
        if check_writable(work, report):
            check_read_only(work, report)
            check_rename(work, report)
            check_flock(work, report)
            check_crash_release(work, report, crash_wait_s)
            try:
                check_turns(root, report, peers, run_id, wait_s=wait_s, log=log)
            except LockTimeout as exc:
                report.add("turns", False, str(exc))
    finally:
        for d, _, _ in os.walk(work):
            os.chmod(d, stat.S_IRWXU)
        shutil.rmtree(work, ignore_errors=True)
    return report
