"""`make soak` for a minute (`make soak` runs SOAK_S=600): the gateway and a Triton of
fixed-time stand-ins at 0.7 x C, then no error, RSS grown under 5%, fds back where they
started, every shared-memory slot free again."""
from __future__ import annotations

import os

import pytest

from tests.integration.conftest import require_triton

pytestmark = pytest.mark.integration
SECONDS = float(os.environ.get("VISIONSERVE_SOAK_TEST_S", 60))


def test_a_minute_of_soak_holds(tmp_path):
    pytest.importorskip("httpx")
    require_triton()
    from perf import soak

    result = soak.run(SECONDS, work=tmp_path)
    assert result["requests"] >= 0.9 * soak.CAPACITY * 0.7 * SECONDS
    assert result["errors"] == 0, result["error_kinds"]
    assert result["rss_growth"] < soak.RSS_GROWTH, result
    assert result["end"]["fds"] == result["start"]["fds"], result
    assert soak.slots_flat(result["end"]), result
    assert result["held"]
