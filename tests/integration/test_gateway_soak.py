"""`make soak` for SOAK_S (10 s here, 60 s in make test-load; `make soak` runs 600 s): the
gateway and a Triton of fixed-time stand-ins at 0.7 x C, then no error but in seconds when
the hypervisor took >= 10% of the VM's CPU (measured, printed; others <= 0.1% of the
requests, see perf/soak.py; a run mostly under such steal is skipped as not judged), RSS
grown under 5%, fds not above where they started, every shared-memory slot free again. The short
run still catches what leaks per request (a slot, an fd, a buffer: ~560 requests) and a
gateway that errs under steady load."""
from __future__ import annotations

import os

import pytest

from tests.support.triton import require_triton

pytestmark = pytest.mark.integration
SECONDS = float(os.environ.get("VISIONSERVE_SOAK_TEST_S", 10))


@pytest.mark.load
def test_a_soak_holds(tmp_path):
    pytest.importorskip("httpx")
    require_triton()
    from perf import soak

    # a short warm-up: the pool reaches its working size in a second at 0.7 x C. No queue
    # deadline on the stand-in: in the suite, other processes on the same 2 cores delay its
    # executions by 150+ ms now and then, and yolo's 200 ms queue timeout then refuses a few
    # requests (CI: 3 of 1,120, 429) whatever the gateway does; StealWatch sees only the
    # hypervisor's steal. What this run judges is the gateway: no error of its own, nothing
    # leaked. `make soak` keeps yolo's queue policy and judges the whole path.
    result = soak.run(SECONDS, work=tmp_path, warmup_s=min(soak.WARMUP_S, SECONDS / 4),
                      queue_timeout_us=0)
    assert result["requests"] >= 0.9 * soak.CAPACITY * 0.7 * SECONDS
    assert result["rss_growth"] < soak.RSS_GROWTH, result
    # a leak grows them; one fewer at the end is a start-up connection closed during a short
    # run (CI: 23 -> 22 after a 2.5 s warm-up, each read settled)
    assert result["end"]["fds"] <= result["start"]["fds"], result
    assert soak.slots_flat(result["end"]), result
    if not result["judged"]:
        pytest.skip(f"not judged: {result['steal']} (perf.openloop.StealWatch); the "
                    f"stand-ins ran late whatever the gateway did, errors {result['error_kinds']}")
    # errors in CPU stolen by the hypervisor (perf.openloop.StealWatch), others <= 0.1%
    assert result["unexplained"] <= soak.UNEXPLAINED * result["requests"], result["first_errors"]
    assert result["held"]
