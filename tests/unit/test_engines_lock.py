"""Per-target lock and atomic placement, with real concurrent processes."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from export.engines.errors import LockTimeout
from export.engines.lock import lock_path, place_bytes, place_file, target_lock
from tests.conftest import REPO_ROOT

_HOLDER = """
import sys, time
from pathlib import Path
from export.engines.lock import target_lock
target, log = Path(sys.argv[1]), Path(sys.argv[2])
with target_lock(target, timeout_s=60, poll_s=0.05):
    with open(log, "a") as f:
        f.write(f"start {time.monotonic()}\\n")
    time.sleep(0.4)
    with open(log, "a") as f:
        f.write(f"end {time.monotonic()}\\n")
"""


def test_processes_take_turns(tmp_path):
    target, log = tmp_path / "model.sm90.plan", tmp_path / "log.txt"
    procs = [subprocess.Popen([sys.executable, "-c", _HOLDER, str(target), str(log)], cwd=REPO_ROOT)
             for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    events = [line.split() for line in log.read_text().splitlines()]
    assert [e[0] for e in events] == ["start", "end"] * 3     # never two holders at once
    assert lock_path(target).name == ".model.sm90.plan.lock"


def test_timeout_names_the_holder(tmp_path):
    target = tmp_path / "model.plan"
    waits = []
    with target_lock(target):
        err = []

        def contender():
            try:
                with target_lock(target, timeout_s=0.3, poll_s=0.05, on_wait=waits.append):
                    pass
            except LockTimeout as exc:
                err.append(str(exc))

        t = threading.Thread(target=contender)
        t.start()
        t.join(timeout=10)
    assert err and f"still held by pid {os.getpid()}" in err[0] and "gave up after 0 s" in err[0]
    assert waits and f"pid {os.getpid()}" in waits[0]
    with target_lock(target, timeout_s=1):      # released: free again
        pass


def test_atomic_placement_leaves_no_temporaries(tmp_path):
    target = tmp_path / "model.plan"
    place_bytes(b"first", target)
    place_bytes(b"second", target)
    assert target.read_bytes() == b"second"
    copy = place_file(target, tmp_path / "model.sm90.plan")
    assert copy.read_bytes() == b"second"
    place_bytes(b"third", target)                 # a new inode: the copy keeps its bytes
    assert copy.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.plan", "model.sm90.plan"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.plan"
    place_bytes(b"good", target)
    with pytest.raises(TypeError):
        place_bytes("not bytes", target)          # a bug mid-write
    assert target.read_bytes() == b"good" and len(list(tmp_path.iterdir())) == 1


def test_shared_holders_coexist_and_keep_an_exclusive_one_out(tmp_path):
    from export.engines.lock import Deadline

    target = tmp_path / "store"
    with target_lock(target, shared=True), target_lock(target, timeout_s=1, shared=True):
        with pytest.raises(LockTimeout, match=r"overall deadline of 0 s for lock waits \(test budget\)"):
            with target_lock(target, poll_s=0.05, deadline=Deadline(0.2, "test budget")):
                pass
    with target_lock(target, timeout_s=1):          # all shared holders gone: exclusive is free
        pass
