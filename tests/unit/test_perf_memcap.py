"""The memory cap really stops a process, and says which mechanism it used."""
from __future__ import annotations

import sys

from perf.memcap import MemoryCap, run_capped

ALLOC = "import numpy as np; a = np.ones({n} << 20, np.uint8); print(int(a.sum()))"


def _run(tmp_path, mib, cap):
    return run_capped([sys.executable, "-c", ALLOC.format(n=mib)], cap, stdout_path=tmp_path / "out",
                      stderr_path=tmp_path / "err", timeout_s=60)


def test_allocation_over_the_cap_fails_and_is_reported(tmp_path):
    run = _run(tmp_path, 600, 256 << 20)
    assert run.returncode != 0 and run.killed_at_cap
    assert run.cap.bytes == 256 << 20 and run.cap.method in ("cgroup-v2", "rlimit")
    assert "256.0 MiB" in run.cap.describe()


def test_allocation_under_the_cap_runs_and_peak_is_measured(tmp_path):
    run = _run(tmp_path, 100, 1 << 30)
    assert run.returncode == 0 and not run.killed_at_cap
    assert (tmp_path / "out").read_text().strip() == str(100 << 20)
    assert 100 << 20 <= run.peak_rss_bytes < 1 << 30


def test_rlimit_fallback_when_cgroups_are_not_used():
    cap = MemoryCap(1 << 30, prefer_cgroup=False)
    try:
        assert cap.info.method == "rlimit" and "RLIMIT_DATA" in cap.info.detail
    finally:
        cap.close()
